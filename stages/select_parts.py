"""Selection over the pass-1 parts, never holding the pool: the distributed form of the `optidel`,
`hard` and `random` selectors of stages/select.py, which stay the reference.

The caller hands over the parts as opaque handles, `load(part, columns=None)` giving a part's
competing rows (PART_COLUMNS, or those of `columns`: ids, sources, scores, embeddings;
whole-image selectors: one row per ok source, its source id and score when scored),
and `run(fn, calls)`, which yields fn(*call) for each call in order, in this process or as Ray
tasks (pipeline/raydata.py), and `split`, a shuffle's map half (Split, below). Every fn here is
a module-level function, so it pickles. Each part's result is folded into a running merge as
it arrives (the sample, the head of the hardness order, the shortlists each cut to their
length), so the caller holds O(budget + clusters x dim + sample x dim) whatever the number of
parts, and no embedding of the shortlists. What it receives is counted per round
(Verdict.rows_received).

Rounds (patch selectors):
1. summary: rows, exact embedding sums (the pool mean, stages/exact_mean.py) and the seeded
   sample k-means trains on: the smallest hashes of (seed, id). Each part sends its smallest
   `kmeans_sample` hashes alone (8 bytes a row), whose merge gives the last hash of the sample;
   then a second round of tasks sends each part's rows up to that hash (key, score, embedding),
   about the sample's rows in all, of which the first `kmeans_sample` by (hash, id) are the
   sample. When the sample covers the pool it is the pool, in id order, as in memory: the same
   centroids, the same clusters.
2. head: each part's first n_trim + budget keys of the hardness order (score desc, id asc), up
   to a cut read off the sample (as in round 3, below; fetched again with a cut twice as far
   when it came too soon: Verdict.head_fetches), merged, give the last trimmed key (the noise
   tail) and the last key a hardness-only pick of the budget would reach (`cluster_quota`).
3. shortlists: per cluster, the hardest eligible rows of the pool, gathered by a shuffle: a map
   task per group of parts sends each cluster's hardest rows (with their embeddings) to that
   cluster's task, never to the driver; the cluster's task merges them into its shortlist and
   works out the near-duplicate decisions down all of it (select.speculate_queue), as if every
   row found near no kept one were kept. The driver receives the shortlists without embeddings,
   with those decisions, and runs the round-robin on them as in memory: only the per-source cap
   and the budget join the clusters. When the cap skips a row its cluster's task kept, and that
   row could have changed a later decision, the cluster's task works its queue out again
   without it (_Speculated; Verdict.worked_again). A map sends a cluster's rows only up to a
   cut key, read off the sample (a uniform sample, clustered in the driver): the key a little
   past where the cluster's shortlist should end (_cut), so the cluster tasks receive about
   CUT_MARGIN times the shortlists (Verdict.rows_to_groups), not every part's every eligible
   row. A cluster that came back shorter than its shortlist (and than its eligible rows) was
   cut too soon: it alone is fetched again with a cut twice as far, until none was. A cluster
   cut short that the round-robin ran to the end of could have gone on: it alone is fetched
   again, twice as long, until none did. Then every row the round-robin looked at, and every
   decision, is the in-memory one. Verdict.fetches counts these rounds of tasks, the refetches
   of clusters cut too soon included (Verdict.recut of them). `hard` runs the same with one
   group and no near-duplicate rule.
4. the verdict names the chosen rows (Verdict.chosen); parts_selection labels every row of
   some parts (cluster, rank, selected, reason) from the verdict and the parts' ranks.

`random`: the first `budget` keys of the seeded draw order, merged as in round 2.

Ranks (every row's place in the pool's order, hardness or draw) come from a sort by ranges of
keys, each part's keys read twice whatever the number of parts: key_sample gives a group of
parts' keys at evenly spaced places of its order, range_bounds cuts the pool into ranges of
about equal rows at the merged samples' quantiles; range_pieces sends each row's key (and where
it is: part and position) to its range and counts the rows per range; ranked_range sorts one
range's keys and ranks them, after range_offsets' rows of every earlier range, in pieces back
to the groups the rows came from; part_ranks gives each part of a group its ranks, aligned
with its rows. The caller runs them as a shuffle (pipeline/ranks.py), or in turn (tests),
holding the samples (a few keys per range from each group: O(parts) when there are as many
ranges as groups), the bounds and the counts per range, never a rank.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from optidel import seeding

from ..manifests import schema
from . import exact_mean
from . import select as reference
from .columns import EMBEDDING, PATCH_ID, SCORE, SOURCE_ID
from .id_table import IdTable

PART_COLUMNS = (PATCH_ID, SOURCE_ID, SCORE, EMBEDDING)
DISTRIBUTED = ("optidel", "hard", "random")  # selectors with a form here (dedup: not yet)
IMAGE_ID = SOURCE_ID  # whole-image selectors: a row is an ok source, its id the source id

Run = Callable[[Callable, list[tuple]], Iterable]
# split(map_fn, calls, buckets): a shuffle's map half. Runs map_fn(*call) -> (pieces, note) for
# each call, pieces[b] for bucket b; returns (per call, its pieces, as handles `run` takes for
# arguments: on Ray, object references the driver never fetches) and (the notes, in call order).
Split = Callable[[Callable, list[tuple], int], tuple[list[list], list]]
Key = tuple  # (primary, id): rows sort ascending by primary, then id


@dataclass
class Verdict:
    """What the caller holds after the rounds and each part's rows are decided from."""

    method: str
    n: int  # competing rows in the pool
    k: int = 0  # clusters (0: not clustered)
    mean: np.ndarray | None = None  # the pool's exact embedding mean (patch selectors)
    centroids: np.ndarray | None = None
    last_trimmed: Key | None = None  # rows up to this key are the noise tail (optidel)
    last_in_reach: Key | None = None  # rows up to this key a hardness-only pick would take
    decided: IdTable = field(default_factory=lambda: IdTable([], reason=[]))  # the rows decided: reason ("" = selected)
    chosen: dict[str, np.ndarray] = field(default_factory=dict)  # the selected rows: id, source, cluster, primary (random: id, in draw order)
    score_sum: int = 0  # exact sum of the scores (exact_mean units): the pool's mean hardness
    fetches: int = 0  # shortlist rounds it took (1 when no cluster was fetched again), recuts included
    recut: int = 0  # of those, rounds that fetched again clusters whose cut came too soon
    head_fetches: int = 0  # round 2's rounds of tasks (1 unless its cut came too soon)
    worked_again: int = 0  # clusters' near-duplicate decisions worked out again (_Speculated)
    rows_to_groups: int = 0  # round 3's rows (with embeddings) the maps sent the group tasks, every fetch
    # Rows the driver received, per round: "draws" (round 1, a hash each), "sample" (round 1,
    # with embeddings), "head" (round 2, a key each), "shortlists" (round 3, without embeddings).
    rows_received: dict[str, int] = field(default_factory=dict)

    def for_labels(self) -> Verdict:
        """What parts_selection reads, for the tasks that label the parts: the verdict without
        its chosen rows, which every task would unpickle whole, and which the plan's rows hold
        once the caller has them."""
        return replace(self, chosen={})


@dataclass
class _Sample:
    """The k-means sample's keys in the driver, for the head's and the shortlists' cuts: its
    rows in hardness order (their keys and clusters), and its share of the pool."""

    primary: np.ndarray
    ids: np.ndarray
    cluster: np.ndarray
    share: float


# A cluster's cut is the key of its eligible sample row at ceil(CUT_MARGIN x share x length) +
# CUT_SLACK in hardness order. The sample being uniform, the count of sample rows among the
# cluster's first `length` eligible rows is hypergeometric, of mean share x length; the cut
# comes too soon only when that count passes the cut's place. With 1.5 and 8 the Chernoff bound
# on that is at most about 1e-3 for any mean (near 1e-4 for a mean of 4 or of 50, worst about
# 1e-3 near 14), and far less for the means of a large pool (a mean of 300: below 1e-12): a
# recut round is rare, while the driver receives about 1.5 x the shortlists plus 8 / share rows
# a cluster. A smaller margin saves little once the mean is large, and a recut costs a round.
CUT_MARGIN = 1.5
CUT_SLACK = 8


def select_patches_in_parts(
    load, parts: Sequence, run: Run, split: Split, *, budget: int, config, method: str, seed: int,
    groups: Sequence[Sequence] | None = None, shortlist: int | None = None,
) -> Verdict:
    """Round 1 to 3 for the patch selector `method` (optidel or hard). Round 3's map tasks each
    read a group of parts (`groups`, default: one part each); `shortlist` (default: sized by the
    budget) is each cluster's first fetch length."""
    if method not in ("optidel", "hard"):
        raise ValueError(f"selector {method!r} has no distributed form over parts")
    verdict, sample = _clustered(load, parts, run, config, method, seed)
    if verdict.n == 0:
        return verdict
    n_trim = int(config.trim_top_frac * verdict.n) if method == "optidel" else 0
    if method == "optidel":
        primary, ids = _pool_head(load, parts, run, verdict, sample, n_trim + budget)
        if n_trim:
            verdict.last_trimmed = (primary[n_trim - 1], ids[n_trim - 1])
        if budget and len(ids) > n_trim:
            verdict.last_in_reach = (primary[-1], ids[-1])
    n_groups = max(verdict.k, 1) if method == "optidel" else 1
    lengths = dict.fromkeys(range(n_groups), shortlist or _first_length(budget, n_groups))
    shortlists = _Shortlists(run, config.near_duplicate_cosine if method == "optidel" else None, -(-budget // n_groups))
    queues = _sample_queues(sample, verdict)
    reach = dict.fromkeys(lengths, 1)  # how far past the estimate each cluster's cut goes
    pending = list(lengths)
    calls = [[part] for part in parts] if groups is None else [list(group) for group in groups]
    while True:
        cuts = {g: _cut(queues.get(g), sample.share, reach[g] * lengths[g]) for g in pending}
        verdict.fetches += 1
        fetch = {g: lengths[g] for g in pending}
        pieces, notes = split(_shortlist_pieces, [(load, group, verdict, fetch, cuts, n_groups) for group in calls], n_groups)
        totals = Counter()
        for note, sent in notes:
            totals.update(note)
            verdict.rows_to_groups += sent
        shortlists.merge(fetch, pieces, verdict.rows_received)
        too_soon = [g for g in pending if shortlists.length(g) < min(lengths[g], totals[g])]
        if too_soon:  # cut before the end of its shortlist: only a cut key can do that
            verdict.recut += 1
            reach.update({g: 2 * reach[g] for g in too_soon})
            pending = too_soon
            continue
        merged = shortlists.in_hardness_order()
        looked, reason = _decide(merged, budget, config, method, shortlists.guard)
        short = {g: lengths[g] for g in totals if totals[g] > lengths[g] and looked.get(g, 0) >= lengths[g]}
        if not short:
            decided = reason != schema.DROP_BUDGET
            verdict.decided = IdTable(merged["id"][decided], reason=reason[decided])
            verdict.worked_again = shortlists.worked_again
            chosen = reason == ""
            verdict.chosen = {name: merged[name][chosen] for name in ("id", "source", "cluster", "primary")}
            return verdict
        lengths.update({g: 2 * length for g, length in short.items()})
        pending = list(short)


def select_images_in_parts(
    load, parts: Sequence, run: Run, *, budget: int, method: str, seed: int, pool: int | None = None
) -> Verdict:
    """`random` over parts: the first `budget` rows of the seeded draw order (a streaming top-k
    of hashes). Given the `pool`'s row count, each part sends its rows only up to a draw value
    where about CUT_MARGIN x budget + CUT_SLACK of the pool's rows should end (the draws are
    uniform 64-bit hashes): the driver receives about 1.5 x the budget, not every part's first
    `budget` rows. A merge that came back short is fetched again with a cut twice as far."""
    if method != "random":
        raise ValueError(f"selector {method!r} has no distributed form over parts")
    received: dict[str, int] = {}
    fetches = 0
    while True:
        cut = _draw_cut(2**fetches * (CUT_MARGIN * budget + CUT_SLACK), pool)
        fetches += 1
        heads = run(_head, [(load, part, method, ("draw", seed), budget, cut) for part in parts])
        n, _, ids = _first_keys(_tally(heads, received, "head", lambda head: len(head[2])), budget)
        if cut is None or len(ids) >= min(budget, n):
            break
    verdict = Verdict(method, n, head_fetches=fetches, rows_received=received)
    verdict.decided = IdTable(ids, reason=np.full(len(ids), "", dtype=object))
    verdict.chosen = {"id": ids}  # in draw order
    return verdict


def parts_selection(load, parts: Sequence, verdict: Verdict, ranks: Sequence[np.ndarray]) -> list[reference.Selection]:
    """Round 4 for some parts: the rows of each part, as the in-memory selector labels them (one
    Selection per part, aligned with its rows), given ranks[i], the pool ranks of parts[i]'s
    rows (part_ranks)."""
    selections = []
    for part, rank in zip(parts, ranks, strict=True):
        rows = load(part)
        ids = _ids(rows, verdict.method)
        if len(rank) != len(ids):
            raise ValueError(f"part {part!r}: {len(rank)} ranks for {len(ids)} rows")
        selections.append(_labelled(rows, ids, rank, verdict))
    return selections


def _labelled(rows: dict, ids: np.ndarray, rank: np.ndarray, verdict: Verdict) -> reference.Selection:
    n = len(ids)
    reason = np.full(n, schema.DROP_BUDGET, dtype=object)
    if verdict.method == "random":  # no noise tail, no quota: its keys are not needed here
        cluster = np.full(n, -1, dtype=np.int32)
    else:
        primary = _primary(rows, ids, "hardness")
        cluster = reference.assign_clusters(_unit(rows, ids, verdict), verdict.centroids)
        if verdict.last_in_reach is not None:
            reason[_at_or_before(primary, ids, verdict.last_in_reach)] = schema.DROP_QUOTA
    found = verdict.decided.find(ids)
    mine = found >= 0
    reason[mine] = verdict.decided.column("reason", found[mine]).tolist()
    if verdict.last_trimmed is not None:
        reason[_at_or_before(primary, ids, verdict.last_trimmed)] = schema.DROP_OUTLIER
    return reference.Selection(reason == "", cluster, rank, reason, verdict.k)


def _clustered(load, parts, run: Run, config, method: str, seed: int) -> tuple[Verdict, _Sample | None]:
    """Round 1: the pool's size and mean, centroids trained on the seeded sample, and the
    sample's keys and clusters (None for an empty pool)."""
    size = config.kmeans_sample
    received: dict[str, int] = {}
    n, sums, score_sum, draws = 0, None, 0, np.zeros(0, dtype=np.uint64)
    summaries = run(_summary, [(load, part, seed, size) for part in parts])
    for rows, part_sums, part_score_sum, part_draws in _tally(summaries, received, "draws", lambda summary: len(summary[3])):
        n += rows
        sums = part_sums if sums is None else exact_mean.add_sums(sums, part_sums)
        score_sum += part_score_sum
        draws = np.r_[draws, part_draws]
        if len(draws) > size:
            draws = np.partition(draws, size - 1)[:size]
    if n == 0:
        return Verdict(method, 0, rows_received=received), None
    # The sample is the first `size` rows by (draw, id): every row of a draw below the size-th
    # smallest, and some of those of that draw (more rows than one may share it).
    last_draw = draws.max() if n > size else None
    sample = None
    drawn = _tally(run(_sample_rows, [(load, part, seed, last_draw) for part in parts]), received, "sample", lambda rows: len(rows[1]))
    for batch in _batched(drawn, lambda rows: len(rows[1]), size):
        batch = [rows for rows in batch if len(rows[1])]  # a part with none drawn: its embeddings may have no width
        if not batch:
            continue
        columns = tuple(np.concatenate(column) for column in zip(*([sample] if sample is not None else []), *batch))
        draws, ids, _, _ = columns
        sample = tuple(column[_key_order(draws, ids)[:size]] for column in columns)
    # A single row is left uncentred, as in memory: it would be its own mean.
    mean = exact_mean.mean_of_sums(sums, n) if n > 1 else np.zeros(len(sums))
    _, ids, emb, primary = sample
    by_id = np.argsort(ids, kind="stable")  # k-means++ reads its rows in id order, as in memory
    k = min(config.clusters, n, len(ids))
    unit = reference.centred_unit_rows(emb[by_id], mean)
    centroids = reference.train_centroids(unit, k, seed)
    cluster = np.empty(len(ids), dtype=np.int32)
    cluster[by_id] = reference.assign_clusters(unit, centroids)
    hardest = _key_order(primary, ids)  # the order both cuts read the sample in
    keys = _Sample(primary[hardest], ids[hardest], cluster[hardest], len(ids) / n)
    return Verdict(method, n, k=k, mean=mean, centroids=centroids, score_sum=score_sum, rows_received=received), keys


def _summary(load, part, seed: int, sample_size: int):
    """A part's row count, exact embedding and score sums, and its smallest `sample_size` draws
    of the seeded k-means sample (the draws alone)."""
    rows = load(part)
    ids = _ids(rows, "optidel")
    emb = reference.embedding_rows(rows[EMBEDDING], len(ids))
    score_sum = exact_mean.column_sums(np.asarray(rows[SCORE], dtype=np.float32).reshape(-1, 1))[0]
    draws = _sample_draws(ids, seed)
    if len(draws) > sample_size:
        draws = np.partition(draws, sample_size - 1)[:sample_size]
    return len(ids), exact_mean.column_sums(emb), score_sum, draws


def _sample_rows(load, part, seed: int, last_draw):
    """A part's rows drawn at or before `last_draw` (every row when None): their draws, ids,
    embeddings and hardness keys."""
    rows = load(part, (PATCH_ID, SCORE, EMBEDDING))
    ids = _ids(rows, "optidel")
    primary = _primary(rows, ids, "hardness")
    draws = _sample_draws(ids, seed)
    mine = np.flatnonzero(draws <= last_draw) if last_draw is not None else np.arange(len(ids))
    emb = reference.embedding_rows(np.asarray(rows[EMBEDDING])[mine], len(mine))
    return draws[mine], ids[mine], emb, primary[mine]


def _sample_draws(ids: np.ndarray, seed: int) -> np.ndarray:
    return np.array([seeding.derive(seed, "kmeans-sample", i) for i in ids.tolist()], dtype=np.uint64)


def _pool_head(load, parts, run: Run, verdict: Verdict, sample: _Sample, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Round 2: the pool's first `count` keys in hardness order. Parts send their keys only up
    to a cut read off the sample, as the shortlists do (_cut): a head that came back shorter
    than `count` (and than the pool) was cut too soon, and is fetched again with a cut twice as
    far."""
    queue = (sample.primary, sample.ids)
    reach = 1
    while True:
        cut = _cut(queue, sample.share, reach * count)
        verdict.head_fetches += 1
        heads = run(_head, [(load, part, verdict.method, "hardness", count, cut) for part in parts])
        _, primary, ids = _first_keys(_tally(heads, verdict.rows_received, "head", lambda head: len(head[2])), count)
        if cut is None or len(ids) >= min(count, verdict.n):
            return primary, ids
        reach *= 2


def _head(load, part, method: str, by, count: int, cut: Key | None = None):
    """A part's row count and its first `count` keys in the `by` order, at or before `cut`
    (None: no cut)."""
    rows = load(part)
    ids = _ids(rows, method)
    primary = _primary(rows, ids, by)
    first = _key_order(primary, ids)[:count]
    if cut is not None:
        first = first[_at_or_before(primary[first], ids[first], cut)]
    return len(ids), primary[first], ids[first]


def _first_keys(heads: Iterable, count: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The parts' heads folded as they arrive: the rows in all, and the pool's first `count` keys."""
    n, primary, ids = 0, None, None
    for batch in _batched(heads, lambda head: len(head[2]), count):
        n += sum(rows for rows, _, _ in batch)
        kept = [] if primary is None else [(primary, ids)]  # keeps the keys' dtype (uint64 draws)
        primary, ids = (np.concatenate(column) for column in zip(*kept, *((p, i) for _, p, i in batch)))
        first = _key_order(primary, ids)[:count]
        primary, ids = primary[first], ids[first]
    return n, primary, ids


def _batched(results: Iterable, rows: Callable, capacity: int) -> Iterator[list]:
    """The results in batches of at least `capacity` rows (the last may hold fewer). A merge
    that keeps `capacity` rows, folded a batch at a time, sorts O(rows received) in all; folded
    a result at a time, it would sort its `capacity` rows once per part: O(parts x capacity),
    quadratic in the pool when the capacity is a share of it (the budget)."""
    batch, held = [], 0
    for result in results:
        batch.append(result)
        held += rows(result)
        if held >= capacity:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def _shortlist_pieces(load, parts: Sequence, verdict: Verdict, lengths: dict[int, int], cuts: dict[int, Key | None], n_groups: int):
    """Round 3's map, over a group of parts: per group (a cluster for optidel, one group for hard),
    the piece of the group's shortlist these parts hold (_shortlist_rows); and, as the note, how
    many eligible rows they have in each group, and how many rows the pieces hold."""
    rows, totals = [], Counter()
    for part in parts:
        part_rows, part_totals = _shortlist_rows(load, part, verdict, lengths, cuts)
        rows.append(part_rows)
        totals.update(part_totals)
    columns = {name: np.concatenate([piece[name] for piece in rows]) for name in rows[0]}
    order = _key_order(columns["primary"], columns["id"])
    order = order[_first_per_group(columns["group"][order], lengths)]
    group = columns["group"][order]
    pieces = [{name: values[order[group == g]] for name, values in columns.items()} for g in range(n_groups)]
    return pieces, (dict(totals), len(order))


def _shortlist_rows(load, part, verdict: Verdict, lengths: dict[int, int], cuts: dict[int, Key | None]):
    """A part's piece of the shortlists: per group fetched (the keys of `lengths`), its first
    lengths[group] rows in hardness order past the noise tail and at or before cuts[group] (None:
    no cut), with their unit embeddings (optidel); and how many eligible rows it has per group."""
    rows = load(part)
    ids = _ids(rows, verdict.method)
    primary = _primary(rows, ids, "hardness")
    unit = _unit(rows, ids, verdict)
    cluster = reference.assign_clusters(unit, verdict.centroids)
    group = cluster if verdict.method == "optidel" else np.zeros(len(ids), dtype=np.int32)
    eligible = np.ones(len(ids), dtype=bool)
    if verdict.last_trimmed is not None:
        eligible = ~_at_or_before(primary, ids, verdict.last_trimmed)
    order = _key_order(primary, ids)
    order = order[eligible[order]]
    totals = dict(zip(*np.unique(group[order], return_counts=True)))
    sent = np.zeros(len(ids), dtype=bool)
    for g, cut in cuts.items():
        rows_of = np.flatnonzero(group == g)
        sent[rows_of] = True if cut is None else _at_or_before(primary[rows_of], ids[rows_of], cut)
    order = order[sent[order]]
    rows_kept = order[_first_per_group(group[order], lengths)]
    columns = {
        "id": ids[rows_kept],
        "source": np.asarray(rows[SOURCE_ID], dtype=object)[rows_kept],
        "primary": primary[rows_kept],
        "cluster": cluster[rows_kept],
        "group": group[rows_kept],
    }
    if verdict.method == "optidel":  # hard needs no embedding: it has no near-duplicate rule
        columns["unit"] = unit[rows_kept]
    return columns, {int(g): int(c) for g, c in totals.items()}


def group_queue(length: int, threshold: float | None, capacity: int, skipped: Sequence[int], *pieces: dict) -> dict:
    """Round 3's reduce, one group: its pieces merged, in hardness order, cut to `length` rows;
    for optidel, with each row's near-duplicate decisions (select.speculate_queue: near, blocks,
    borderline) in place of the embeddings, which stay here. Run again by _Speculated with the
    rows the per-source cap skipped."""
    pieces = [piece for piece in pieces if len(piece["id"])]
    if not pieces:
        return {}
    columns = {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}
    order = _key_order(columns["primary"], columns["id"])[:length]
    queue = {name: values[order] for name, values in columns.items()}
    if threshold is not None:
        queue["near"], queue["blocks"], queue["borderline"] = reference.speculate_queue(
            queue.pop("unit"), threshold, capacity, skipped
        )
    return queue


class _Shortlists:
    """Round 3 in the driver: each group's shortlist without its embeddings (group_queue's
    result), the references of the pieces it was merged from (for its queue to be worked out
    again), and the guards the round-robin asks."""

    def __init__(self, run: Run, threshold: float | None, capacity: int):
        self.run, self.threshold, self.capacity = run, threshold, capacity
        self.lengths: dict[int, int] = {}
        self.queues: dict[int, dict] = {}
        self.pieces: dict[int, list] = {}
        self.worked_again = 0

    def merge(self, lengths: dict[int, int], pieces: list[list], received: dict[str, int]) -> None:
        """The groups of `lengths`, fetched again: each merged from its pieces of every map."""
        groups = list(lengths)
        self.pieces.update({g: [of_map[g] for of_map in pieces] for g in groups})
        self.lengths.update(lengths)
        calls = [(lengths[g], self.threshold, self.capacity, (), *self.pieces[g]) for g in groups]
        for g, queue in zip(groups, _tally(self.run(group_queue, calls), received, "shortlists", lambda q: len(q.get("id", ())))):
            self.queues[g] = queue

    def length(self, group: int) -> int:
        return len(self.queues[group].get("id", ()))

    def in_hardness_order(self) -> dict:
        """Every group's shortlist, merged in hardness order (as the in-memory selector reads its
        eligible rows)."""
        queues = [queue for queue in self.queues.values() if queue]
        names = ("id", "source", "primary", "cluster", "group")
        columns = {name: np.concatenate([queue[name] for queue in queues]) for name in names}
        order = _key_order(columns["primary"], columns["id"])
        return {name: values[order] for name, values in columns.items()}

    def guard(self, cluster: int, queue, capacity: int) -> _Speculated:
        return _Speculated(self.queues[cluster], partial(self._again, cluster))

    def _again(self, group: int, skipped: list[int]) -> dict:
        self.worked_again += 1
        call = (self.lengths[group], self.threshold, self.capacity, tuple(skipped), *self.pieces[group])
        return next(iter(self.run(group_queue, [call])))


class _Speculated:
    """A cluster's near-duplicate guard in the round-robin over the parts: the answers a task
    worked out down its whole shortlist (group_queue), worked out again, with the rows the
    per-source cap skipped so far, whenever a skip may have changed the next one asked
    (select.speculate_queue says when)."""

    def __init__(self, queue: dict, again: Callable[[list[int]], dict]):
        self.queue, self.again = queue, again
        self.skipped: list[int] = []
        self.stale = False  # a skipped row blocked a later one: every later answer may differ
        self.shifted = False  # a skipped row blocked none: later borderline answers may differ

    def near_at(self, position: int) -> bool:
        if self.stale or self.shifted and self.queue["borderline"][position]:
            self.queue = self.again(self.skipped)
            self.stale = self.shifted = False
        return bool(self.queue["near"][position])

    def keep(self, position: int) -> None:
        """As the task assumed."""

    def skip(self, position: int) -> None:
        self.skipped.append(position)
        if self.stale:
            return  # worked out again before the next answer anyway
        if self.shifted and self.queue["borderline"][position]:
            self.stale = True  # whether the task kept it is itself in doubt
        elif not self.queue["near"][position]:  # the task kept it: the round-robin does not
            self.stale = bool(self.queue["blocks"][position])
            self.shifted = not self.stale


def _sample_queues(sample: _Sample, verdict: Verdict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per group, the keys of the sample's eligible rows (past the noise tail) in hardness order."""
    order = np.arange(len(sample.ids))  # the sample is in hardness order
    if verdict.last_trimmed is not None:
        order = order[~_at_or_before(sample.primary, sample.ids, verdict.last_trimmed)]
    group = sample.cluster[order] if verdict.method == "optidel" else np.zeros(len(order), dtype=np.int32)
    return {int(g): (sample.primary[order[group == g]], sample.ids[order[group == g]]) for g in np.unique(group).tolist()}


def _cut(queue: tuple[np.ndarray, np.ndarray] | None, share: float, length: int) -> Key | None:
    """The key a group's fetch stops at (None: none): its eligible sample row (queue) at about
    CUT_MARGIN times the sample's rows among the group's first `length` eligible rows."""
    if share >= 1 or queue is None:  # the sample is the pool, or holds none of the group: no estimate
        return None
    primary, ids = queue
    at = math.ceil(CUT_MARGIN * share * length) + CUT_SLACK
    return (primary[at], ids[at]) if at < len(ids) else None


def _draw_cut(rows: float, pool: int | None) -> Key | None:
    """The draw key at or before which about `rows` of a pool of `pool` uniform 64-bit draws
    fall (None: no cut, the pool unknown or no larger)."""
    if not pool or rows >= pool:
        return None
    # With the id "": the draws below the value (no id is empty, so none equal to it passes).
    return (np.uint64(min(int(rows / pool * 2**64), 2**64 - 1)), "")


def _tally(results: Iterable, received: dict[str, int], name: str, rows: Callable) -> Iterator:
    """The results, passed on as they arrive, adding rows(result) to received[name]."""
    received.setdefault(name, 0)
    for result in results:
        received[name] += rows(result)
        yield result


def _decide(short: dict, budget: int, config, method: str, guard) -> tuple[dict[int, int], np.ndarray]:
    """The in-memory selector's choice on the merged shortlist (in hardness order): how far it
    read each group, and each row's reason (DROP_BUDGET: not decided)."""
    n = len(short["id"])
    selected = np.zeros(n, dtype=bool)
    reason = np.full(n, schema.DROP_BUDGET, dtype=object)
    hardest_first = np.arange(n)
    if method == "optidel":
        looked = reference.take_round_robin(
            hardest_first, short["cluster"], short["source"], None, budget, config, selected, reason, guard
        )
    else:
        looked = {0: reference.take_hardest(hardest_first, short["source"], budget, config.per_source_cap, selected, reason)}
    return looked, reason


def _first_per_group(groups: np.ndarray, lengths: dict[int, int]) -> np.ndarray:
    """Positions (in the given order) of each group's first lengths[group] rows."""
    by_group = np.argsort(groups, kind="stable")
    ordered = groups[by_group]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(groups) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(groups)])
    within = np.arange(len(groups)) - np.repeat(starts, sizes)  # each row's place in its group
    limit = np.repeat([lengths[g] for g in ordered[starts].tolist()], sizes)
    return np.sort(by_group[within < limit])


def _first_length(budget: int, groups: int) -> int:
    """A first shortlist per group: twice an even share of the budget, plus room for the rows
    the per-source cap and the near-duplicate rule skip; fetched again when too short."""
    return 2 * math.ceil(budget / groups) + 16


def key_sample(load, parts: Sequence, method: str, by, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The keys of some parts' rows in the `by` order at `count` evenly spaced places of their
    own order (at most one per row), each with its weight: the rows from it to the next."""
    primary, ids = (np.concatenate(column) for column in zip(*_part_keys(load, parts, method, by)))
    order = _key_order(primary, ids)
    places = np.unique(np.arange(count) * len(ids) // count) if len(ids) else np.zeros(0, np.int64)
    return primary[order[places]], ids[order[places]], np.diff(np.r_[places, len(ids)])


def range_bounds(samples: Iterable, ranges: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ranges - 1 keys (ascending, maybe repeated) that cut the pool into `ranges` ranges
    of about equal rows, from the groups' key_sample: the sampled keys where the weight up to
    them first reaches each multiple of a range's share. Range r holds the keys after r bounds
    (range_of): any bounds give exact ranks, these only balance the ranges."""
    primary, ids, weight = (np.concatenate(column) for column in zip(*samples))
    if not len(ids):
        return primary, ids
    order = _key_order(primary, ids)
    reached = np.cumsum(weight[order])
    at = np.searchsorted(reached, np.arange(1, ranges) * reached[-1] / ranges)
    at = order[np.minimum(at, len(order) - 1)]
    return primary[at], ids[at]


def range_of(primary: np.ndarray, ids: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Each row's range: how many bounds come before its key (a row equal to a bound comes first)."""
    return _count_before(primary, ids, *bounds)


def range_pieces(load, parts: Sequence, method: str, by, bounds: tuple[np.ndarray, np.ndarray], ranges: int) -> tuple[list[dict], np.ndarray]:
    """The map of the sort: some parts' keys, with where each row is (its part's place in
    `parts`, its position in the part), as one piece per range in part and row order; and the
    rows per range."""
    keys = _part_keys(load, parts, method, by)
    primary, ids = (np.concatenate(column) for column in zip(*keys))
    part = np.repeat(np.arange(len(parts), dtype=np.int32), [len(i) for _, i in keys])
    position = np.concatenate([np.arange(len(i), dtype=np.int32) for _, i in keys])
    where = range_of(primary, ids, bounds)
    order = np.argsort(where, kind="stable")
    cuts = np.searchsorted(where[order], np.arange(ranges + 1))
    pieces = [
        {"primary": primary[rows], "id": ids[rows], "part": part[rows], "position": position[rows]}
        for rows in (order[a:b] for a, b in zip(cuts[:-1], cuts[1:]))
    ]
    return pieces, np.bincount(where, minlength=ranges)


def range_offsets(counts: Iterable[np.ndarray]) -> np.ndarray:
    """Per range, the rows of every earlier range, from each map's rows per range."""
    rows = np.sum(list(counts), axis=0, dtype=np.int64)
    return np.r_[0, np.cumsum(rows)[:-1]]


def ranked_range(offset: int, *pieces: dict) -> list[dict]:
    """The reduce of the sort: one range's rows from every map, ranked offset + their place in
    the range's (primary, id) order; returned as pieces aligned with the maps' own (where each
    row is, and its int32 rank, as select.hardness_rank's)."""
    primary = np.concatenate([piece["primary"] for piece in pieces])
    ids = np.concatenate([piece["id"] for piece in pieces])
    rank = np.empty(len(ids), dtype=np.int32)
    rank[_key_order(primary, ids)] = offset + np.arange(len(ids))
    ranks = np.split(rank, np.cumsum([len(piece["id"]) for piece in pieces])[:-1])
    return [{"part": piece["part"], "position": piece["position"], "rank": r} for piece, r in zip(pieces, ranks)]


def part_ranks(n_parts: int, *pieces: dict) -> list[np.ndarray]:
    """The int32 pool ranks of the rows of a map's n_parts parts, one array per part aligned with
    its rows, from the ranked_range pieces of every range for that map."""
    part = np.concatenate([piece["part"] for piece in pieces])
    position = np.concatenate([piece["position"] for piece in pieces])
    rank = np.concatenate([piece["rank"] for piece in pieces])
    by_part = np.argsort(part, kind="stable")
    cuts = np.cumsum(np.bincount(part, minlength=n_parts))[:-1]
    ranks = []
    for rows in np.split(by_part, cuts):
        ranked = np.empty(len(rows), dtype=np.int32)
        ranked[position[rows]] = rank[rows]
        ranks.append(ranked)
    return ranks


def _part_keys(load, parts: Sequence, method: str, by) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each part's (primary, id) keys in the `by` order, read from their columns alone."""
    columns = (_id_column(method),) + ((SCORE,) if by == "hardness" else ())
    keys = []
    for part in parts:
        rows = load(part, columns)
        ids = _ids(rows, method)
        keys.append((_primary(rows, ids, by), ids))
    return keys


def _count_before(primary, ids, other_primary, other_ids) -> np.ndarray:
    """Per row, how many of the other rows precede it (a row and another of the same key: the row
    first)."""
    is_other = np.r_[np.zeros(len(ids), dtype=np.int64), np.ones(len(other_ids), dtype=np.int64)]
    order = _key_order(np.concatenate([primary, other_primary]), np.concatenate([ids, other_ids]))
    before = np.cumsum(is_other[order]) - is_other[order]
    counts = np.empty(len(order), dtype=np.int64)
    counts[order] = before
    return counts[: len(ids)]


def _unit(rows, ids, verdict: Verdict) -> np.ndarray:
    emb = reference.embedding_rows(rows[EMBEDDING], len(ids))
    return reference.centred_unit_rows(emb, verdict.mean)


def _id_column(method: str) -> str:
    return IMAGE_ID if method == "random" else PATCH_ID


def _ids(rows: dict, method: str) -> np.ndarray:
    return np.asarray(rows[_id_column(method)], dtype=object).astype(str)


def _primary(rows: dict, ids: np.ndarray, by) -> np.ndarray:
    """The first sort key of each row: minus its score (hardest first; checked finite, as in
    memory), or for ("draw", seed) its seeded hash (the `random` selector's draw order)."""
    if by == "hardness":
        scores = np.asarray(rows[SCORE], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            raise ValueError(f"scores: non-finite score for {ids[bad[0]]!r} ({bad.size} rows)")
        return -scores
    _, seed = by
    return np.array([seeding.derive(seed, "draw", i) for i in ids.tolist()], dtype=np.uint64)


def _key_order(primary: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row indices sorted by (primary, id), as select.hardness_rank orders them."""
    by_id = np.argsort(ids, kind="stable")
    return by_id[np.argsort(primary[by_id], kind="stable")]


def _at_or_before(primary: np.ndarray, ids: np.ndarray, key: Key) -> np.ndarray:
    first, last_id = key
    return (primary < first) | ((primary == first) & (ids <= last_id))
