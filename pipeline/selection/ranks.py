"""Every competing row's rank in the pool (its place in the hardness order, or the seeded draw), by
a sort on Ray over the pass-1 parts, so that no task reads the pool's keys and the driver holds
no row of it.

Map tasks, one per group of parts (partitions.part_groups), send a sample of their keys
(key_sample), from which the driver takes the bounds of as many ranges as groups (range_bounds);
then each row's key, and where the row is, to its range, counting the rows per range
(range_pieces). The driver sums the counts into each range's offset (range_offsets); a reduce
task per range sorts its keys and ranks them (ranked_range), in one piece per group, each
written to a file under OUT/work/ranks until the group's task reads it (ranks_from_files). Each
part's keys are read twice, a reduce holds about a group's keys, and the driver holds the
sample, the bounds, the counts and the pieces' paths: about 2 per part.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ...manifests.layout import WORK_DIR, Output
from .. import raydata
from ..config import RayConfig
from ..partitions import part_groups
from .keys import key_order, part_keys, split_by

SAMPLE_PER_RANGE = 4  # a map's sampled keys per range: bounds within about a quarter range
RANKS_DIR = f"{WORK_DIR}/ranks"


@dataclass
class PoolRanks:
    """The parts in groups, and the files of each group's ranked pieces, one per range
    (ranks_from_files turns them into each part's ranks)."""

    groups: list[list]
    paths: list[list[str]]  # [range][group]
    output: Output

    def of(self, group: int) -> tuple:
        """What to pass, as arguments, to the task of groups[group] for ranks_from_files."""
        return (self.output, *(paths[group] for paths in self.paths))

    def remove(self) -> None:
        """The pieces' files, once their last reader is done (patches.parquet written)."""
        remove_ranks(self.output)


def pool_ranks(load, parts: Sequence, by, output: Output, config: RayConfig) -> PoolRanks:
    """The ranks of the competing rows of `parts` (load(part), as the engine reads them), in
    the `by` order ("hardness", or ("draw", seed)); the pieces are written under OUT/work/ranks,
    replacing what an earlier plan (an interrupted run's) left there."""
    groups = [[parts[i] for i in group] for group in part_groups(len(parts))]
    ranges = len(groups)
    remove_ranks(output)
    if not ranges:
        return PoolRanks([], [], output)
    samples = raydata.run_tasks(key_sample, [(load, group, by, SAMPLE_PER_RANGE * ranges) for group in groups], config)
    bounds = range_bounds(samples, ranges)
    pieces, counts = raydata.split(range_pieces, [(load, group, by, bounds, ranges) for group in groups], ranges, config)
    reduces = [(output, r, int(offset), *(of_map[r] for of_map in pieces)) for r, offset in enumerate(range_offsets(counts))]
    return PoolRanks(groups, list(raydata.run_tasks(ranked_files, reduces, config)), output)


def remove_ranks(output: Output) -> None:
    if output.exists(RANKS_DIR):
        output.fs.rm(output.path(RANKS_DIR), recursive=True)


def key_sample(load, parts: Sequence, by, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The keys of some parts' rows in the `by` order at `count` evenly spaced places of their
    own order (at most one per row), each with its weight: the rows from it to the next."""
    primary, ids = (np.concatenate(column) for column in zip(*(part_keys(load, part, by) for part in parts)))
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
    keys = [part_keys(load, part, by) for part in parts]
    primary, ids = (np.concatenate(column) for column in zip(*keys))
    part = np.repeat(np.arange(len(parts), dtype=np.int32), [len(i) for _, i in keys])
    position = np.concatenate([np.arange(len(i), dtype=np.int32) for _, i in keys])
    where = range_of(primary, ids, bounds)
    pieces = [
        {"primary": primary[rows], "id": ids[rows], "part": part[rows], "position": position[rows]}
        for rows in split_by(where, ranges)
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


def ranked_files(output: Output, r: int, offset: int, *pieces: dict) -> list[str]:
    """The reduce as a task: ranked_range's pieces, each written to a file of RANKS_DIR; returns
    their paths. Returned as values, the pieces smaller than Ray's inline limit (100 KiB) would
    be held in the driver's own memory until the manifests are written: for an image selector,
    most of them, 12 B a competing row (+22 MiB at 16M candidate patches, `dedup`:
    benchmarks/scale.py)."""
    paths = []
    for g, piece in enumerate(ranked_range(offset, *pieces)):
        paths.append(f"{RANKS_DIR}/{r:06d}-{g:06d}.pickle")
        with output.open_atomic(paths[-1]) as f:
            pickle.dump(piece, f, protocol=pickle.HIGHEST_PROTOCOL)
    return paths


def ranks_from_files(n_parts: int, output: Output, *paths: str) -> list[np.ndarray]:
    """part_ranks, from a group's pieces as ranked_files wrote them (PoolRanks.of)."""
    pieces = []
    for path in paths:
        with output.fs.open(output.path(path), "rb") as f:
            pieces.append(pickle.load(f))
    return part_ranks(n_parts, *pieces)


def part_ranks(n_parts: int, *pieces: dict) -> list[np.ndarray]:
    """The int32 pool ranks of the rows of a map's n_parts parts, one array per part aligned with
    its rows, from the ranked_range pieces of every range for that map."""
    part = np.concatenate([piece["part"] for piece in pieces])
    position = np.concatenate([piece["position"] for piece in pieces])
    rank = np.concatenate([piece["rank"] for piece in pieces])
    ranks = []
    for rows in split_by(part, n_parts):
        ranked = np.empty(len(rows), dtype=np.int32)
        ranked[position[rows]] = rank[rows]
        ranks.append(ranked)
    return ranks


def range_of(primary: np.ndarray, ids: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Each row's range: how many bounds come before its key (a row equal to a bound comes first)."""
    other_primary, other_ids = bounds
    is_other = np.r_[np.zeros(len(ids), dtype=np.int64), np.ones(len(other_ids), dtype=np.int64)]
    order = key_order(np.concatenate([primary, other_primary]), np.concatenate([ids, other_ids]))
    before = np.cumsum(is_other[order]) - is_other[order]
    counts = np.empty(len(order), dtype=np.int64)
    counts[order] = before
    return counts[: len(ids)]

