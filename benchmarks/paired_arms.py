"""The paired difference of two arms' probe (or fine-tune) mIoU, from the units two `optidel eval`
results folders saved: arms the results table does not compare with each other, or arms of two
runs on the same pool, split and seeds.

    python benchmarks/paired_arms.py RESULTS_A:ARM_A RESULTS_B:ARM_B [--finetune]

Pairing across two runs is sound only when a seed fixes the same initial weights, masks and data
order in both, which it does for units of the same settings (the key in each unit records them):
check that a control arm (random, scratch) reproduces in both folders. Prints ARM_A - ARM_B as
{"diff", "ci95"} (eval/stats.py: seeds and held-out images resampled together).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from optidel.eval.stats import paired_difference


def unit_counts(spec: str, key: str) -> dict[int, np.ndarray]:
    """Per seed, the arm's per-image intersection/union counts, from RESULTS/units/ARM-seedS.json."""
    folder, _, arm = spec.rpartition(":")
    units = sorted(Path(folder, "units").glob(f"{arm}-seed*.json"))
    if not units:
        sys.exit(f"paired_arms: no units of arm {arm!r} in {folder}/units")
    found = {}
    for path in units:
        unit = json.loads(path.read_text())
        if unit["arm"] == arm and unit.get(key) is not None:
            found[unit["seed"]] = np.asarray(unit[key])
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", metavar="RESULTS_A:ARM_A")
    parser.add_argument("b", metavar="RESULTS_B:ARM_B")
    parser.add_argument("--finetune", action="store_true", help="the fine-tune's mIoU instead of the probe's")
    args = parser.parse_args()
    key = "finetune_counts" if args.finetune else "counts"
    a, b = unit_counts(args.a, key), unit_counts(args.b, key)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        sys.exit("paired_arms: the two arms share no seed")
    result = paired_difference(np.stack([a[s] for s in seeds]), np.stack([b[s] for s in seeds]))
    print(json.dumps({"a": args.a, "b": args.b, "seeds": seeds, "metric": key, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
