"""What each eval arm holds, next to how it pre-trained: the figures behind "why does this
selection lose to random?" on the video pool.

    python benchmarks/arm_stats.py RESULTS_JSON ARM_DIR...

Per arm, from its manifests: output images, the distinct train images (clips) its pixels come
from, patches per output image, the median patch side as a fraction of its frame's side (1 for
whole frames; the probe sees whole frames), and the mean proxy score of its patches; then its
probe mIoU difference against random from RESULTS_JSON. Frames of the video pool are named
CLIP-NNN.jpg (eval/pools.py), so a frame's clip is its name without the last "-NNN".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from optidel.manifests.layout import manifest_relpath


def arm_figures(out: Path) -> dict:
    samples = pq.read_table(out / manifest_relpath("samples"), columns=["source_ids", "boxes", "scores"]).to_pylist()
    sources = pq.read_table(out / manifest_relpath("sources"), columns=["source_id", "uri", "width", "height"])
    by_id = {s["source_id"]: s for s in sources.to_pylist()}
    clips, sides, scores = set(), [], []
    for sample in samples:
        for source_id, box, score in zip(sample["source_ids"], sample["boxes"], sample["scores"]):
            source = by_id[source_id]
            clips.add(Path(source["uri"]).stem.rsplit("-", 1)[0])
            sides.append((box[2] - box[0]) / max(source["width"], source["height"]))
            scores.append(score)
    patches = sum(len(s["source_ids"]) for s in samples)
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return {
        "images": len(samples),
        "clips": len(clips),
        "patches_per_image": patches / max(len(samples), 1),
        "median_patch_side": float(np.median(sides)) if sides else float("nan"),
        "mean_score": float(finite.mean()) if finite.size else None,
    }


def main() -> int:
    if len(sys.argv) < 3:
        sys.exit(__doc__.split("\n\n")[1])
    results = json.loads(Path(sys.argv[1]).read_text())
    print("| arm | images | clips | patches/image | median patch side | mean score | probe vs random |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for arm_dir in map(Path, sys.argv[2:]):
        fig = arm_figures(arm_dir)
        versus = results["arms"].get(arm_dir.name, {}).get("vs_random")
        diff = f"{versus['diff']:+.4f} [{versus['ci95'][0]:+.4f}, {versus['ci95'][1]:+.4f}]" if versus else "—"
        score = f"{fig['mean_score']:.3f}" if fig["mean_score"] is not None else "—"
        print(f"| {arm_dir.name} | {fig['images']} | {fig['clips']} | {fig['patches_per_image']:.0f} | "
              f"{fig['median_patch_side']:.2f} | {score} | {diff} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
