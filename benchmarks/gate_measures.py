"""How the proposer's artefact gates (propose.max_bright_frac, propose.max_noise_sigma) measure
the candidate patches of a scored run on a dirty pool, by what the truth says each patch shows:
the numbers a gate's threshold is chosen from, on the validation (train) pool only.

    python benchmarks/gate_measures.py SCORED_OUT [--json FILE]
    python benchmarks/gate_measures.py --clean-images KVASIR   # what the gates drop of clean images

For every candidate patch: its share of blown-out pixels (every channel >= bright_level) and
Immerkaer's noise estimate in grey levels, the same functions the proposer gates with
(stages/keypatch.py); per kind, the quantiles of both and of the proxy's score; then, for a few
thresholds, the share of each kind's candidates that each gate would drop.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys
from collections import defaultdict

import numpy as np

from optidel.eval import artefacts
from optidel.eval.composition import patch_kind, pool_truth
from optidel.eval.labeled import load_image
from optidel.manifests import layout, schema
from optidel.stages.keypatch import noise_residual, noise_sigma

BRIGHT_LEVEL = 250
NOISE_THRESHOLDS = (4.0, 6.0, 8.0, 10.0, 12.0, 16.0)
BRIGHT_THRESHOLDS = (0.01, 0.02, 0.05, 0.1)


def candidate_frames(out: str):
    """(a frame's pixels, [(kind, patch row), ...]) for every frame of a scored run on a dirty pool
    that has candidate patches, the kind being what the pool's truth says the patch shows; patch
    rows hold their box, score and selected."""
    folder, truth = pool_truth(out)
    output = layout.Output(out)
    sources = {
        s["source_id"]: s
        for s in output.read_manifest("sources", columns=["source_id", "uri", "status", "width", "height"]).to_pylist()
        if s["status"] == schema.OK
    }
    patches = output.read_manifest("patches", columns=["source_id", "x0", "y0", "x1", "y1", "score", "selected", "mask_rle"])
    by_source = defaultdict(list)
    for p in patches.to_pylist():
        if p["mask_rle"] is not None:  # a candidate (the copies of duplicate frames have none)
            by_source[p["source_id"]].append(p)
    for source_id, rows in sorted(by_source.items()):
        source = sources[source_id]
        yield load_image(folder / posixpath.basename(source["uri"])), [(patch_kind(p, source, truth), p) for p in rows]


def measures(out: str) -> dict[str, dict[str, list[float]]]:
    found: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for pixels, rows in candidate_frames(out):
        bright = pixels.min(axis=2) >= BRIGHT_LEVEL
        residual = noise_residual(pixels)
        for kind, p in rows:
            box = (p["x0"], p["y0"], p["x1"], p["y1"])
            found[kind]["bright"].append(float(bright[box[1] : box[3], box[0] : box[2]].mean()))
            found[kind]["noise"].append(noise_sigma(residual, box))
            found[kind]["score"].append(p["score"])
    return found


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


def clean_images(kvasir: str) -> None:
    """What the thresholds chosen on the dirty pool drop of images outside it (clean_crops)."""
    found = defaultdict(lambda: {"noise": [], "bright": [], "images": set()})
    measured = {}
    for name, number, image, (x0, y0, x1, y1) in clean_crops(kvasir):
        if (name, number) not in measured:
            measured = {(name, number): (noise_residual(image), image.min(axis=2) >= BRIGHT_LEVEL)}
        residual, blown = measured[name, number]
        found[name]["noise"].append(noise_sigma(residual, (x0, y0, x1, y1)))
        found[name]["bright"].append(blown[y0:y1, x0:x1].mean())
        found[name]["images"].add(number)
    print("| images | crops | noise p50 / p90 (grey levels) | noise > 10 | blown-out > 0.01 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, m in found.items():
        noise, bright = np.array(m["noise"]), np.array(m["bright"])
        print(f"| {name} ({len(m['images'])}) | {len(noise)} | {np.median(noise):.1f} / {np.quantile(noise, 0.9):.1f} | "
              f"{(noise > 10).mean():.4f} | {(bright > 0.01).mean():.4f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scored_out", nargs="?")
    parser.add_argument("--json", help="also write the per-kind figures here")
    parser.add_argument("--clean-images", metavar="KVASIR", help="measure clean images instead (see clean_images)")
    args = parser.parse_args()
    if args.clean_images:
        clean_images(args.clean_images)
        return 0
    if not args.scored_out:
        parser.error("SCORED_OUT is required (or --clean-images KVASIR)")
    found = measures(args.scored_out)
    report = {}
    print("| kind | candidates | noise p50 / p90 (grey levels) | blown-out p50 / p90 | score p50 | "
          + " | ".join(f"noise > {t:g}" for t in NOISE_THRESHOLDS) + " | "
          + " | ".join(f"bright > {t:g}" for t in BRIGHT_THRESHOLDS) + " |")
    print("| --- |" + " ---: |" * (4 + len(NOISE_THRESHOLDS) + len(BRIGHT_THRESHOLDS)))
    for kind in (artefacts.CLEAN, *artefacts.KINDS):
        if kind not in found:
            continue
        m = {k: np.array(v) for k, v in found[kind].items()}
        row = {
            "candidates": len(m["noise"]),
            "noise_p50": float(np.median(m["noise"])), "noise_p90": float(np.quantile(m["noise"], 0.9)),
            "bright_p50": float(np.median(m["bright"])), "bright_p90": float(np.quantile(m["bright"], 0.9)),
            "score_p50": float(np.median(m["score"])),
            "noise_drops": {f"{t:g}": float((m["noise"] > t).mean()) for t in NOISE_THRESHOLDS},
            "bright_drops": {f"{t:g}": float((m["bright"] > t).mean()) for t in BRIGHT_THRESHOLDS},
        }
        report[kind] = row
        print(f"| {kind} | {row['candidates']} | {row['noise_p50']:.1f} / {row['noise_p90']:.1f} | "
              f"{row['bright_p50']:.3f} / {row['bright_p90']:.3f} | {row['score_p50']:.3f} | "
              + " | ".join(f"{v:.3f}" for v in row["noise_drops"].values()) + " | "
              + " | ".join(f"{v:.3f}" for v in row["bright_drops"].values()) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
