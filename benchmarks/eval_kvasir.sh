#!/usr/bin/env bash
# Does OptiDEL's 5% pre-train as well as the whole pool? The reference `optidel eval` run.
#
# 1. kvasir-seg's split, fixed by sorted name: the first 800 pairs train, the last 200 test.
#    The pre-training pool is the 800 train images (masks unused), never a test image.
# 2. Five arms built from that pool by `optidel run`: every image (R = 1), and 5% by the
#    random, dedup, hard and optidel selectors (default settings: regions proposer, a
#    self-trained proxy, 224-px outputs).
# 3. `optidel eval` on the five arms: equal pre-training compute, fine-tune + test on the split.
#
#   benchmarks/eval_kvasir.sh                      # the full table (5 arms x 3 seeds, 64 px)
#   ARMS="full random" benchmarks/eval_kvasir.sh --seeds 1 --steps 20   # a reduced smoke run
#
# Arguments after the script name go to `optidel eval` as they are (--seeds, --size, --steps,
# --threads, --device, --scratch ...). Environment: KVASIR (the dataset), WORK (where the
# arms are built; a rerun resumes them), RESULTS (results.json, results.md, results.png and
# command.txt; a rerun reuses finished units), ARMS (a subset of the five names).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
KVASIR="${KVASIR:-$REPO/../shared/datasets/kvasir-seg}"
WORK="${WORK:-/tmp/optidel-eval-kvasir}"
RESULTS="${RESULTS:-$REPO/benchmarks/results/eval}"
ARMS="${ARMS:-full random dedup hard optidel}"
mkdir -p "$WORK/arms" "$RESULTS"

optidel eval --write-pool-list "$WORK/pool.txt" --labeled "$KVASIR"

SECONDS=0
arm_flags=()
for arm in $ARMS; do
    case "$arm" in
        full) selection=(--selector random --keep 1.0) ;;
        random | dedup | hard | optidel) selection=(--selector "$arm" --keep 0.05) ;;
        *) echo "eval_kvasir.sh: unknown arm $arm (full, random, dedup, hard, optidel)" >&2; exit 2 ;;
    esac
    start=$SECONDS
    # Rerunning the same job on a finished output is a no-op, so arms are built once.
    optidel run "$WORK/pool.txt" -o "$WORK/arms/$arm" "${selection[@]}" --seed 0 >"$WORK/arms/$arm.log" 2>&1 \
        || { echo "eval_kvasir.sh: building arm $arm failed; see $WORK/arms/$arm.log" >&2; exit 1; }
    echo "arm $arm built in $((SECONDS - start)) s (log: $WORK/arms/$arm.log)"
    arm_flags+=(--arm "$arm=$WORK/arms/$arm")
done
built=$SECONDS

{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $(nproc) CPUs"
    echo "ARMS=\"$ARMS\" benchmarks/eval_kvasir.sh $*"
    echo "optidel eval ${arm_flags[*]} --labeled $KVASIR --out $RESULTS $*"
} > "$RESULTS/command.txt"
optidel eval "${arm_flags[@]}" --labeled "$KVASIR" --out "$RESULTS" "$@"
echo "arms built in ${built} s; eval in $((SECONDS - built)) s" | tee -a "$RESULTS/command.txt"
