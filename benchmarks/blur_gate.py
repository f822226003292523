"""A blur gate, measured before it is built: can a physical sharpness threshold take the easy
artefacts (motion blur, defocus, low contrast) out of a selection without taking clean tissue?

    python benchmarks/blur_gate.py measure SCORED_OUT --clean-images KVASIR
    python benchmarks/blur_gate.py reselect SCORED_OUT NEW_OUT --below T [KEY=VALUE...]
    optidel run INPUT... -o NEW_OUT [SCORED_OUT's settings]     # then optidel eval --composition

A crop's sharpness is its mean gradient magnitude, in grey levels per pixel, once resized to
SCALE x SCALE pixels (area averaging): the proxy sees a crop at a fixed size, so the measure is
taken at one, whatever the frame's resolution.

`measure`: per kind of candidate (what the dirty pool's truth says it shows), the share below
each threshold and the selected patches a gate there would remove; then the share of crops below
each threshold in images outside the pool (gate_measures.clean_crops: kvasir-seg's originals
and scikit-image's photos).

`reselect`: the gate as a measurement device, as learnability.py's floor: NEW_OUT gets SCORED_OUT's
pass 1 with every candidate below T moved under all others (taken last), and the unchanged
selection runs on it. The proposer's gates act before NMS, so a real gate could propose other
crops in their place; here the crops stay the same.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np
from gate_measures import candidate_frames, clean_crops, take_last
from PIL import Image

from optidel.eval import artefacts
from optidel.stages.keypatch import grey_levels

SCALE = 64
THRESHOLDS = (3.0, 4.0, 5.0, 6.0, 7.0)


def sharpness(pixels: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Mean gradient magnitude (grey levels per pixel) of the box, resized to SCALE x SCALE."""
    x0, y0, x1, y1 = box
    crop = Image.fromarray(np.ascontiguousarray(pixels[y0:y1, x0:x1])).resize((SCALE, SCALE), Image.BOX)
    dy, dx = np.gradient(grey_levels(np.asarray(crop)))
    return float(np.hypot(dx, dy).mean())


def measure(args) -> int:
    values, selected = defaultdict(list), defaultdict(list)
    for pixels, rows in candidate_frames(args.scored_out):
        for kind, p in rows:
            values[kind].append(sharpness(pixels, (p["x0"], p["y0"], p["x1"], p["y1"])))
            selected[kind].append(bool(p["selected"]))
    print(f"Candidates of {args.scored_out}: the share below each threshold, and (in brackets) the selected patches below it\n")
    print("| kind | candidates | sharpness p10 / p50 | " + " | ".join(f"< {t:g}" for t in THRESHOLDS) + " |")
    print("| --- | ---: | ---: |" + " ---: |" * len(THRESHOLDS))
    for kind in (artefacts.CLEAN, *artefacts.KINDS):
        if kind in values:
            v, s = np.array(values[kind]), np.array(selected[kind])
            print(f"| {kind} | {len(v)} | {np.quantile(v, 0.1):.2f} / {np.median(v):.2f} | "
                  + " | ".join(f"{(v < t).mean():.3f} ({int((s & (v < t)).sum())})" for t in THRESHOLDS) + " |")
    if args.clean_images:
        found = defaultdict(list)
        for name, _, image, box in clean_crops(args.clean_images):
            found[name].append(sharpness(image, box))
        print("\nCrops of images outside the pool: the share below each threshold\n")
        print("| images | crops | sharpness p10 / p50 | " + " | ".join(f"< {t:g}" for t in THRESHOLDS) + " |")
        print("| --- | ---: | ---: |" + " ---: |" * len(THRESHOLDS))
        for name, v in found.items():
            v = np.array(v)
            print(f"| {name} | {len(v)} | {np.quantile(v, 0.1):.2f} / {np.median(v):.2f} | "
                  + " | ".join(f"{(v < t).mean():.3f}" for t in THRESHOLDS) + " |")
    return 0


def reselect(args) -> int:
    below = take_last(args.scored_out, args.new_out, args.settings, lambda pixels: pixels,
                      lambda pixels, box: sharpness(pixels, box) < args.below)
    print(f"{args.new_out}: {below} candidates below sharpness {args.below:g} are taken last; run optidel on it with the same settings")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("measure", help="sharpness of a scored run's candidates, by kind")
    one.add_argument("scored_out")
    one.add_argument("--clean-images", metavar="KVASIR", help="also crops of images outside the pool")
    two = commands.add_parser("reselect", help="NEW_OUT: SCORED_OUT's pass 1, blurred candidates taken last")
    two.add_argument("scored_out")
    two.add_argument("new_out")
    two.add_argument("--below", type=float, required=True, help="sharpness threshold, grey levels per pixel")
    two.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    return measure(args) if args.command == "measure" else reselect(args)


if __name__ == "__main__":
    sys.exit(main())
