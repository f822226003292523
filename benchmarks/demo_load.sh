#!/usr/bin/env bash
# The README's first command on a fresh OUT, with BUSY processes competing for the cores:
# issue 15 asks that two busy loops make the demo at most 2x slower than on idle cores.
#   benchmarks/demo_load.sh BUSY OUT     e.g.  benchmarks/demo_load.sh 2 /tmp/demo-loaded
# Time it from outside (/usr/bin/time -v, or alternate BUSY=2 and BUSY=0 runs to pair them).
set -euo pipefail
busy=${1:?number of busy loops}
out=${2:?output directory}
rm -rf "$out"
loops=()
for _ in $(seq 1 "$busy"); do
    (while :; do :; done) &
    loops+=($!)
done
trap '[ ${#loops[@]} -eq 0 ] || kill "${loops[@]}"' EXIT
optidel demo "$out"
