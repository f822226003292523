"""How the proposer's artefact gates (stages/keypatch.py, GATES) measure the candidate patches of a
scored run on a dirty pool, by what the truth says each patch shows: the numbers a gate's
threshold is chosen from, on the validation (train) pool only. And a device that applies gates
to a scored run after the fact, to see what they would select.

    python benchmarks/gate_measures.py measure SCORED_OUT [--json FILE]
    python benchmarks/gate_measures.py clean-images KVASIR     # what the gates drop of clean images
    python benchmarks/gate_measures.py reselect SCORED_OUT NEW_OUT --gate KEY=LIMIT ... [KEY=VALUE...]
    optidel run INPUT... -o NEW_OUT [SCORED_OUT's settings]     # then optidel eval --composition

`measure`: for every candidate patch, each gate's measure (the same functions the proposer gates
with): per kind, its median and 90th percentile, and for a few limits the share of the kind's
candidates the gate would drop, with (in brackets) how many of them the run selected.

`clean-images`: the same shares over seeded random crops of images outside the dirty pool
(clean_crops: kvasir-seg's originals and scikit-image's photos).

`reselect`: NEW_OUT gets SCORED_OUT's pass 1 with every candidate over any `--gate` limit (a
ProposeConfig key, e.g. max_clipped_frac=0.4) moved under all others (taken last), and the
unchanged selection runs on it (blur_gate.py's device). The proposer gates before NMS, so a real
gate could propose other crops in their place; here the crops stay the same.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq

from optidel.eval import artefacts
from optidel.eval.composition import patch_kind, pool_truth
from optidel.eval.labeled import load_image
from optidel.manifests import layout, schema
from optidel.pipeline.config import ProposeConfig
from optidel.pipeline.partitions import PASS1_DIR
from optidel.stages import keypatch
from optidel.stages.keypatch import GATES

MEASURED = ("max_bright_frac", "max_clipped_frac", "max_frame_clipped_frac", "max_noise_sigma", "max_blockiness")
LIMITS = {
    "max_bright_frac": (0.01, 0.02, 0.05, 0.1),
    "max_clipped_frac": (0.2, 0.3, 0.4, 0.5),
    "max_frame_clipped_frac": (0.2, 0.3, 0.4, 0.5),
    "max_noise_sigma": (4.0, 6.0, 8.0, 10.0, 12.0),
    "max_blockiness": (1.5, 2.0, 2.5, 3.0),
}
UNIT = {"max_bright_frac": "share", "max_clipped_frac": "share", "max_frame_clipped_frac": "share of the frame",
        "max_noise_sigma": "grey levels",
        "max_blockiness": "ratio"}


def box_measures(pixels: np.ndarray, keys=MEASURED):
    """The frame's measure of a box for each gate key, at the default config's levels."""
    return keypatch.box_measures(pixels, ProposeConfig(), keys)


class FramePixels:
    """A pool frame's pixels, from its file or, for a frame of a recording, from the recording,
    decoded whole once (a recording's candidates come in a row)."""

    def __init__(self):
        self._recording, self._frames = None, []

    def __call__(self, uri: str, frame_index: int | None) -> np.ndarray:
        if frame_index is None or frame_index < 0:
            return load_image(Path(uri))
        if uri != self._recording:
            with av.open(uri) as container:
                self._frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            self._recording = uri
        return self._frames[frame_index]


def candidate_frames(out: str):
    """(a frame's pixels, [(kind, patch row), ...]) for every frame of a scored run on a dirty pool
    that has candidate patches, the kind being what the pool's truth says the patch shows; patch
    rows hold their box, score and selected."""
    folder, truth = pool_truth(out)
    output = layout.Output(out)
    sources = {
        s["source_id"]: s
        for s in output.read_manifest("sources", columns=["source_id", "uri", "frame_index", "status", "width", "height"]).to_pylist()
        if s["status"] == schema.OK
    }
    patches = output.read_manifest("patches", columns=["source_id", "x0", "y0", "x1", "y1", "score", "selected", "mask_rle"])
    by_source = defaultdict(list)
    for p in patches.to_pylist():
        if p["mask_rle"] is not None:  # a candidate (the copies of duplicate frames have none)
            by_source[p["source_id"]].append(p)
    pixels_of = FramePixels()
    for source_id, rows in sorted(by_source.items(), key=lambda item: (sources[item[0]]["uri"], sources[item[0]]["frame_index"] or 0)):
        source = sources[source_id]
        pixels = pixels_of(str(folder / posixpath.basename(source["uri"])), source["frame_index"])
        yield pixels, [(patch_kind(p, source, truth), p) for p in rows]


def measures(out: str) -> tuple[dict, dict]:
    """({kind: {gate key: [measure per candidate]}}, {kind: [selected per candidate]})."""
    found: dict = defaultdict(lambda: defaultdict(list))
    selected: dict = defaultdict(list)
    for pixels, rows in candidate_frames(out):
        measure = box_measures(pixels)
        for kind, p in rows:
            box = (p["x0"], p["y0"], p["x1"], p["y1"])
            for key, of in measure.items():
                found[kind][key].append(of(box))
            selected[kind].append(bool(p["selected"]))
    return found, selected


def measure(args) -> int:
    found, selected = measures(args.scored_out)
    report = {}
    for key in MEASURED:
        print(f"\n`propose.{key}` ({UNIT[key]}): per kind of candidate, p50 / p90, then the share over each limit "
              "(in brackets, the selected patches over it)\n")
        print("| kind | candidates | p50 / p90 | " + " | ".join(f"> {t:g}" for t in LIMITS[key]) + " |")
        print("| --- | ---: | ---: |" + " ---: |" * len(LIMITS[key]))
        for kind in (artefacts.CLEAN, *artefacts.KINDS):
            if kind not in found:
                continue
            v, s = np.array(found[kind][key]), np.array(selected[kind])
            row = {"candidates": len(v), "selected": int(s.sum()), "p50": float(np.median(v)), "p90": float(np.quantile(v, 0.9)),
                   "over": {f"{t:g}": [float((v > t).mean()), int((s & (v > t)).sum())] for t in LIMITS[key]}}
            report.setdefault(key, {})[kind] = row
            print(f"| {kind} | {row['candidates']} | {row['p50']:.3g} / {row['p90']:.3g} | "
                  + " | ".join(f"{share:.3f} ({n})" for share, n in row["over"].values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def clean_crops(kvasir: str, seed: int = 0):
    """(set name, image number, image, box) for seeded random square crops (32 px to half the
    short side) of scikit-image's bundled photos (the demo's, not endoscopy), 40 each, and of
    every tenth kvasir-seg original at full resolution, 20 each: images outside the dirty pool."""
    import skimage.data

    from optidel.eval.labeled import pairs

    draws = np.random.default_rng(seed)
    photos = [np.asarray(getattr(skimage.data, n)()) for n in ("retina", "immunohistochemistry",
              "hubble_deep_field", "coffee", "astronaut", "chelsea", "rocket")]
    originals = [load_image(p.image) for p in pairs(kvasir)[::10]]
    for name, images, per_image in (("scikit-image photos", photos, 40), ("kvasir-seg originals", originals, 20)):
        for number, image in enumerate(images):
            image = np.stack([image] * 3, axis=-1) if image.ndim == 2 else np.ascontiguousarray(image[..., :3])
            h, w = image.shape[:2]
            for _ in range(per_image):
                side = int(draws.integers(32, min(h, w) // 2))
                y, x = int(draws.integers(0, h - side)), int(draws.integers(0, w - side))
                yield name, number, image, (x, y, x + side, y + side)


def clean_images(args) -> int:
    """What each gate's limits drop of crops of images outside the pool (clean_crops)."""
    found = defaultdict(lambda: defaultdict(list))
    images, measured = defaultdict(set), {}
    for name, number, image, box in clean_crops(args.kvasir):
        if (name, number) not in measured:
            measured = {(name, number): box_measures(image)}
        for key, of in measured[name, number].items():
            found[name][key].append(of(box))
        images[name].add(number)
    for key in MEASURED:
        print(f"\n`propose.{key}` ({UNIT[key]}) on crops of images outside the pool: p50 / p90, the share over each limit\n")
        print("| images | crops | p50 / p90 | " + " | ".join(f"> {t:g}" for t in LIMITS[key]) + " |")
        print("| --- | ---: | ---: |" + " ---: |" * len(LIMITS[key]))
        for name, by_key in found.items():
            v = np.array(by_key[key])
            print(f"| {name} ({len(images[name])}) | {len(v)} | {np.median(v):.3g} / {np.quantile(v, 0.9):.3g} | "
                  + " | ".join(f"{(v > t).mean():.4f}" for t in LIMITS[key]) + " |")
    return 0


def take_last(scored_out: str, new_out: str, settings: list[str], measures_of, gated) -> int:
    """Seed NEW_OUT with SCORED_OUT's pass 1 (learnability.rewrite_scores, `settings` its
    selection's), every candidate for which `gated(measure(box))` holds moved under all others:
    `measures_of(pixels)` gives the frame's measure of a box. Returns the candidates moved."""
    from learnability import rewrite_scores

    names = sorted(p.name for p in Path(scored_out, PASS1_DIR).glob("part-*.parquet"))
    parts = [pq.read_table(Path(scored_out, PASS1_DIR, name)) for name in names]
    scores = [t.column("score").to_numpy(zero_copy_only=False).astype(np.float64) for t in parts]
    finite = np.concatenate([s[np.isfinite(s)] for s in scores])
    shift = finite.max() - finite.min() + 1  # below the floor: under the lowest score
    moved, pixels_of = 0, FramePixels()
    for part, score in zip(parts, scores):
        rows = part.select(["patch_index", "input_index", "uri", "frame_index", "x0", "y0", "x1", "y1"]).to_pydict()
        source_of = {i: (u, f) for i, u, f, p in zip(rows["input_index"], rows["uri"], rows["frame_index"], rows["patch_index"]) if p < 0}
        measured = {}
        for r, (patch, source) in enumerate(zip(rows["patch_index"], rows["input_index"])):
            if patch < 0 or not np.isfinite(score[r]):
                continue
            if source not in measured:
                measured = {source: measures_of(pixels_of(*source_of[source]))}
            if gated(measured[source], (rows["x0"][r], rows["y0"][r], rows["x1"][r], rows["y1"][r])):
                score[r] -= shift
                moved += 1
    rewrite_scores(scored_out, new_out, settings, names, parts, scores)
    return moved


def reselect(args) -> int:
    limits = dict(gate.split("=", 1) for gate in args.gate)
    unknown = sorted(set(limits) - set(GATES))
    if unknown:
        raise SystemExit(f"--gate {unknown[0]}: not a gate (one of {', '.join(GATES)})")
    limits = {key: float(value) for key, value in limits.items()}
    moved = take_last(args.scored_out, args.new_out, args.settings, lambda pixels: box_measures(pixels, limits),
                      lambda measure, box: any(of(box) > limits[key] for key, of in measure.items()))
    print(f"{args.new_out}: {moved} candidates over {', '.join(args.gate)} are taken last; run optidel on it with the same settings")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("measure", help="each gate's measure of a scored run's candidates, by kind")
    one.add_argument("scored_out")
    one.add_argument("--json", help="also write the per-kind figures here")
    two = commands.add_parser("clean-images", help="each gate's measure of crops of images outside the pool")
    two.add_argument("kvasir")
    three = commands.add_parser("reselect", help="NEW_OUT: SCORED_OUT's pass 1, gated candidates taken last")
    three.add_argument("scored_out")
    three.add_argument("new_out")
    three.add_argument("--gate", action="append", required=True, metavar="KEY=LIMIT", help="a ProposeConfig gate and its limit")
    three.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    return {"measure": measure, "clean-images": clean_images, "reselect": reselect}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
