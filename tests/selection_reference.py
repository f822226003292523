"""A small, plainly correct selection holding the whole pool in memory, as the reference the
engine over the parts (optidel.pipeline.selection) is checked against; and the harness that
runs the engine over a pool cut into parts, in this process.

Pools are dicts of the engine's columns: "id", "source", "score", "embedding"."""

from __future__ import annotations

from collections import Counter

import numpy as np

from optidel import seeding
from optidel.manifests import schema
from optidel.pipeline.selection import embeddings, engine, ranks
from optidel.pipeline.selection.selectors import Selector, selector
from optidel.stages import columns as C
from optidel.stages import exact_mean


def read_pool(store, with_patches: bool) -> tuple[dict, dict]:
    """Every pass-1 part's rows read back in one piece, as (source rows, patch rows)."""
    table = C.concat([store.read(p, skip=(C.MASK_RLE,)) for p in range(store.n_partitions)])
    if C.PATCH_INDEX not in table:  # an ingest-only pass 1: every row is a source
        return table, {}
    is_source = table[C.PATCH_INDEX] < 0
    return C.take(table, is_source), C.take(table, ~is_source) if with_patches else {}


def reference(pool: dict, name: str, budget: int, config, seed: int, centroids=None) -> dict:
    """Every row's selected, cluster, rank and reason, and the clusters k, as the selector's
    traits define them. `centroids`: k-means' (default: trained on the whole pool in id order)."""
    entry = selector(name)
    ids = pool["id"].astype(str).tolist()
    n = len(ids)
    hardness = _sorted(pool, "hardness") if entry.needs_scores else None
    draw = _sorted(pool, ("draw", seed))
    order = draw if entry.order == "draw" else hardness
    rank = plain_ranks(pool, "hardness" if entry.needs_scores else ("draw", seed))
    cluster, k, unit = np.full(n, -1, np.int32), 0, None
    if entry.clusters:
        emb = pool["embedding"].astype(np.float32)
        unit = embeddings.centred_unit_rows(emb, exact_mean.mean_of_sums(exact_mean.column_sums(emb), n) if n > 1 else 0)
        k = min(config.clusters, n)
        if centroids is None:
            by_id = sorted(range(n), key=ids.__getitem__)
            centroids = embeddings.train_centroids(unit[by_id], k, seed)
        cluster = embeddings.assign_clusters(unit, centroids)
    selected = np.zeros(n, bool)
    reason = np.full(n, schema.DROP_BUDGET, dtype=object)
    n_trim = int(config.trim_top_frac * n) if entry.order == "window" else 0
    reason[order[:n_trim]] = schema.DROP_OUTLIER
    eligible = order[n_trim:]
    if entry.head_is_choice:
        selected[eligible[:budget]] = True
    else:
        _round_robin(entry, eligible, cluster, pool["source"], unit, budget, config, selected, reason)
    reason[selected] = ""
    if entry.quotas:  # met before the budget ran out in the order alone, yet never looked at
        unseen = [i for i in eligible[:budget] if reason[i] == schema.DROP_BUDGET]
        reason[unseen] = schema.DROP_QUOTA
    return {"selected": selected, "cluster": cluster, "rank": rank, "reason": reason, "k": k}


def plain_ranks(pool: dict, by) -> np.ndarray:
    """Each row's place in the pool's order ("hardness" or ("draw", seed)), by a plain sort."""
    rank = np.empty(len(pool["id"]), np.int32)
    rank[_sorted(pool, by)] = np.arange(len(pool["id"]))
    return rank


def _sorted(pool: dict, by) -> list[int]:
    ids = pool["id"].astype(str).tolist()
    if by == "hardness":
        return sorted(range(len(ids)), key=lambda i: (-float(pool["score"][i]), ids[i]))
    return sorted(range(len(ids)), key=lambda i: (seeding.derive(by[1], "draw", ids[i]), ids[i]))


def _round_robin(entry: Selector, eligible, cluster, sources, unit, budget, config, selected, reason) -> None:
    """Each round, every group with rows left takes its next acceptable row, in the order of the
    groups' first rows; a group whose row is refused offers its next in a further pass."""
    queues: dict[int, list[int]] = {}
    for i in eligible:
        queues.setdefault(int(cluster[i]) if entry.quotas else 0, []).append(i)
    kept = {g: [] for g in queues}
    at = dict.fromkeys(queues, 0)
    taken = Counter()
    active = list(queues)
    while active and selected.sum() < budget:
        owing = active
        while owing and selected.sum() < budget:
            refused = []
            for g in owing:
                if selected.sum() >= budget:
                    break
                i = queues[g][at[g]]
                at[g] += 1
                if entry.per_source_cap and taken[sources[i]] >= config.per_source_cap:
                    reason[i] = schema.DROP_SOURCE_CAP
                elif entry.near_duplicates and any(float(unit[i] @ unit[j]) > config.near_duplicate_cosine for j in kept[g]):
                    reason[i] = schema.DROP_DUPLICATE
                else:
                    kept[g].append(i)
                    taken[sources[i]] += 1
                    selected[i] = True
                    continue
                if at[g] < len(queues[g]):
                    refused.append(g)
            owing = refused
        active = [g for g in active if at[g] < len(queues[g])]


class Parts:
    """A pool cut into parts: load(p) gives part p's rows, as a pass-1 part would."""

    def __init__(self, columns: dict[str, np.ndarray], n_parts: int, seed: int):
        rows = np.random.default_rng(seed).permutation(len(next(iter(columns.values()))))
        cuts = np.sort(np.random.default_rng(seed + 1).integers(0, len(rows) + 1, n_parts - 1))
        self.rows = np.split(rows, cuts)  # some parts may be empty
        self.columns = columns

    def __call__(self, part: int, columns=None) -> dict[str, np.ndarray]:
        return {name: values[self.rows[part]] for name, values in self.columns.items() if name in (columns or self.columns)}


def run_here(fn, calls):
    return [fn(*call) for call in calls]


def split_here(map_fn, calls, buckets):
    """A shuffle's map half, in turn: the pieces stay values here."""
    maps = [map_fn(*call) for call in calls]
    assert all(len(pieces) == buckets for pieces, _ in maps)
    return [pieces for pieces, _ in maps], [note for _, note in maps]


def ranks_here(load, parts: list, groups: list[list[int]], by, ranges: int | None = None, sample: int | None = None):
    """The sort's steps run in turn, as ranks.pool_ranks runs them on Ray (a map per group of
    parts, a reduce per range): each part's ranks, and the rows of each range."""
    ranges = ranges or len(groups)
    of = [[parts[i] for i in group] for group in groups]
    samples = [ranks.key_sample(load, group, by, sample or 4 * ranges) for group in of]
    bounds = ranks.range_bounds(samples, ranges)
    maps = [ranks.range_pieces(load, group, by, bounds, ranges) for group in of]
    offsets = ranks.range_offsets(counts for _, counts in maps)
    reduced = [ranks.ranked_range(offsets[r], *(pieces[r] for pieces, _ in maps)) for r in range(ranges)]
    found = {}
    for g, group in enumerate(groups):
        found.update(zip(group, ranks.part_ranks(len(group), *(pieces[g] for pieces in reduced))))
    return [found[i] for i in range(len(parts))], sum(counts for _, counts in maps)


def over_parts(parts: Parts, n_parts: int, name: str, budget: int, config, seed: int, shortlist=None, maps: int = 3):
    """The engine over the parts, its labels reassembled into the pool's row order, and its verdict;
    round 3's map tasks read `maps` groups of parts."""
    entry = selector(name)
    part_ids = list(range(n_parts))
    verdict = engine.choose(
        parts, part_ids, run_here, split_here, budget=budget, selector=entry, config=config, seed=seed,
        pool=len(parts.columns["id"]), groups=[part_ids[i::maps] for i in range(min(maps, n_parts))], shortlist=shortlist,
    )
    n = len(parts.columns["id"])
    out = {"selected": np.zeros(n, bool), "cluster": np.zeros(n, np.int32), "rank": np.zeros(n, np.int32),
           "reason": np.full(n, "?", dtype=object)}
    groups = [part_ids[:2], part_ids[2:]] if n_parts > 2 else [part_ids]
    part_ranks, _ = ranks_here(parts, part_ids, groups, "hardness" if entry.needs_scores else ("draw", seed))
    for group in groups:
        for p, labels in zip(group, engine.parts_selection(parts, group, verdict, [part_ranks[p] for p in group])):
            for column in out:
                out[column][parts.rows[p]] = getattr(labels, column)
    out["k"] = verdict.k
    return out, verdict


def assert_same(out: dict, expected: dict) -> None:
    for column in ("selected", "cluster", "rank", "reason", "k"):
        assert np.array_equal(out[column], expected[column]), column
