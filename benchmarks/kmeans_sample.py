"""What a k-means sample smaller than the pool changes in the `optidel` selection.

A synthetic pool of candidate patches (default 100k: unit embeddings of the proxy's width
around 64 directions, scores with a per-direction offset, 9 patches per source) is cut into
parts and selected over the parts (pipeline/selection/engine.py, in this process) once with a
sample that covers the pool (the exact selection: k-means on every row) and once per smaller
sample. Reported per sample: clusters covered by the selection, the selection's mean
score, its overlap with the exact selection, the shortlist fetches and the wall time. For scale,
one more exact selection under another seed (k-means++ starts elsewhere): how far k-means' own
randomness moves the selection, sample or not.

    python benchmarks/kmeans_sample.py                       # 100k patches; samples 10k, 25k, 50k
    python benchmarks/kmeans_sample.py --patches 20000 --samples 2000 5000
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import faiss
import numpy as np

from optidel.pipeline.config import SelectConfig
from optidel.pipeline.selection import engine
from optidel.pipeline.selection.embeddings import assign_clusters, centred_unit_rows, diversity_stats
from optidel.pipeline.selection.selectors import selector

PER_SOURCE = 9  # patches per frame (benchmarks/memory.py: about 9)


class Parts:
    def __init__(self, columns: dict, n_parts: int):
        self.columns = columns
        self.rows = np.array_split(np.arange(len(columns["id"])), n_parts)

    def __call__(self, part: int, columns=None):
        return {k: v[self.rows[part]] for k, v in self.columns.items() if k in (columns or self.columns)}


def run_here(fn, calls):
    return [fn(*call) for call in calls]


def split_here(map_fn, calls, buckets):
    maps = [map_fn(*call) for call in calls]
    return [pieces for pieces, _ in maps], [note for _, note in maps]


def pool(n: int, dim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, dim))
    which = rng.integers(0, 64, n)
    emb = centres[which] + 0.8 * rng.normal(size=(n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    scores = rng.normal(size=n) + 0.05 * (which % 8)
    return {
        "id": np.array([f"p{i:09d}" for i in range(n)], dtype=object),
        "source": np.array([f"s{i // PER_SOURCE:09d}" for i in range(n)], dtype=object),
        "score": scores.astype(np.float32),
        "embedding": emb.astype(np.float32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=100_000)
    parser.add_argument("--samples", type=int, nargs="+", default=[10_000, 25_000, 50_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--parts", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kmeans-sample.json")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)

    columns = pool(args.patches, args.dim, args.seed)
    parts = Parts(columns, args.parts)
    budget = 4 * math.ceil(0.05 * args.patches / PER_SOURCE)  # keep 5% of the frames, mosaics of 4
    results = {"patches": args.patches, "dim": args.dim, "parts": args.parts, "budget": budget, "runs": []}
    exact = None
    runs = [(args.patches, args.seed), *((sample, args.seed) for sample in args.samples), (args.patches, args.seed + 1)]
    for sample, seed in runs:
        config = SelectConfig(kmeans_sample=sample)
        start = time.perf_counter()
        verdict = engine.choose(
            parts, list(range(args.parts)), run_here, split_here, budget=budget, selector=selector("optidel"), config=config, seed=seed
        )
        seconds = time.perf_counter() - start
        chosen = verdict.chosen.ids.astype(str)  # sorted
        rows = np.searchsorted(columns["id"].astype(str), chosen)
        unit = centred_unit_rows(columns["embedding"][rows], verdict.mean)
        stats = diversity_stats(assign_clusters(unit, verdict.centroids), verdict.k)
        run = {
            "kmeans_sample": sample,
            "seed": seed,
            "exact": sample >= args.patches,
            "selected": len(chosen),
            "clusters_covered": stats["clusters_covered"],
            "cluster_entropy_nats": round(stats["entropy_nats"], 4),
            "selected_mean_score": round(float(columns["score"][rows].astype(np.float64).mean()), 5),
            "overlap_with_exact": None if exact is None else round(len(exact & set(chosen)) / max(len(exact), 1), 4),
            "shortlist_fetches": verdict.fetches,
            "rows_received": verdict.rows_received,
            "seconds": round(seconds, 1),
        }
        exact = exact or set(chosen)
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
