"""Seed a new `optidel run` output with another run's scored pass 1, so that an ablation of the
selection (selector, keep, mosaic, select.*, output.*) redoes only the barrier and pass 2.

    python benchmarks/reselect.py SCORED_OUT NEW_OUT select.trim_top_frac=0.5 mosaic=1
    optidel run INPUT... -o NEW_OUT --set select.trim_top_frac=0.5 --mosaic 1   # the same settings

It copies SCORED_OUT/work (the pass-1 parts and the self-trained proxy) into NEW_OUT/work and
records the new settings in NEW_OUT's job, so the run finds its own job half done and resumes
it: same candidates, same scores, a new selection. Keys that change pass 1 are refused, since
the copied candidates would not be what such a run computes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

# Settings read only by the barrier and pass 2.
SELECTION_KEYS = ("selector", "keep", "mosaic")
SELECTION_SECTIONS = ("select.", "output.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scored_out", type=Path)
    parser.add_argument("new_out", type=Path)
    parser.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    job_path = args.scored_out / "work" / "job.json"
    if not job_path.exists():
        sys.exit(f"reselect: {job_path} not found: not an optidel output")
    if args.new_out.exists() and any(args.new_out.iterdir()):
        sys.exit(f"reselect: {args.new_out} is not empty")
    job = json.loads(job_path.read_text())
    for item in args.settings:
        key, sep, raw = item.partition("=")
        if not sep or not (key in SELECTION_KEYS or key.startswith(SELECTION_SECTIONS)):
            sys.exit(f"reselect: {item!r}: only {', '.join(SELECTION_KEYS)}, select.* and output.* keys may change")
        if key not in job["config"]:
            sys.exit(f"reselect: {key}: not a config key of {job_path}")
        job["config"][key] = yaml.safe_load(raw)
    shutil.copytree(args.scored_out / "work", args.new_out / "work")
    (args.new_out / "work" / "job.json").write_text(json.dumps(job, indent=2) + "\n")
    print(f"{args.new_out}: seeded with {args.scored_out}'s pass 1; now run optidel with the same settings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
