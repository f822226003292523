"""The selection over the pass-1 parts, never holding the pool: one implementation for every
selector, driven by its traits (selectors.py).

The caller hands over the parts as opaque handles, `load(part, columns=None)` giving a part's
competing rows (keys.ID, SOURCE, SCORE, EMBEDDING; rows.py), `run(fn, calls)`, which yields
fn(*call) for each call in order (in this process or as Ray tasks), and `split`, a shuffle's map
half (Split). Each result is folded into a running merge as it arrives, so the caller holds
O(budget + clusters x dim + sample) whatever the number of parts, and no embedding of the
shortlists; what it receives is counted per round (Verdict.rows_received).

1. summary (scored selectors): rows and exact score and embedding sums (stages/exact_mean.py);
   for clustered ones, the seeded sample k-means trains on, the first `kmeans_sample` rows by
   hash of (seed, id): each part sends its smallest hashes alone, their merge gives the sample's
   last hash, and a shuffle sends each part's rows up to it to one task, which trains the
   centroids and returns the sample's keys and clusters alone. A sample that covers the pool
   is the pool, in id order: the centroids do not depend on how the pool was split.
2. head: the pool's first n_trim + budget keys in the order, each part sending its keys up to a
   cut read off the sample, fetched again further when it came too soon. It gives the last
   trimmed key (a "window" order's noise tail) and the last key a pick by the order alone would
   reach (the quota labels); a selector with no rule between rows is its head.
3. shortlists: per group (a cluster when the selector has quotas, else one group) its first
   eligible rows, by a shuffle: a map task per group of parts sends each group's rows, up to a
   cut key read off the sample (_cut), to that group's task, which merges its shortlist and
   works out the near-duplicate decisions down all of it (round_robin.speculate_queue). The
   driver gets the shortlists without embeddings and runs the round-robin: only the per-source
   cap and the budget join the groups. When the cap skips a row the task kept, and that row may
   have changed a later decision, the task works its queue out again (_Speculated). A group cut
   too soon is fetched again with a cut twice as far; one the round-robin ran to the end of, twice
   as long. Then every row it looked at, and every decision, is what a selection holding the
   whole pool would make (tests/selection_reference.py). The driver holds the shortlists as
   fixed-width columns, about 44 B a row (group_queue), and no Python object per row.
4. parts_selection labels every row of some parts (cluster, rank, selected, reason) from the
   verdict and the parts' ranks (ranks.py).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from optidel import seeding

from ...manifests import schema
from ...stages import columns as C
from ...stages import exact_mean
from ...stages.id_table import IdTable, utf8
from . import embeddings
from .keys import (
    EMBEDDING, ID, SCORE, SOURCE, Key, at_or_before, ids_of, key_order, order_of, part_keys, primary, source_digests,
    split_by,
)
from .round_robin import speculate_queue, take_round_robin
from .selectors import Selector

Run = Callable[[Callable, list[tuple]], Iterable]
# split(map_fn, calls, buckets): a shuffle's map half. Runs map_fn(*call) -> (pieces, note) for
# each call, pieces[b] for bucket b; returns (per call, its pieces, as handles `run` takes for
# arguments: on Ray, object references the driver never fetches) and (the notes, in call order).
Split = Callable[[Callable, list[tuple], int], tuple[list[list], list]]


@dataclass
class Selection:
    """One part's rows as the selection labels them, aligned with its rows."""

    selected: np.ndarray  # bool
    cluster: np.ndarray  # int32, -1 when not clustered
    rank: np.ndarray  # int32: the place in the pool's rank order (keys.rank_order)
    reason: np.ndarray  # object (str): a schema.DROP_* value, "" when selected


@dataclass
class Verdict:
    """What the caller holds after the rounds and each part's rows are decided from."""

    selector: Selector
    by: object  # the order (keys.order_of)
    n: int  # competing rows in the pool
    k: int = 0  # clusters (0: not clustered)
    mean: np.ndarray | None = None  # the pool's exact embedding mean (clustered selectors)
    centroids: np.ndarray | None = None
    last_trimmed: Key | None = None  # rows up to this key are the noise tail ("window" order)
    last_in_reach: Key | None = None  # rows up to this key a pick by the order alone would take (quotas)
    decided: IdTable = field(default_factory=lambda: IdTable([], reason=[]))  # the rows decided: reason ("" = selected)
    chosen: IdTable = field(default_factory=lambda: _chosen([], []))  # the selected rows, with their cluster
    score_sum: int | None = None  # exact sum of the scores (exact_mean units) of a scored pool
    fetches: int = 0  # shortlist rounds it took (1 when no group was fetched again), recuts included
    recut: int = 0  # of those, rounds that fetched again groups whose cut came too soon
    head_fetches: int = 0  # round 2's rounds of tasks (1 unless its cut came too soon)
    worked_again: int = 0  # groups' near-duplicate decisions worked out again (_Speculated)
    rows_to_groups: int = 0  # round 3's rows (with embeddings) the maps sent the group tasks, every fetch
    # Rows the driver received, per round: "draws" (round 1, a hash each), "sample" (round 1,
    # a key and a cluster each), "head" (round 2, a key each), "shortlists" (round 3, without embeddings).
    rows_received: dict[str, int] = field(default_factory=dict)

    def for_labels(self) -> Verdict:
        """The verdict as patches.parquet's labelling tasks take it, where the plan's own word on
        the chosen rows (selected, reason) replaces the verdict's: without the chosen rows, and of
        the rows decided, the refused alone. Every task maps it whole: a few per cent of the
        budget's rows, not all of them twice."""
        refused = self.decided.columns["reason"] != b""
        return replace(self, chosen=_chosen([], []), decided=IdTable(self.decided.ids[refused], reason=self.decided.columns["reason"][refused]))


def _chosen(ids, cluster) -> IdTable:
    return IdTable(ids, cluster=np.asarray(cluster, dtype=np.int32))


@dataclass
class _Sample:
    """The k-means sample's rows in the order (keys and clusters), and its share of the pool: where
    the head's and the shortlists' cuts are read."""

    primary: np.ndarray
    ids: np.ndarray  # UTF-8 bytes: numpy's unicode took 256 B a row for a 64-character source id
    cluster: np.ndarray
    share: float


# A group's cut is its eligible sample row at ceil(CUT_MARGIN x share x length) + CUT_SLACK. The
# sample's rows among the group's first `length` are hypergeometric, of mean share x length; the
# cut comes too soon only when they pass its place. With 1.5 and 8 the Chernoff bound on that is
# at most about 1e-3 for any mean (below 1e-12 for a mean of 300): a recut round is rare, while
# the driver receives about 1.5 x the shortlists plus 8 / share rows a group.
CUT_MARGIN = 1.5
CUT_SLACK = 8


def choose(
    load, parts: Sequence, run: Run, split: Split, *, budget: int, selector: Selector, config, seed: int,
    pool: int = 0, groups: Sequence[Sequence] | None = None, shortlist: int | None = None,
) -> Verdict:
    """Rounds 1 to 3. `pool`: the competing rows (read for an unscored selector only); `groups`:
    the parts each of round 3's map tasks reads (default: one each); `shortlist`: each group's
    first fetch length (default: sized by the budget)."""
    by = order_of(selector, seed)
    if selector.needs_scores:
        verdict, sample = _summarised(load, parts, run, split, selector, by, config, seed)
    else:
        verdict, sample = Verdict(selector, by, pool), None
    if verdict.n == 0:
        return verdict
    n_trim = int(config.trim_top_frac * verdict.n) if selector.order == "window" else 0
    if selector.head_is_choice or n_trim or selector.quotas:
        keys, ids = _pool_head(load, parts, run, verdict, sample, n_trim + budget)
        if n_trim:
            verdict.last_trimmed = (keys[n_trim - 1], ids[n_trim - 1].decode())
        if selector.quotas and budget and len(ids) > n_trim:
            verdict.last_in_reach = (keys[-1], ids[-1].decode())
        if selector.head_is_choice:
            verdict.decided = IdTable(ids, reason=np.full(len(ids), "", dtype=object))
            verdict.chosen = _chosen(ids, np.full(len(ids), -1, np.int32))
            return verdict
        del keys, ids  # a noise tail and a budget of keys (O(pool)): not held through round 3
    n_groups = max(verdict.k, 1) if selector.quotas else 1
    # A first shortlist per group: twice an even share of the budget, plus room for the rows the
    # per-source cap and the near-duplicate rule skip; fetched again when too short.
    lengths = dict.fromkeys(range(n_groups), shortlist or 2 * math.ceil(budget / n_groups) + 16)
    threshold = config.near_duplicate_cosine if selector.near_duplicates else None
    shortlists = _Shortlists(run, threshold, -(-budget // n_groups))
    queues = _sample_queues(sample, verdict)
    share = None if sample is None else sample.share
    del sample  # its rows live on in the queues, each in its group's: held once through round 3
    reach = dict.fromkeys(lengths, 1)  # how far past the estimate each group's cut goes
    pending = list(lengths)
    calls = [[part] for part in parts] if groups is None else [list(group) for group in groups]
    while True:
        cuts = {g: _cut(queues.get(g), share, reach[g] * lengths[g]) for g in pending}
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
        merged = shortlists.laid_out()
        n = len(merged["group"])
        selected = np.zeros(n, dtype=bool)
        reason = _reasons(n, schema.DROP_BUDGET)
        cap = config.per_source_cap if selector.per_source_cap else None
        looked = take_round_robin(np.arange(n), merged["group"], merged[SOURCE], budget, cap, selected, reason, shortlists.guard)
        short = {g: lengths[g] for g in totals if totals[g] > lengths[g] and looked.get(g, 0) >= lengths[g]}
        if not short:
            decided = reason != schema.DROP_BUDGET
            verdict.decided = IdTable(shortlists.column(ID, decided), reason=reason[decided])
            verdict.worked_again = shortlists.worked_again
            verdict.chosen = _chosen(shortlists.column(ID, selected), shortlists.column("cluster", selected))
            return verdict
        lengths.update({g: 2 * length for g, length in short.items()})
        pending = list(short)


def parts_selection(load, parts: Sequence, verdict: Verdict, ranks: Sequence[np.ndarray]) -> list[Selection]:
    """Round 4 for some parts: each part's rows labelled (one Selection per part, aligned with its
    rows), given ranks[i], the pool ranks of parts[i]'s rows (ranks.part_ranks)."""
    selections = []
    for part, rank in zip(parts, ranks, strict=True):
        rows = load(part)
        ids = ids_of(rows)
        if len(rank) != len(ids):
            raise ValueError(f"part {part!r}: {len(rank)} ranks for {len(ids)} rows")
        reason = _reasons(len(ids), schema.DROP_BUDGET)
        cluster, _ = _clusters(rows, ids, verdict)
        labelled_by_key = verdict.last_in_reach is not None or verdict.last_trimmed is not None
        keys = primary(rows, ids, verdict.by) if labelled_by_key else None
        if verdict.last_in_reach is not None:
            reason[at_or_before(keys, ids, verdict.last_in_reach)] = schema.DROP_QUOTA
        found = verdict.decided.find(ids)
        mine = found >= 0
        reason[mine] = verdict.decided.column("reason", found[mine]).tolist()
        if verdict.last_trimmed is not None:
            reason[at_or_before(keys, ids, verdict.last_trimmed)] = schema.DROP_OUTLIER
        selections.append(Selection(reason == "", cluster, rank, reason))
    return selections


def _summarised(load, parts, run: Run, split: Split, selector: Selector, by, config, seed: int) -> tuple[Verdict, _Sample | None]:
    """Round 1: the pool's size, score sum and mean embedding; for a clustered selector, the
    centroids trained on the seeded sample, and the sample's keys and clusters."""
    size = config.kmeans_sample if selector.clusters else 0
    received: dict[str, int] = {}
    n, sums, score_sum, draws = 0, None, 0, np.zeros(0, dtype=np.uint64)
    summaries = run(_summary, [(load, part, seed, size) for part in parts])
    for rows, part_sums, part_score_sum, part_draws in tally(summaries, received, "draws", lambda summary: len(summary[3])):
        n += rows
        sums = part_sums if sums is None else exact_mean.add_sums(sums, part_sums)
        score_sum += part_score_sum
        draws = _smallest(np.r_[draws, part_draws], size)
    verdict = Verdict(selector, by, n, score_sum=score_sum, rows_received=received)
    if n == 0 or not selector.clusters:
        return verdict, None
    # The sample is the first `size` rows by (draw, id): every row of a draw below the size-th
    # smallest, and some of those of that draw (more rows than one may share it). One task trains
    # on them: the caller receives the sample's keys and clusters, never its embeddings (100 MB
    # at the default 200k rows, several times that while merged).
    last_draw = draws.max() if n > size else None
    pieces, _ = split(_sample_rows, [(load, part, seed, by, last_draw) for part in parts], 1)
    # A single row is left uncentred: it would be its own mean.
    verdict.mean = exact_mean.mean_of_sums(sums, n) if n > 1 else np.zeros(len(sums))
    verdict.k = min(config.clusters, n, size)  # the sample holds min(size, n) rows
    trained = run(_trained_sample, [(verdict.mean, verdict.k, size, seed, *(of_part[0] for of_part in pieces))])
    [(keys, ids, cluster, verdict.centroids)] = tally(trained, received, "sample", lambda result: len(result[1]))
    return verdict, _Sample(keys, ids, cluster, len(ids) / n)


def _summary(load, part, seed: int, sample_size: int):
    """A part's row count, exact embedding and score sums, and its smallest `sample_size` draws
    of the seeded k-means sample (the draws alone)."""
    rows = load(part)
    ids = ids_of(rows)
    emb = embeddings.embedding_rows(rows[EMBEDDING], len(ids))
    primary(rows, ids, "hardness")  # names a non-finite score before it is summed
    score_sum = exact_mean.column_sums(np.asarray(rows[SCORE], dtype=np.float32).reshape(-1, 1))[0]
    return len(ids), exact_mean.column_sums(emb), score_sum, _smallest(_sample_draws(ids, seed), sample_size)


def _sample_rows(load, part, seed: int, by, last_draw):
    """Round 1's map over a part: as its one piece, its rows drawn at or before `last_draw` (every
    row when None): their draws, ids, embeddings and keys in the order `by`; as the note, their count."""
    rows = load(part, (ID, SCORE, EMBEDDING))
    ids = ids_of(rows)
    keys = primary(rows, ids, by)
    draws = _sample_draws(ids, seed)
    mine = np.flatnonzero(draws <= last_draw) if last_draw is not None else np.arange(len(ids))
    emb = embeddings.embedding_rows(np.asarray(rows[EMBEDDING])[mine], len(mine))
    return [(draws[mine], ids[mine], emb, keys[mine])], len(mine)


def _trained_sample(mean: np.ndarray, k: int, size: int, seed: int, *pieces):
    """Round 1's sample task: the parts' drawn rows cut to the sample (the first `size` by
    (draw, id)), the centroids trained on it, and its rows' keys, ids and clusters in the order."""
    pieces = [piece for piece in pieces if len(piece[1])]  # a part with none drawn: its embeddings may have no width
    draws, ids, emb, keys = (np.concatenate(column) for column in zip(*pieces))
    first = key_order(draws, ids)[:size]
    ids, emb, keys = ids[first], emb[first], keys[first]
    by_id = np.argsort(ids, kind="stable")  # k-means++ reads its rows in id order
    unit = embeddings.centred_unit_rows(emb[by_id], mean)
    centroids = embeddings.train_centroids(unit, k, seed)
    cluster = np.empty(len(ids), dtype=np.int32)
    cluster[by_id] = embeddings.assign_clusters(unit, centroids)
    first = key_order(keys, ids)  # the order both cuts read the sample in
    return keys[first], utf8(ids[first]), cluster[first], centroids


def _sample_draws(ids: np.ndarray, seed: int) -> np.ndarray:
    return np.array([seeding.derive(seed, "kmeans-sample", i) for i in ids.tolist()], dtype=np.uint64)


def _smallest(draws: np.ndarray, size: int) -> np.ndarray:
    return np.partition(draws, size - 1)[:size] if len(draws) > size else draws


def _pool_head(load, parts, run: Run, verdict: Verdict, sample: _Sample | None, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Round 2: the pool's first `count` keys in the order, the ids as UTF-8 bytes (a noise tail
    and a budget of them: O(pool) rows in the driver). Parts send their keys only up to a cut
    (_cut): a head that came back shorter than `count` (and than the pool) was cut too soon, and
    is fetched again with a cut twice as far."""
    queue = (sample.primary, sample.ids) if sample is not None else None
    reach = 1
    while True:
        cut = _cut(queue, None if sample is None else sample.share, reach * count, verdict)
        verdict.head_fetches += 1
        heads = run(_head, [(load, part, verdict.by, count, cut) for part in parts])
        heads = tally(heads, verdict.rows_received, "head", lambda head: len(head[1]))
        keys, ids = None, None
        for batch in _batched(heads, lambda head: len(head[1]), count):  # the parts' heads, folded as they arrive
            kept = [] if keys is None else [(keys, ids)]  # keeps the keys' dtype (uint64 draws)
            keys, ids = (np.concatenate(column) for column in zip(*kept, *batch))
            first = key_order(keys, ids)[:count]
            keys, ids = keys[first], ids[first]
        if cut is None or len(ids) >= min(count, verdict.n):
            return keys, ids
        reach *= 2


def _head(load, part, by, count: int, cut: Key | None):
    """A part's first `count` keys in the `by` order, at or before `cut` (None: no cut)."""
    keys, ids = part_keys(load, part, by)
    first = key_order(keys, ids)[:count]
    if cut is not None:
        first = first[at_or_before(keys[first], ids[first], cut)]
    return keys[first], utf8(ids[first])


def _batched(results: Iterable, rows: Callable, capacity: int) -> Iterator[list]:
    """The results in batches of at least `capacity` rows (the last may hold fewer). A merge that
    keeps `capacity` rows, folded a batch at a time, sorts O(rows received) in all; folded a
    result at a time, it would sort its `capacity` rows once per part: O(parts x capacity),
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
    """Round 3's map over a group of parts: per group fetched, the parts' piece of its shortlist,
    their first lengths[group] rows in the order; as the note, their eligible rows per group, and
    the pieces' rows."""
    rows, totals = [], Counter()
    for part in parts:
        part_rows, part_totals = _shortlist_rows(load, part, verdict, cuts)
        rows.append(part_rows)
        totals.update(part_totals)
    columns = C.concat(rows)
    order = key_order(columns["primary"], columns[ID])
    by_group = split_by(columns["group"][order], n_groups)
    pieces = [C.take(columns, order[at[: lengths.get(g, 0)]]) for g, at in enumerate(by_group)]
    return pieces, (dict(totals), sum(len(piece[ID]) for piece in pieces))


def _shortlist_rows(load, part, verdict: Verdict, cuts: dict[int, Key | None]):
    """A part's rows for the shortlists: per group fetched, those past the noise tail at or before
    cuts[group] (None: no cut), with their unit rows when the near-duplicate rule needs them; and
    its eligible rows per group."""
    selector = verdict.selector
    rows = load(part)
    ids = ids_of(rows)
    keys = primary(rows, ids, verdict.by)
    cluster, unit = _clusters(rows, ids, verdict)
    group = cluster if selector.quotas else np.zeros(len(ids), dtype=np.int32)
    eligible = np.ones(len(ids), dtype=bool)
    if verdict.last_trimmed is not None:
        eligible = ~at_or_before(keys, ids, verdict.last_trimmed)
    totals = dict(zip(*np.unique(group[eligible], return_counts=True)))
    sent = np.zeros(len(ids), dtype=bool)
    for g, cut in cuts.items():
        rows_of = np.flatnonzero(group == g)
        sent[rows_of] = True if cut is None else at_or_before(keys[rows_of], ids[rows_of], cut)
    kept = np.flatnonzero(eligible & sent)
    columns = {
        ID: ids[kept],
        SOURCE: np.asarray(rows[SOURCE], dtype=object)[kept],
        "primary": keys[kept],
        "cluster": cluster[kept],
        "group": group[kept],
    }
    if selector.near_duplicates:
        columns["unit"] = unit[kept]
    return columns, {int(g): int(c) for g, c in totals.items()}


def group_queue(length: int, threshold: float | None, capacity: int, skipped: Sequence[int], *pieces: dict) -> dict:
    """Round 3's reduce, one group: its pieces merged in the order, cut to `length` rows; with the
    near-duplicate rule, each row's decisions (speculate_queue) in place of the unit rows, which
    stay here. Run again by _Speculated with the rows the per-source cap skipped. The driver holds
    what it returns for every row of every shortlist, so each column is fixed-width, about 44 B a
    row: its ids as UTF-8 bytes, the per-source cap's groups as 16-byte digests
    (keys.source_digests), clusters and decisions; of the keys, the first alone (its primary as a
    Python number), which places the group among the others."""
    pieces = [piece for piece in pieces if len(piece[ID])]
    if not pieces:
        return {}
    columns = {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}
    order = key_order(columns["primary"], columns[ID])[:length]
    if threshold is None:  # no near-duplicate rule: no row is near another
        near = blocks = borderline = np.zeros(len(order), dtype=bool)
    else:
        near, blocks, borderline = speculate_queue(columns["unit"][order], threshold, capacity, skipped)
    return {
        ID: utf8(columns[ID][order]),
        SOURCE: source_digests(columns[SOURCE][order]),
        "cluster": columns["cluster"][order].astype(np.int32),
        "near": near, "blocks": blocks, "borderline": borderline,
        "first": (columns["primary"][order[0]].item(), columns[ID][order[0]]),
    }


class _Shortlists:
    """Round 3 in the driver: each group's shortlist without embeddings (group_queue's result), the
    references of its pieces (to work its queue out again), and the round-robin's guards."""

    def __init__(self, run: Run, threshold: float | None, capacity: int):
        self.run, self.threshold, self.capacity = run, threshold, capacity
        self.lengths: dict[int, int] = {}
        self.queues: dict[int, dict] = {}
        self.pieces: dict[int, list] = {}
        self.layout: list[int] = []  # the groups in laid_out's order
        self.worked_again = 0

    def merge(self, lengths: dict[int, int], pieces: list[list], received: dict[str, int]) -> None:
        """The groups of `lengths`, fetched again: each merged from its pieces of every map."""
        groups = list(lengths)
        self.pieces.update({g: [of_map[g] for of_map in pieces] for g in groups})
        self.lengths.update(lengths)
        calls = [(lengths[g], self.threshold, self.capacity, (), *self.pieces[g]) for g in groups]
        self.queues.update(zip(groups, tally(self.run(group_queue, calls), received, "shortlists", lambda q: len(q.get(ID, ())))))

    def length(self, group: int) -> int:
        return len(self.queues[group].get(ID, ()))

    def laid_out(self) -> dict:
        """The shortlists laid out one group after another, the groups in the order of their first
        rows: each row's group and its cap group's digest, what the round-robin reads. Its turns
        and each group's queue are those of the shortlists merged in the order, without a merge."""
        self.layout = sorted((g for g, queue in self.queues.items() if queue), key=lambda g: self.queues[g]["first"])
        lengths = [self.length(g) for g in self.layout]
        return {
            "group": np.repeat(np.asarray(self.layout, dtype=np.int32), lengths),
            SOURCE: np.concatenate([self.queues[g][SOURCE] for g in self.layout] or [np.zeros(0, "S16")]),
        }

    def column(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Column `name` of the rows of laid_out's layout where `rows` (a mask over it) is set."""
        pieces, start = [], 0
        for g in self.layout:
            values = self.queues[g][name]
            pieces.append(values[rows[start : start + len(values)]])
            start += len(values)
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int32 if name == "cluster" else "S1")

    def guard(self, group: int, queue, capacity: int) -> _Speculated:
        return _Speculated(self.queues[group], partial(self._again, group))

    def _again(self, group: int, skipped: list[int]) -> dict:
        self.worked_again += 1
        call = (self.lengths[group], self.threshold, self.capacity, tuple(skipped), *self.pieces[group])
        return next(iter(self.run(group_queue, [call])))


class _Speculated:
    """A group's guard in the round-robin: the answers a task worked out down its shortlist, worked
    out again with the rows the cap skipped whenever a skip may have changed the next one asked."""

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


def _sample_queues(sample: _Sample | None, verdict: Verdict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per group, the keys of the sample's eligible rows (past the noise tail) in the order."""
    if sample is None:
        return {}
    order = np.arange(len(sample.ids))  # the sample is in the order
    if verdict.last_trimmed is not None:
        last_key, last_id = verdict.last_trimmed
        order = order[~at_or_before(sample.primary, sample.ids, (last_key, last_id.encode()))]
    group = sample.cluster[order] if verdict.selector.quotas else np.zeros(len(order), dtype=np.int32)
    return {int(g): (sample.primary[order[group == g]], sample.ids[order[group == g]]) for g in np.unique(group).tolist()}


def _cut(queue: tuple[np.ndarray, np.ndarray] | None, share: float | None, length: int, verdict: Verdict | None = None) -> Key | None:
    """The key a fetch of `length` rows stops at (None: none): the queue's sample row at about
    CUT_MARGIN times the sample's rows among the first `length`; without a sample, for the draw
    (uniform 64-bit hashes), the value below which about that many of the pool's rows fall."""
    if share is None:  # no sample
        rows = CUT_MARGIN * length + CUT_SLACK
        if verdict is None or verdict.by == "hardness" or rows >= verdict.n:
            return None
        # With the id "": the draws below the value (no id is empty, so none equal to it passes).
        return (np.uint64(min(int(rows / verdict.n * 2**64), 2**64 - 1)), "")
    if share >= 1 or queue is None:  # the sample is the pool, or holds none of the group: no estimate
        return None
    keys, ids = queue
    at = math.ceil(CUT_MARGIN * share * length) + CUT_SLACK
    return (keys[at], ids[at].decode()) if at < len(ids) else None


def tally(results: Iterable, received: dict[str, int], name: str, rows: Callable) -> Iterator:
    """The results, passed on as they arrive, adding rows(result) to received[name] (from 0)."""
    received.setdefault(name, 0)
    for result in results:
        received[name] += rows(result)
        yield result


def _reasons(n: int, reason: str) -> np.ndarray:
    """n rows of `reason`, one str object for all: np.full(n, reason, dtype=object) would make a
    str of every row (about 60 B a row: 43 MB over the shortlists at 16M candidate patches)."""
    rows = np.empty(n, dtype=object)
    rows[:] = reason
    return rows


def _clusters(rows, ids, verdict: Verdict) -> tuple[np.ndarray, np.ndarray | None]:
    """Each row's cluster (-1 when not clustered), and its unit row (None when not clustered)."""
    if not verdict.selector.clusters:
        return np.full(len(ids), -1, dtype=np.int32), None
    unit = embeddings.centred_unit_rows(embeddings.embedding_rows(rows[EMBEDDING], len(ids)), verdict.mean)
    return embeddings.assign_clusters(unit, verdict.centroids), unit
