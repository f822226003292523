"""The selection barrier: which candidate patches (or whole images) become output samples.

OptiDEL maximises V-information I_V(X->Y) = H_V(Y|empty) - H_V(Y|X): hard patches (high
conditional entropy under the proxy) raise the second term, diverse ones the first. So the
`optidel` selector ranks by hardness under diversity constraints (cluster quotas, a
near-duplicate limit within each cluster, a per-source limit); `hard` is the hardness-only
baseline; `random` and `dedup` are the whole-image baselines.

Selectors are entries of SELECTORS (see `register_selector`): the config's allowed values, the
CLI's choices and the barrier's dispatch all read that table, so a new selector is one
decorated function here (or in a plugin module that registers itself on import).

Every choice depends only on ids, scores, embeddings and the seed, never on row order: rows are
put in id order before anything order-sensitive (k-means included) sees them.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from optidel import seeding

from ..manifests import schema
from . import exact_mean

@dataclass
class Selection:
    """Per-row outcome, aligned with the input rows."""

    selected: np.ndarray  # bool
    cluster: np.ndarray  # int32, -1 when not clustered
    rank: np.ndarray  # int32, 0 = hardest (ties by id); the seeded draw order when unscored
    reason: np.ndarray  # object (str): a schema.DROP_* value, "" when selected
    n_clusters: int = 0  # k of the k-means behind `cluster` (0 when not clustered)


@dataclass(frozen=True)
class Selector:
    """One entry of SELECTORS.

    `choose` takes keyword arguments only and returns a Selection aligned with its rows. A patch
    selector gets patch_ids, source_ids, scores, embeddings, budget (patches), config (a
    SelectConfig) and seed; a whole-image selector gets the same without patch_ids, one row per
    ok source, with scores and embeddings None when it does not need scores."""

    name: str
    choose: Callable[..., Selection]
    whole_images: bool  # one source image per output sample, instead of mosaics of patches
    needs_scores: bool  # runs after the proposer and the proxy; without, pass 1 only ingests


SELECTORS: dict[str, Selector] = {}


def register_selector(name: str, *, whole_images: bool, needs_scores: bool):
    """Decorator: add `choose` to SELECTORS under `name`."""

    def add(choose):
        if name in SELECTORS:
            raise ValueError(f"selector {name!r} is already registered")
        if not (whole_images or needs_scores):
            raise ValueError(f"selector {name!r}: patch selectors need scores (patches come from the scored pass)")
        SELECTORS[name] = Selector(name, choose, whole_images, needs_scores)
        return choose

    return add


def selector(name: str) -> Selector:
    try:
        return SELECTORS[name]
    except KeyError:
        raise ValueError(f"unknown selector {name!r}; expected one of {', '.join(SELECTORS)}") from None


def select_patches(*, patch_ids, source_ids, scores, embeddings, budget: int, config, method: str, seed: int) -> Selection:
    """Choose up to `budget` candidate patches with the patch selector `method`. When fewer
    than `budget` patches are eligible, all eligible ones are selected and the caller records
    the shortfall."""
    entry = selector(method)
    if entry.whole_images:
        raise ValueError(f"selector {method!r} keeps whole images, not patches")
    return entry.choose(
        patch_ids=patch_ids, source_ids=source_ids, scores=scores, embeddings=embeddings,
        budget=budget, config=config, seed=seed,
    )


def select_images(*, source_ids, scores, embeddings, budget: int, config, method: str, seed: int) -> Selection:
    """Choose up to `budget` whole source images with the whole-image selector `method`."""
    entry = selector(method)
    if not entry.whole_images:
        raise ValueError(f"selector {method!r} selects patches, not whole images")
    return entry.choose(source_ids=source_ids, scores=scores, embeddings=embeddings, budget=budget, config=config, seed=seed)


@dataclass
class _Ranked:
    """What both patch selectors start from: rows checked, ranked and clustered. Both cluster,
    so the diversity of either selection is reported on the same footing; only `optidel` uses
    the clusters to choose."""

    sources: np.ndarray
    rank: np.ndarray
    emb: np.ndarray
    cluster: np.ndarray
    k: int
    hardest_first: np.ndarray

    @classmethod
    def of(cls, patch_ids, source_ids, scores, embeddings, config, seed) -> _Ranked:
        ids = _ids(patch_ids, "patch_ids")
        sources = _aligned(source_ids, len(ids), "source_ids")
        rank = hardness_rank(ids, scores)
        emb = _unit_rows(embeddings, ids)
        k = min(config.clusters, len(ids))
        cluster = cluster_embeddings(ids, emb, k, seed)
        return cls(sources, rank, emb, cluster, k, np.argsort(rank, kind="stable"))


@register_selector("optidel", whole_images=False, needs_scores=True)
def select_optidel(*, patch_ids, source_ids, scores, embeddings, budget, config, seed) -> Selection:
    """Hardest first under diversity constraints: the trimmed noise tail dropped, then
    round-robin cluster quotas, the near-duplicate limit within each cluster and the per-source
    limit (take_round_robin)."""
    r = _Ranked.of(patch_ids, source_ids, scores, embeddings, config, seed)
    n = len(r.rank)
    selected = np.zeros(n, dtype=bool)
    reason = np.full(n, schema.DROP_BUDGET, dtype=object)
    n_trim = int(config.trim_top_frac * n)
    reason[r.hardest_first[:n_trim]] = schema.DROP_OUTLIER
    eligible = r.hardest_first[n_trim:]
    take_round_robin(eligible, r.cluster, r.sources, r.emb, budget, config, selected, reason)
    # Never looked at, yet hard enough for a hardness-only pick: its cluster's share was full.
    unseen_hard = eligible[:budget][reason[eligible[:budget]] == schema.DROP_BUDGET]
    reason[unseen_hard] = schema.DROP_QUOTA
    return Selection(selected, r.cluster, r.rank, reason, r.k)


@register_selector("hard", whole_images=False, needs_scores=True)
def select_hard(*, patch_ids, source_ids, scores, embeddings, budget, config, seed) -> Selection:
    """The hardness-only baseline: hardest first, under the per-source cap only."""
    r = _Ranked.of(patch_ids, source_ids, scores, embeddings, config, seed)
    n = len(r.rank)
    selected = np.zeros(n, dtype=bool)
    reason = np.full(n, schema.DROP_BUDGET, dtype=object)
    take_hardest(r.hardest_first, r.sources, budget, config.per_source_cap, selected, reason)
    return Selection(selected, r.cluster, r.rank, reason, r.k)


def _drawn(ids: np.ndarray, seed: int) -> np.ndarray:
    """Row indices in seeded draw order: a sort by a hash of (seed, id), independent of input
    order and of the pool's other members, so a source keeps its place when the pool grows."""
    draw_keys = [(seeding.derive(seed, "draw", sid), sid) for sid in ids]
    return np.asarray(sorted(range(len(ids)), key=draw_keys.__getitem__), dtype=np.int64)


def _image_rank(ids: np.ndarray, scores, drawn: np.ndarray) -> np.ndarray:
    """Hardness rank when scores are given; without them, the draw order."""
    if scores is not None:
        return hardness_rank(ids, scores)
    rank = np.empty(len(ids), dtype=np.int32)
    rank[drawn] = np.arange(len(ids), dtype=np.int32)
    return rank


def _image_selection(n: int, chosen: np.ndarray, cluster: np.ndarray, rank: np.ndarray, reason: np.ndarray, k: int) -> Selection:
    selected = np.zeros(n, dtype=bool)
    selected[chosen] = True
    reason[chosen] = ""
    return Selection(selected, cluster, rank, reason, k)


@register_selector("random", whole_images=True, needs_scores=False)
def select_random(*, source_ids, scores, embeddings, budget, config, seed) -> Selection:
    """A seeded draw of whole images (scores, when given, only fill `rank`)."""
    ids = _ids(source_ids, "source_ids")
    n = len(ids)
    drawn = _drawn(ids, seed)
    rank = _image_rank(ids, scores, drawn)
    reason = np.full(n, schema.DROP_BUDGET, dtype=object)
    return _image_selection(n, drawn[:budget], np.full(n, -1, dtype=np.int32), rank, reason, 0)


@register_selector("dedup", whole_images=True, needs_scores=True)
def select_dedup(*, source_ids, scores, embeddings, budget, config, seed) -> Selection:
    """SemDeDup-style (arXiv 2401.17542): k-means the image embeddings, drop images cosine-near
    a kept one of their cluster, then draw the budget from the survivors in seeded order,
    spread round-robin across clusters."""
    ids = _ids(source_ids, "source_ids")
    n = len(ids)
    drawn = _drawn(ids, seed)
    rank = _image_rank(ids, scores, drawn)
    reason = np.full(n, schema.DROP_BUDGET, dtype=object)
    emb = _unit_rows(embeddings, ids)
    k = min(config.clusters, n)
    cluster = cluster_embeddings(ids, emb, k, seed)
    survivors: dict[int, list[int]] = {}
    guards: dict[int, _NearDuplicates] = {}
    sizes = Counter(cluster.tolist())
    for i in drawn.tolist():
        c = int(cluster[i])
        if c not in guards:
            guards[c] = _NearDuplicates(emb.shape[1], sizes[c], config.near_duplicate_cosine)
        guard = guards[c]
        if guard.near(emb[i]):
            reason[i] = schema.DROP_DUPLICATE
        else:
            guard.add(emb[i])
            survivors.setdefault(c, []).append(i)
    chosen = np.asarray(_interleave(list(survivors.values()))[:budget], dtype=np.int64)
    return _image_selection(n, chosen, cluster, rank, reason, k)


def diversity_stats(cluster_of_selected, n_clusters: int) -> dict:
    """Diversity of a selection over k clusters (entries of -1 are ignored): coverage (fraction
    of clusters holding a selected item) and the entropy of its cluster histogram in nats, with
    its maximum ln(k) for scale — the H_V(Y|empty) side of the V-information accounting."""
    labels = np.asarray(cluster_of_selected, dtype=np.int64)
    labels = labels[labels >= 0]
    if labels.size and labels.max() >= n_clusters:
        raise ValueError(f"cluster label {labels.max()} out of range for {n_clusters} clusters")
    counts = np.bincount(labels, minlength=max(n_clusters, 0))
    covered = int((counts > 0).sum())
    p = counts[counts > 0] / max(labels.size, 1)
    return {
        "clusters": int(max(n_clusters, 0)),
        "clusters_covered": covered,
        "coverage": covered / n_clusters if n_clusters > 0 else 0.0,
        "entropy_nats": float(np.sum(p * np.log(1 / p))),
        "max_entropy_nats": math.log(n_clusters) if n_clusters > 0 else 0.0,
    }


def hardness_rank(ids, scores) -> np.ndarray:
    """int32 rank per row: 0 = highest score, ties broken by id."""
    ids = _ids(ids, "ids")
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != (len(ids),):
        raise ValueError(f"scores: expected shape ({len(ids)},), got {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"scores: non-finite score for {ids[bad[0]]!r} ({bad.size} rows)")
    by_id = np.argsort(ids, kind="stable")
    order = by_id[np.argsort(-values[by_id], kind="stable")]
    rank = np.empty(len(ids), dtype=np.int32)
    rank[order] = np.arange(len(ids), dtype=np.int32)
    return rank


def cluster_embeddings(ids, embeddings: np.ndarray, k: int, seed: int) -> np.ndarray:
    """int32 cluster per row: spherical (cosine) k-means with faiss, k-means++ seeded from
    (seed, "kmeans"), run on the rows in id order so the result ignores input order."""
    ids = _ids(ids, "ids")
    n = len(ids)
    if n == 0 or k <= 1:
        return np.zeros(n, dtype=np.int32)
    by_id = np.argsort(ids, kind="stable")
    x = np.ascontiguousarray(embeddings[by_id], dtype=np.float32)
    cluster = np.empty(n, dtype=np.int32)
    cluster[by_id] = assign_clusters(x, train_centroids(x, k, seed))
    return cluster


def train_centroids(x: np.ndarray, k: int, seed: int) -> np.ndarray | None:
    """float32 (k, D) centroids of unit rows `x` (in id order: k-means++ depends on row order),
    or None when k <= 1 (one cluster needs no centroids)."""
    if len(x) == 0 or k <= 1:
        return None
    x = np.ascontiguousarray(x, dtype=np.float32)
    kmeans = faiss.Kmeans(
        x.shape[1],
        k,
        niter=25,
        spherical=True,
        init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
        seed=seeding.derive(seed, "kmeans") & 0x7FFF_FFFF,
        min_points_per_centroid=1,  # small pools are fine; silences faiss's "too few points" warning
        verbose=False,
    )
    with _one_faiss_thread():
        kmeans.train(x)
    return kmeans.centroids


def assign_clusters(x: np.ndarray, centroids: np.ndarray | None) -> np.ndarray:
    """int32 nearest centroid (largest inner product, the first on a tie) per row; all 0 without
    centroids.

    Each row's products are summed on their own (numpy's pairwise sum along the dimension), so a
    row gets the same cluster whatever rows share its batch: a selection over the pass-1 parts
    assigns part by part, and must agree with the whole pool's assignment. faiss's batched
    search does not: its BLAS blocking moves the last bits with the batch, which flips rows
    close to two centroids."""
    if centroids is None:
        return np.zeros(len(x), dtype=np.int32)
    x = np.asarray(x, dtype=np.float32)
    centroids = np.asarray(centroids, dtype=np.float32)
    labels = np.empty(len(x), dtype=np.int32)
    for rows in _chunks(len(x), _CHUNK * 32 // len(centroids) or 1):  # about 16 MB of products
        labels[rows] = (x[rows, None, :] * centroids[None, :, :]).sum(axis=2).argmax(axis=1)
    return labels


@contextlib.contextmanager
def _one_faiss_thread():
    """One thread: faiss's multi-threaded reductions may sum in a different order per run."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def take_hardest(hardest_first, sources, budget, cap, selected, reason) -> int:
    """Hardest first under the per-source cap; returns how many rows of `hardest_first` it
    looked at (a shortlist shorter than that could have changed the outcome)."""
    taken = Counter()
    n_selected = 0
    looked = 0
    for i in hardest_first.tolist():
        if n_selected >= budget:
            break
        looked += 1
        if taken[sources[i]] >= cap:
            reason[i] = schema.DROP_SOURCE_CAP
            continue
        taken[sources[i]] += 1
        selected[i], reason[i] = True, ""
        n_selected += 1
    return looked


def take_round_robin(eligible, cluster, sources, emb, budget, config, selected, reason, guard=None) -> dict[int, int]:
    """Balanced cluster quotas, water-filled: each round every cluster with candidates left takes
    its hardest acceptable one, so all clusters get equal shares and a cluster that runs out
    leaves the rest of the budget to the others. Clusters take turns in the order of their
    hardest candidate. A skipped patch stays skipped: the selection only grows.

    The near-duplicate rule is per cluster (as `dedup`'s and SemDeDup's): a proposal is refused
    when its cosine to a kept patch of its own cluster exceeds the threshold. Patches of two
    clusters are never compared, so the check costs O(budget^2 x dim / k), not O(budget^2 x
    dim); two near-identical patches on either side of a cluster boundary may both be kept. A
    cluster whose proposal is refused proposes its next one in a further pass of the same round.

    A cluster's queue is checked _LOOKAHEAD rows at a time against the patches it has kept, in
    one matrix product (each kept patch is read once per _LOOKAHEAD proposals, not once per
    proposal: the selection can be millions of patches); a proposal is then checked only against
    the patches its cluster kept since. The windows sit at fixed queue positions and a short one
    is padded, so a selection over the parts (whose queues are prefixes of these) makes the same
    products.

    `guard(c, queue, capacity)` gives cluster c's guard over its queue (row indices), room for
    `capacity` kept rows at first: near_at(position), then keep(position) or, for a row the
    per-source cap refused unchecked, skip(position). By default a _QueueGuard over `emb`;
    the selection over the parts passes guards whose answers tasks worked out
    (select_parts._Speculated).

    Returns how far it went down each cluster's queue (a cluster whose queue was cut short and
    that got to its end could have gone on)."""
    queues: dict[int, list[int]] = {}
    for i in eligible.tolist():
        queues.setdefault(int(cluster[i]), []).append(i)
    position = dict.fromkeys(queues, 0)
    active = list(queues)
    # Each guard starts at an even share of the budget (at most its queue) and grows as needed.
    share = -(-budget // max(len(queues), 1))
    if guard is None:
        def guard(c, queue, capacity):
            return _QueueGuard(queue, emb, capacity, config.near_duplicate_cosine)
    guards = {c: guard(c, q, min(len(q), share)) for c, q in queues.items()}
    taken = Counter()
    n_selected = 0
    while active and n_selected < budget:
        owing = active
        while owing and n_selected < budget:
            still_owing = []
            for c in owing:  # one proposal per cluster: each is checked against its own guard
                if n_selected >= budget:
                    break
                i = queues[c][position[c]]
                position[c] += 1
                if taken[sources[i]] >= config.per_source_cap:
                    reason[i] = schema.DROP_SOURCE_CAP
                    guards[c].skip(position[c] - 1)
                elif guards[c].near_at(position[c] - 1):
                    reason[i] = schema.DROP_DUPLICATE
                else:
                    guards[c].keep(position[c] - 1)
                    taken[sources[i]] += 1
                    selected[i], reason[i] = True, ""
                    n_selected += 1
                    continue
                if position[c] < len(queues[c]):
                    still_owing.append(c)
            owing = still_owing
        active = [c for c in active if position[c] < len(queues[c])]
    return position


class _NearDuplicates:
    """Kept unit vectors, and whether a new one's cosine to one of them exceeds the threshold.
    Room for `capacity` vectors at first, doubled when full, never beyond `limit` (when given)."""

    def __init__(self, dim: int, capacity: int, threshold: float, limit: int | None = None):
        self.kept = np.empty((max(capacity, 0), dim), dtype=np.float32)
        self.count = 0
        self.threshold = threshold
        self.limit = limit

    def near(self, e: np.ndarray, since: int = 0) -> bool:
        """Near one of the vectors kept from position `since` on?"""
        return self.count > since and float((self.kept[since : self.count] @ e).max()) > self.threshold

    def max_cosine(self, batch: np.ndarray) -> np.ndarray:
        """Per row of `batch`, its largest cosine to a kept vector (-inf when none is kept)."""
        if self.count == 0:
            return np.full(len(batch), -np.inf, dtype=np.float32)
        return (self.kept[: self.count] @ batch.T).max(axis=0)

    def add(self, e: np.ndarray) -> None:
        if self.count == len(self.kept):
            room = max(2 * len(self.kept), 1)
            grown = np.empty((room if self.limit is None else min(room, self.limit), self.kept.shape[1]), dtype=np.float32)
            grown[: self.count] = self.kept[: self.count]
            self.kept = grown
        self.kept[self.count] = e
        self.count += 1


_LOOKAHEAD = 32  # queue rows a cluster checks in one product (the old one-guard rule's batch: k)


class _QueueGuard(_NearDuplicates):
    """One cluster's guard in the round-robin, checking its queue (row indices into `emb`) a
    window of _LOOKAHEAD rows at a time."""

    def __init__(self, queue: list[int], emb: np.ndarray, capacity: int, threshold: float):
        super().__init__(emb.shape[1], capacity, threshold, limit=len(queue))
        self.queue, self.emb = queue, emb
        self.start = -1  # the current window: its first queue position,
        self.kept_then = 0  # how many were kept when it was checked,
        self.window = np.zeros(0, dtype=np.float32)  # and each row's largest cosine to those

    def near_at(self, position: int) -> bool:
        """Is the queue's row at `position` near a kept vector?"""
        return self.cosine_at(position) > self.threshold

    def cosine_at(self, position: int) -> float:
        """The largest cosine of the queue's row at `position` to a kept vector (-inf when none
        is kept); once its window's value passes the threshold, that value."""
        start = position - position % _LOOKAHEAD
        if start != self.start:
            rows = self.queue[start : start + _LOOKAHEAD]
            batch = np.zeros((_LOOKAHEAD, self.emb.shape[1]), dtype=np.float32)
            batch[: len(rows)] = self.emb[rows]
            self.start, self.kept_then, self.window = start, self.count, self.max_cosine(batch)
        best = float(self.window[position - start])
        if best > self.threshold or self.count == self.kept_then:
            return best
        return max(best, float((self.kept[self.kept_then : self.count] @ self.emb[self.queue[position]]).max()))

    def keep(self, position: int) -> None:
        self.add(self.emb[self.queue[position]])

    def skip(self, position: int) -> None:
        """The per-source cap refused the row at `position`: it is neither checked nor kept."""


# How close to the threshold a later refused row must come to a kept one for speculate_queue
# to call the kept one blocking: far wider than float32's rounding of a cosine (about 1e-6 at
# these widths), so that two products of the same rows in another order never disagree on it.
BLOCKS_MARGIN = 1e-4


def speculate_queue(emb: np.ndarray, threshold: float, capacity: int, skipped=()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One cluster's near-duplicate decisions down its whole queue (`emb`: the queue's unit rows,
    in order), as take_round_robin makes them when every row found near no kept one is kept,
    but for those at the `skipped` positions (refused by the per-source cap: neither checked nor
    kept). Returns `near` per position, and `blocks`: per position kept here, whether some later
    row refused as near comes within BLOCKS_MARGIN of the threshold to it; and `borderline` per
    position, whether its largest cosine to the rows kept before it is within BLOCKS_MARGIN of
    the threshold.

    The round-robin may refuse, by the per-source cap, a row kept here. A blocking one can change
    a later decision, so the queue must be worked out again with that row among the skipped. A
    row that blocks none leaves every later row near what else was kept, or not near: the same
    decisions, but from products with one row more than the round-robin's own, whose rounding
    may differ in the last bit, so a borderline row's answer must be worked out again too.
    Otherwise the checks are made by the same _QueueGuard, at the same positions, against the
    same kept rows, as the round-robin's own: the answers are its answers, to the bit."""
    n = len(emb)
    guard = _QueueGuard(list(range(n)), emb, capacity, threshold)
    near = np.zeros(n, dtype=bool)
    kept = np.zeros(n, dtype=bool)
    borderline = np.zeros(n, dtype=bool)
    skipped = set(skipped)
    for position in range(n):
        if position in skipped:
            continue
        cosine = guard.cosine_at(position)
        borderline[position] = abs(cosine - threshold) < BLOCKS_MARGIN
        if cosine > threshold:
            near[position] = True
        else:
            guard.keep(position)
            kept[position] = True
    blocks = np.zeros(n, dtype=bool)
    refused = np.flatnonzero(near)
    for rows in _chunks(n, _CHUNK * 4096 // max(len(refused), 1) or 1):  # about 16 MB of products
        keepers = np.flatnonzero(kept[rows]) + rows.start
        if len(keepers) and len(refused):
            close = (emb[keepers] @ emb[refused].T) > threshold - BLOCKS_MARGIN
            blocks[keepers] = (close & (refused[None, :] > keepers[:, None])).any(axis=1)
    return near, blocks, borderline


def _interleave(queues: list[list[int]]) -> list[int]:
    """Round-robin over the queues: first of each, then second of each, ..."""
    out = []
    depth = 0
    while True:
        layer = [q[depth] for q in queues if depth < len(q)]
        if not layer:
            return out
        out.extend(layer)
        depth += 1


def _ids(values, name: str) -> np.ndarray:
    ids = np.asarray(values, dtype=object)
    if ids.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of ids, got shape {ids.shape}")
    if len(set(ids.tolist())) != len(ids):
        dup = next(v for v, count in Counter(ids.tolist()).items() if count > 1)
        raise ValueError(f"{name}: id {dup!r} occurs more than once")
    return ids.astype(str)


def _aligned(values, n: int, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=object)
    if array.shape != (n,):
        raise ValueError(f"{name}: expected {n} rows, got shape {array.shape}")
    return array


def _unit_rows(embeddings, ids: np.ndarray) -> np.ndarray:
    """float32 (n, D) rows, centred on the pool's mean and scaled to unit length: cosine
    similarity becomes a dot product.

    Why centre: mean-pooled ViT features share a large common component, so raw cosines are
    all close to 1 (on kvasir with the self-trained proxy, 1511 of 1540 patches were
    "near-duplicates" at 0.95). Cosines of the centred features measure what tells patches
    apart. The mean is exact (stages/exact_mean.py), so it does not depend on row order, nor on
    how a distributed selection splits the pool."""
    n = len(ids)
    emb = embedding_rows(embeddings, n)
    # A single row is left uncentred: it would be its own mean.
    mean = exact_mean.mean_of_sums(exact_mean.column_sums(emb), n) if n > 1 else np.zeros(emb.shape[1])
    return centred_unit_rows(emb, mean)


def embedding_rows(embeddings, n: int) -> np.ndarray:
    """float32 (n, D) embeddings, checked: every row finite and non-zero."""
    if embeddings is None:
        raise ValueError("embeddings are required by this selector")
    emb = np.asarray(embeddings)
    if emb.dtype == object:  # Ray hands array-valued columns over as object arrays of rows
        emb = np.stack(list(emb)) if len(emb) else np.zeros((0, 1))
    emb = emb.astype(np.float32, copy=False)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"embeddings: expected shape ({n}, D), got {emb.shape}")
    # The pool's embeddings are the barrier's largest column: every step goes through them in
    # chunks, so the only full-size array made is the result.
    norms = np.concatenate([np.linalg.norm(emb[rows], axis=1) for rows in _chunks(n)]) if n else np.zeros(0)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"embeddings: row {bad[0]} is zero or not finite ({bad.size} rows)")
    return emb


def centred_unit_rows(emb: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows minus `mean` (float64), scaled to unit length, as float32; row by row the same bits
    whatever other rows come with them."""
    unit = np.empty_like(emb)
    for rows in _chunks(len(emb)):
        unit[rows] = emb[rows] - mean  # in float64, rounded to float32 on assignment
        norms = np.linalg.norm(unit[rows], axis=1, keepdims=True)
        # A row equal to the mean has no direction of its own: it stays zero, near nothing.
        np.divide(unit[rows], norms, out=unit[rows], where=norms > 0)
        unit[rows][norms[:, 0] == 0] = 0
    return unit


_CHUNK = 1024  # rows: 0.5 MB of float32 embeddings (D = 128), 1 MB in float64


def _chunks(n: int, size: int | None = None) -> list[slice]:
    size = size or _CHUNK  # read at call time: tests vary it
    return [slice(start, start + size) for start in range(0, n, size)]
