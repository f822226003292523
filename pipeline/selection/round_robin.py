"""The round-robin over clusters and its near-duplicate rule: the step of the selection that joins
rows of the whole pool. The engine (engine.py) runs it in the driver over the clusters'
shortlists, with the near-duplicate decisions worked out by one task per cluster
(speculate_queue), so it never holds an embedding of the pool.
"""

from __future__ import annotations

import numpy as np

from ...manifests import schema
from .embeddings import CHUNK, chunks


def take_round_robin(eligible, cluster, sources, budget: int, cap: int | None, selected, reason, guard) -> dict[int, int]:
    """Quotas water-filled over the groups of `eligible` (row indices in the order; `cluster`: each
    row's group): each round every group with rows left takes its next acceptable one, so all get
    equal shares and one that runs out leaves the rest of the budget to the others. Groups take
    turns in the order of their first row; one whose row is refused offers its next in a further
    pass of the same round. A refused row stays refused: the selection only grows.

    The near-duplicate rule is per group (as SemDeDup's): a row is refused when its cosine to a
    kept row of its own group exceeds the threshold, so the check costs the sum of the squared
    group sizes, not budget^2 (two near-identical rows on either side of a cluster boundary may
    both be kept). `guard(g, queue, capacity)` gives group g's guard over its queue, room for
    `capacity` kept rows at first: near_at(position), then keep(position), or skip(position) for
    a row the per-source cap (`cap`, None: none) refused unchecked: a QueueGuard, or the engine's
    guards, whose answers tasks worked out (engine._Speculated).

    Returns how far it went down each group's queue (a queue cut short and run to its end could
    have gone on). The queues and the cap's counts are numpy arrays, not a Python object per
    row: the engine runs this in the driver over twice the budget's rows."""
    # The engine runs this in the driver over twice the budget's rows, so its working arrays are
    # built by one stable sort each, not np.unique's (a sorted copy, an inverse and a mask on top
    # of the sort): 34 B a row at their peak, where np.unique took about 65 B. First each group's
    # rows of `eligible`, in its order, the groups in the order of their first row.
    eligible = np.asarray(eligible)
    group = np.asarray(cluster)[eligible]
    by_group = np.argsort(group, kind="stable")
    ordered = group[by_group]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) else np.zeros(0, np.int64)
    groups, first = ordered[starts], by_group[starts]  # stable: a group's first row leads it
    del group, ordered
    split = np.split(eligible[by_group], starts[1:])
    queues = {int(groups[g]): split[g] for g in np.argsort(first, kind="stable").tolist()}
    del by_group, split
    position = dict.fromkeys(queues, 0)
    active = list(queues)
    # Each guard starts at an even share of the budget (at most its queue) and grows as needed.
    share = -(-budget // max(len(queues), 1))
    guards = {c: guard(c, q, min(len(q), share)) for c, q in queues.items()}
    # Rows of one source share a code (0 for the smallest source), as np.unique's inverse: the cap
    # counts codes.
    order = np.argsort(sources, kind="stable")
    ordered = np.asarray(sources)[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = ordered[1:] != ordered[:-1]
    del ordered
    source_code = np.empty(len(order), dtype=np.int32)
    source_code[order] = np.cumsum(new, dtype=np.int32) - 1
    del order, new
    taken = np.zeros(len(source_code) and source_code.max() + 1, dtype=np.int32)
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
                if cap is not None and taken[source_code[i]] >= cap:
                    reason[i] = schema.DROP_SOURCE_CAP
                    guards[c].skip(position[c] - 1)
                elif guards[c].near_at(position[c] - 1):
                    reason[i] = schema.DROP_DUPLICATE
                else:
                    guards[c].keep(position[c] - 1)
                    taken[source_code[i]] += 1
                    selected[i], reason[i] = True, ""
                    n_selected += 1
                    continue
                if position[c] < len(queues[c]):
                    still_owing.append(c)
            owing = still_owing
        active = [c for c in active if position[c] < len(queues[c])]
    return position


_LOOKAHEAD = 32  # queue rows a group checks in one product


class QueueGuard:
    """One group's guard: the kept unit vectors of its queue (row indices into `emb`), room for
    `capacity` at first, doubled when full, never beyond the queue. The queue is checked
    _LOOKAHEAD rows at a time against the rows kept, in one matrix product (each kept row read
    once per window, not once per row: a selection can keep millions), then a row only against
    those kept since. The windows sit at fixed queue positions, a short one padded, so a queue's
    prefix (a shortlist over the parts) makes the same products, to the bit."""

    def __init__(self, queue: list[int], emb: np.ndarray, capacity: int, threshold: float):
        self.kept = np.empty((max(capacity, 0), emb.shape[1]), dtype=np.float32)
        self.count = 0
        self.threshold = threshold
        self.queue, self.emb = queue, emb
        self.start = -1  # the current window: its first queue position,
        self.kept_then = 0  # how many were kept when it was checked,
        self.window = np.zeros(0, dtype=np.float32)  # and each row's largest cosine to those

    def near_at(self, position: int) -> bool:
        return self.cosine_at(position) > self.threshold

    def cosine_at(self, position: int) -> float:
        """The largest cosine of the queue's row at `position` to a kept vector (-inf when none
        is kept); once its window's value passes the threshold, that value."""
        start = position - position % _LOOKAHEAD
        if start != self.start:
            rows = self.queue[start : start + _LOOKAHEAD]
            batch = np.zeros((_LOOKAHEAD, self.emb.shape[1]), dtype=np.float32)
            batch[: len(rows)] = self.emb[rows]
            self.start, self.kept_then = start, self.count
            self.window = (self.kept[: self.count] @ batch.T).max(axis=0) if self.count else np.full(_LOOKAHEAD, -np.inf, np.float32)
        best = float(self.window[position - start])
        if best > self.threshold or self.count == self.kept_then:
            return best
        return max(best, float((self.kept[self.kept_then : self.count] @ self.emb[self.queue[position]]).max()))

    def keep(self, position: int) -> None:
        if self.count == len(self.kept):
            grown = np.empty((min(max(2 * len(self.kept), 1), len(self.queue)), self.kept.shape[1]), dtype=np.float32)
            grown[: self.count] = self.kept[: self.count]
            self.kept = grown
        self.kept[self.count] = self.emb[self.queue[position]]
        self.count += 1

    def skip(self, position: int) -> None:
        """The per-source cap refused the row at `position`: it is neither checked nor kept."""


# How close to the threshold a later refused row must come to a kept one for speculate_queue
# to call the kept one blocking: far wider than float32's rounding of a cosine (about 1e-6 at
# these widths), so that two products of the same rows in another order never disagree on it.
BLOCKS_MARGIN = 1e-4


def speculate_queue(emb: np.ndarray, threshold: float, capacity: int, skipped=()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One group's near-duplicate decisions down its whole queue (`emb`: its unit rows, in order),
    as take_round_robin makes them when every row found near no kept one is kept, but those at
    the `skipped` positions (refused unchecked by the per-source cap). Per position: `near`;
    `blocks` (kept here, and some later refused row comes within BLOCKS_MARGIN of the threshold
    to it); `borderline` (its largest cosine to the rows kept before it is that close).

    The round-robin may skip, by the cap, a row kept here. A blocking one can change a later
    decision: the queue is worked out again with it skipped. One that blocks none changes no
    decision, but the products then hold one row more than the round-robin's, whose rounding may
    move the last bit: a borderline row's answer is worked out again too. Otherwise the checks
    are the round-robin's own, by the same QueueGuard, at the same positions, against the same
    kept rows: its answers, to the bit."""
    n = len(emb)
    guard = QueueGuard(list(range(n)), emb, capacity, threshold)
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
    for rows in chunks(n, CHUNK * 4096 // max(len(refused), 1) or 1):  # about 16 MB of products
        keepers = np.flatnonzero(kept[rows]) + rows.start
        if len(keepers) and len(refused):
            close = (emb[keepers] @ emb[refused].T) > threshold - BLOCKS_MARGIN
            blocks[keepers] = (close & (refused[None, :] > keepers[:, None])).any(axis=1)
    return near, blocks, borderline
