"""Every competing row's rank in the pool (its place in the hardness order, or the seeded draw),
by a sort on Ray over the pass-1 parts (stages/select_parts.py's rank steps), so that no task
reads the pool's keys and the driver holds no row of it.

Map tasks, one per group of parts (partitions.part_groups), first send a sample of their keys,
from which the driver takes the bounds of as many ranges as groups; then they send each row's
key, and where the row is, to its range, and count the rows per range. The driver sums the
counts into each range's offset (the rows of every earlier range); one reduce task per range
sorts its keys and ranks them, in one piece per group, which stay in the object store until the
group's task (choosing or labelling its parts' rows) takes them: each part's keys are read
twice, a reduce holds about a group's keys, and the driver holds the sample, the bounds, the
counts (groups x ranges) and the pieces' references (2 x groups x ranges: about 2 per part)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..stages import select_parts
from . import raydata
from .config import RayConfig
from .partitions import part_groups

SAMPLE_PER_RANGE = 4  # a map's sampled keys per range: bounds within about a quarter range


@dataclass
class PoolRanks:
    """The parts in groups, and the references of each group's ranked pieces, one per range
    (select_parts.part_ranks turns them into each part's ranks)."""

    groups: list[list]
    pieces: list[list]  # [range][group]

    def of(self, group: int) -> tuple:
        """The references to pass, as arguments, to the task of groups[group]."""
        return tuple(pieces[group] for pieces in self.pieces)


def pool_ranks(load, parts: Sequence, method: str, by, config: RayConfig) -> PoolRanks:
    """The ranks of the competing rows of `parts` (load(part), as select_parts reads them), in
    the `by` order ("hardness", or ("draw", seed))."""
    groups = [[parts[i] for i in group] for group in part_groups(len(parts))]
    ranges = len(groups)
    if not ranges:
        return PoolRanks([], [])
    samples = raydata.run_tasks(
        select_parts.key_sample, [(load, group, method, by, SAMPLE_PER_RANGE * ranges) for group in groups], config
    )
    bounds = select_parts.range_bounds(samples, ranges)
    calls = [(load, group, method, by, bounds, ranges) for group in groups]

    def offsets(counts):
        return [(int(offset),) for offset in select_parts.range_offsets(counts)]

    pieces = raydata.shuffle_kept(
        select_parts.range_pieces, calls, select_parts.ranked_range, offsets, ranges, len(groups), config
    )
    return PoolRanks(groups, pieces)
