"""Every competing row's rank in the pool (its place in the hardness order, or the seeded draw), by
a sort on Ray over the pass-1 parts, so that no task reads the pool's keys and the driver holds
no row of it.

Map tasks, one per group of parts (partitions.part_groups), send a sample of their keys
(key_sample), from which the driver takes the bounds of as many ranges as groups (range_bounds);
then each row's key, and where the row is, to its range, counting the rows per range
(range_pieces). The driver sums the counts into each range's offset (range_offsets); a reduce
task per range sorts its keys and ranks them (ranked_range), in one piece per group, kept in
the object store until the group's task takes them (part_ranks). Each part's keys are read
twice, a reduce holds about a group's keys, and the driver holds the sample, the bounds, the
counts and the pieces' references: about 2 per part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .. import raydata
from ..config import RayConfig
from ..partitions import part_groups
from .keys import ID, SCORE, ids_of, key_order
from .keys import primary as primary_of

SAMPLE_PER_RANGE = 4  # a map's sampled keys per range: bounds within about a quarter range


@dataclass
class PoolRanks:
    """The parts in groups, and the references of each group's ranked pieces, one per range
    (part_ranks turns them into each part's ranks)."""

    groups: list[list]
    pieces: list[list]  # [range][group]

    def of(self, group: int) -> tuple:
        """The references to pass, as arguments, to the task of groups[group]."""
        return tuple(pieces[group] for pieces in self.pieces)


def pool_ranks(load, parts: Sequence, by, config: RayConfig) -> PoolRanks:
    """The ranks of the competing rows of `parts` (load(part), as the engine reads them), in
    the `by` order ("hardness", or ("draw", seed))."""
    groups = [[parts[i] for i in group] for group in part_groups(len(parts))]
    ranges = len(groups)
    if not ranges:
        return PoolRanks([], [])
    samples = raydata.run_tasks(key_sample, [(load, group, by, SAMPLE_PER_RANGE * ranges) for group in groups], config)
    bounds = range_bounds(samples, ranges)
    calls = [(load, group, by, bounds, ranges) for group in groups]

    def offsets(counts):
        return [(int(offset),) for offset in range_offsets(counts)]

    pieces = raydata.shuffle_kept(range_pieces, calls, ranked_range, offsets, ranges, len(groups), config)
    return PoolRanks(groups, pieces)


def key_sample(load, parts: Sequence, by, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The keys of some parts' rows in the `by` order at `count` evenly spaced places of their
    own order (at most one per row), each with its weight: the rows from it to the next."""
    primary, ids = (np.concatenate(column) for column in zip(*_part_keys(load, parts, by)))
    order = key_order(primary, ids)
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
    order = key_order(primary, ids)
    reached = np.cumsum(weight[order])
    at = np.searchsorted(reached, np.arange(1, ranges) * reached[-1] / ranges)
    at = order[np.minimum(at, len(order) - 1)]
    return primary[at], ids[at]


def range_pieces(load, parts: Sequence, by, bounds: tuple[np.ndarray, np.ndarray], ranges: int) -> tuple[list[dict], np.ndarray]:
    """The map of the sort: some parts' keys, with where each row is (its part's place in
    `parts`, its position in the part), as one piece per range in part and row order; and the
    rows per range."""
    keys = _part_keys(load, parts, by)
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
    row is, and its int32 rank)."""
    primary = np.concatenate([piece["primary"] for piece in pieces])
    ids = np.concatenate([piece["id"] for piece in pieces])
    rank = np.empty(len(ids), dtype=np.int32)
    rank[key_order(primary, ids)] = offset + np.arange(len(ids))
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


def _part_keys(load, parts: Sequence, by) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each part's (primary, id) keys in the `by` order, read from their columns alone."""
    columns = (ID, SCORE) if by == "hardness" else (ID,)
    keys = []
    for part in parts:
        rows = load(part, columns)
        ids = ids_of(rows)
        keys.append((primary_of(rows, ids, by), ids))
    return keys


def range_of(primary: np.ndarray, ids: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Each row's range: how many bounds come before its key (a row equal to a bound comes first)."""
    other_primary, other_ids = bounds
    is_other = np.r_[np.zeros(len(ids), dtype=np.int64), np.ones(len(other_ids), dtype=np.int64)]
    order = key_order(np.concatenate([primary, other_primary]), np.concatenate([ids, other_ids]))
    before = np.cumsum(is_other[order]) - is_other[order]
    counts = np.empty(len(order), dtype=np.int64)
    counts[order] = before
    return counts[: len(ids)]

