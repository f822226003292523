"""What the per-cluster near-duplicate rule changes in the `optidel` selection, and what it saves.

The rule (stages/select.py, take_round_robin) used to compare each proposal with every kept
patch of the selection; it now compares it with the kept patches of its own cluster. This
script keeps a copy of the old round-robin (`take_round_robin_global`, verbatim but for its
name) and runs both.

    # effect on a real selection: the candidates of a finished `optidel run` (its OUT), at the
    # run's patch budget and at larger ones
    python benchmarks/near_duplicates.py effect /tmp/nd-run --multiples 1 2 4 --near-pool 0.9
    # the planted case the new rule lets through (near-identical patches across a boundary)
    python benchmarks/near_duplicates.py planted
    # speed of the round-robin alone: random unit embeddings (dim 128, k = 32), old vs new
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/near_duplicates.py speed \
        --budgets 21792 87172 --repeats 3

Each prints one JSON object (--out FILE writes it too). Committed results:
- results/near-duplicates-kvasir300.json: `effect /tmp/nd-run --multiples 1 2 4 8 16 --near-pool
  0.9`, where /tmp/nd-run is `optidel run LIST -o /tmp/nd-run` on the first 300 images of
  kvasir-seg (../shared/datasets/kvasir-seg/images/, in name order; defaults: regions proposer,
  self-trained proxy, seed 0, keep 0.05: 2759 candidates, budget 60 patches). The per-cluster
  selection at 60 is the run's own; the global one equals the pre-change code's (checked).
- results/near-duplicates-planted.json: `planted`.
- results/near-duplicates-speed.json: `speed --budgets 21792 87172 --repeats 5` (the budgets of
  benchmarks/scale.py's 1M and 4M pools), one BLAS thread.
- results/near-duplicates-speed-gemv.json: the same with 3 repeats at commit 7fc0fb9, whose
  per-cluster rule made one matrix-vector product per proposal (no look-ahead window).

Effect, per budget: both rules' selections on the same pool (the run's eligible candidates:
duplicate sources' patches excluded, as the barrier does), their overlap (Jaccard, rows in one
only), the rows each drops as near-duplicates, the cluster coverage and entropy of each
(select.diversity_stats), the mean score, and how many pairs of the new selection the old rule
would have refused (cosine above the threshold, different clusters).

Speed: the pool the round-robin reads in the distributed selection is the merged shortlists,
2 x ceil(budget / k) + 16 rows per cluster (select_parts._first_length); the rows here are
that many random unit vectors per cluster, in a random hardness order, one source each (the
per-source cap never binds). Both rules pick the same rows here (random 128-d vectors are never
near-duplicates at 0.95), so the times compare the same work.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from optidel.manifests import schema
from optidel.manifests.layout import RUN_JSON, Output
from optidel.pipeline import barrier, pass1
from optidel.pipeline import config as config_mod
from optidel.pipeline.partitions import PartStore
from optidel.stages import columns as C
from optidel.stages import select
from optidel.stages.select import diversity_stats, select_patches

REPO = Path(__file__).resolve().parents[1]


# --- the old rule, as it was before the per-cluster change (git show 59dcdd7:stages/select.py) ---


def take_round_robin_global(eligible, cluster, sources, emb, budget, config, selected, reason) -> dict[int, int]:
    """The old take_round_robin: one near-duplicate guard over the whole selection."""
    queues: dict[int, list[int]] = {}
    for i in eligible.tolist():
        queues.setdefault(int(cluster[i]), []).append(i)
    position = dict.fromkeys(queues, 0)
    active = list(queues)
    # The project's guard, sized for the whole budget as the old rule sized it: it never grows.
    guard = select._NearDuplicates(emb.shape[1], budget, config.near_duplicate_cosine)
    taken = Counter()
    n_selected = 0
    while active and n_selected < budget:
        owing = active
        while owing and n_selected < budget:
            proposals = [queues[c][position[c]] for c in owing]
            kept_before = guard.count
            near_kept = guard.max_cosine(emb[proposals]) > guard.threshold
            still_owing = []
            for c, i, near in zip(owing, proposals, near_kept):
                if n_selected >= budget:
                    break
                position[c] += 1
                if taken[sources[i]] >= config.per_source_cap:
                    reason[i] = schema.DROP_SOURCE_CAP
                elif near or guard.near(emb[i], since=kept_before):
                    reason[i] = schema.DROP_DUPLICATE
                else:
                    guard.add(emb[i])
                    taken[sources[i]] += 1
                    selected[i], reason[i] = True, ""
                    n_selected += 1
                    continue
                if position[c] < len(queues[c]):
                    still_owing.append(c)
            owing = still_owing
        active = [c for c in active if position[c] < len(queues[c])]
    return position


RULES = {"global": take_round_robin_global, "per_cluster": select.take_round_robin}


@contextlib.contextmanager
def rule(name: str):
    """select_optidel with the named round-robin (it reads the module's name at call time)."""
    saved = select.take_round_robin
    select.take_round_robin = RULES[name]
    try:
        yield
    finally:
        select.take_round_robin = saved


# --- effect ---


def load_run(out: Path) -> tuple[dict, config_mod.Config]:
    """A finished run's eligible candidate patches (as barrier._plan_patches hands them to the
    selector) and its resolved config."""
    run = json.loads((out / RUN_JSON).read_text())
    config = config_mod.Config.model_validate(run["config"])
    store = PartStore(Output(str(out)), run["counts"]["sources"], config.ingest.partition_size)
    candidates = pass1.read_candidates(store, with_patches=True)
    sources = barrier.mark_duplicates(candidates.sources)
    not_ok = sources[C.INPUT_INDEX][sources[C.STATUS] != schema.OK]
    eligible = ~np.isin(candidates.patches[C.INPUT_INDEX], not_ok)
    patches = {name: candidates.patches[name][eligible] for name in (C.PATCH_ID, C.SOURCE_ID, C.SCORE, C.EMBEDDING)}
    patches["n_ok"] = int(np.sum(sources[C.STATUS] == schema.OK))
    return patches, config


def compare(patches: dict, config: config_mod.Config, budget: int) -> dict:
    """Both rules' selections at one budget, side by side."""
    args = dict(
        patch_ids=patches[C.PATCH_ID], source_ids=patches[C.SOURCE_ID], scores=patches[C.SCORE],
        embeddings=patches[C.EMBEDDING], budget=budget, config=config.select, method="optidel", seed=config.seed,
    )
    out, chosen = {}, {}
    for name in RULES:
        start = time.perf_counter()
        with rule(name):
            sel = select_patches(**args)
        seconds = time.perf_counter() - start
        chosen[name] = sel
        out[name] = {
            "selected": int(sel.selected.sum()),
            "near_duplicate_drops": int(np.sum(sel.reason == schema.DROP_DUPLICATE)),
            "reasons": dict(sorted(Counter(sel.reason[~sel.selected].tolist()).items())),
            "diversity": diversity_stats(sel.cluster[sel.selected], sel.n_clusters),
            "mean_score": round(float(np.mean(patches[C.SCORE][sel.selected])), 6) if sel.selected.any() else None,
            "select_s": round(seconds, 3),
        }
    old, new = chosen["global"].selected, chosen["per_cluster"].selected
    assert np.array_equal(chosen["global"].cluster, chosen["per_cluster"].cluster)  # same k-means
    both, either = int(np.sum(old & new)), int(np.sum(old | new))
    unit = select._unit_rows(patches[C.EMBEDDING], select._ids(patches[C.PATCH_ID], "patch_ids"))
    return {
        "budget": budget,
        **out,
        "overlap": {
            "jaccard": round(both / either, 6) if either else 1.0,
            "in_both": both,
            "only_global": int(np.sum(old & ~new)),
            "only_per_cluster": int(np.sum(new & ~old)),
        },
        # What the new rule lets through: pairs of its selection above the threshold.
        "per_cluster_selection_pairs_above_threshold": _pairs_above(unit[new], chosen["per_cluster"].cluster[new], config.select.near_duplicate_cosine),
    }


def _pairs_above(unit: np.ndarray, cluster: np.ndarray, threshold: float) -> dict:
    sims = unit @ unit.T
    upper = np.triu(sims > threshold, k=1)
    same = cluster[:, None] == cluster[None, :]
    return {"same_cluster": int(np.sum(upper & same)), "different_clusters": int(np.sum(upper & ~same))}


def effect(args) -> dict:
    patches, config = load_run(args.out_dir)
    n = len(patches[C.PATCH_ID])
    run_budget = config.mosaic * config.budget(patches["n_ok"])
    eligible = n - int(config.select.trim_top_frac * n)
    budgets = sorted({min(m * run_budget, eligible) for m in args.multiples} | {int(args.near_pool * eligible)})
    return {
        "candidates_dir": str(args.out_dir),
        "candidate_patches": n,
        "eligible_after_trim": eligible,
        "ok_sources": patches["n_ok"],
        "run_budget": run_budget,
        "select": config.select.model_dump(),
        "seed": config.seed,
        "budgets": [compare(patches, config, b) for b in budgets],
    }


# --- planted ---


def planted(args) -> dict:
    """Two groups (k-means' two clusters, k = 2) and a pair of near-identical patches straddling
    their boundary, the hardest rows of the pool; and a near-identical pair inside one group."""
    rng = np.random.default_rng(args.seed)
    dim, per_group = 16, 20
    a, b, u = np.eye(dim)[:3]
    noise = rng.normal(size=(2 * per_group, dim))
    noise[:, :3] = 0
    groups = np.concatenate([np.tile(a, (per_group, 1)), np.tile(b, (per_group, 1))]) + 0.3 * noise
    mid = (a + b) / 2
    emb = np.vstack([groups, mid + 0.6 * u + 0.05 * (a - b), mid + 0.6 * u - 0.05 * (a - b), groups[0] + 0.001 * rng.normal(size=dim)])
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    n = len(emb)
    p, p_twin, q, q_twin = n - 3, n - 2, 0, n - 1
    scores = rng.uniform(0.0, 1.0, n).astype(np.float32)
    scores[[p, p_twin, q, q_twin]] = [10.0, 9.9, 5.0, 4.9]
    patches = {
        C.PATCH_ID: np.array([f"patch-{i:05d}" for i in range(n)], dtype=object),
        C.SOURCE_ID: np.array([f"src-{i:05d}" for i in range(n)], dtype=object),
        C.SCORE: scores,
        C.EMBEDDING: emb,
    }
    config = config_mod.load(sets=["select.clusters=2", "select.trim_top_frac=0.0", "select.near_duplicate_cosine=0.95"])
    unit = select._unit_rows(emb, select._ids(patches[C.PATCH_ID], "patch_ids"))
    out = {"pairs": {}, "rules": {}}
    for name in RULES:
        with rule(name):
            sel = select_patches(
                patch_ids=patches[C.PATCH_ID], source_ids=patches[C.SOURCE_ID], scores=scores, embeddings=emb,
                budget=n, config=config.select, method="optidel", seed=0,
            )
        out["rules"][name] = {
            pair: {"clusters": [int(sel.cluster[i]) for i in rows], "selected": [bool(sel.selected[i]) for i in rows],
                   "reasons": [str(sel.reason[i]) for i in rows]}
            for pair, rows in (("across_boundary", (p, p_twin)), ("same_cluster", (q, q_twin)))
        }
        out["rules"][name]["near_duplicate_drops"] = int(np.sum(sel.reason == schema.DROP_DUPLICATE))
    out["pairs"] = {"across_boundary_cosine": round(float(unit[p] @ unit[p_twin]), 4), "same_cluster_cosine": round(float(unit[q] @ unit[q_twin]), 4), "threshold": 0.95}
    return out


# --- speed ---


def speed_pool(budget: int, k: int, dim: int, seed: int):
    """What _decide hands the round-robin: per cluster a shortlist of 2 x ceil(budget / k) + 16
    rows, in hardness order (here a random interleaving of the clusters)."""
    rng = np.random.default_rng(seed)
    per_cluster = 2 * math.ceil(budget / k) + 16
    n = per_cluster * k
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cluster = rng.permutation(np.repeat(np.arange(k, dtype=np.int32), per_cluster))
    sources = np.array([f"s{i}" for i in range(n)], dtype=object)
    return cluster, sources, emb


def speed(args) -> dict:
    config = config_mod.load().select
    results = []
    for budget in args.budgets:
        cluster, sources, emb = speed_pool(budget, args.clusters, args.dim, args.seed)
        n = len(cluster)
        times: dict[str, list[float]] = {name: [] for name in RULES}
        picks = {}
        for _ in range(args.repeats):
            for name, take in RULES.items():  # alternated, so a busy spell hits both
                selected = np.zeros(n, dtype=bool)
                reason = np.full(n, schema.DROP_BUDGET, dtype=object)
                start = time.perf_counter()
                take(np.arange(n), cluster, sources, emb, budget, config, selected, reason)
                times[name].append(round(time.perf_counter() - start, 3))
                picks[name] = selected
        median = {name: float(np.median(t)) for name, t in times.items()}
        results.append({
            "budget": budget,
            "rows": n,
            "times_s": times,
            "median_s": median,
            "range_s": {name: [min(t), max(t)] for name, t in times.items()},
            "ratio_global_over_per_cluster": round(median["global"] / median["per_cluster"], 2),
            "same_selection": bool(np.array_equal(picks["global"], picks["per_cluster"])),
        })
    return {"clusters": args.clusters, "dim": args.dim, "repeats": args.repeats, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    e = sub.add_parser("effect", help="both rules on a finished run's candidates")
    e.add_argument("out_dir", type=Path, help="a finished `optidel run` OUT")
    e.add_argument("--multiples", type=int, nargs="+", default=[1, 2, 4], help="budgets: multiples of the run's")
    e.add_argument("--near-pool", type=float, default=0.9, help="and this fraction of the eligible pool")
    p = sub.add_parser("planted", help="a near-duplicate pair across a cluster boundary")
    p.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("speed", help="the round-robin alone, old vs new")
    s.add_argument("--budgets", type=int, nargs="+", default=[21792, 87172])
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--clusters", type=int, default=32)
    s.add_argument("--dim", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    for each in (e, p, s):
        each.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    result = {"effect": effect, "planted": planted, "speed": speed}[args.what](args)
    result = {
        "command": "python " + " ".join([str(Path(sys.argv[0]).relative_to(REPO)) if Path(sys.argv[0]).is_absolute() else sys.argv[0], *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "threads": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}},
        "code": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
        **result,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
