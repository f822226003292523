"""The selection barrier's choice, made by Ray tasks over the pass-1 parts (stages/select_parts.py)
instead of in the driver: which rows of each part compete, and the per-part Selections in part
order, aligned with the rows the in-memory barrier hands its selector."""

from __future__ import annotations

import math

import numpy as np

from ..stages import columns as C
from ..stages import select_parts
from ..stages.select import Selection
from . import raydata
from .config import Config
from .partitions import PartStore


class CompetingPatches:
    """load(p): the patch rows of part p whose source competes (select_parts.PART_COLUMNS), in
    the part's order."""

    def __init__(self, store: PartStore, excluded_sources: frozenset[str]):
        self.store = store
        self.excluded_sources = excluded_sources  # patches of these sources never compete

    def __call__(self, partition: int, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        columns = columns or select_parts.PART_COLUMNS
        # The source decides whether a patch competes, even when `columns` leaves it out.
        part = self.store.read(partition, columns=(C.PATCH_INDEX, *columns, *({C.SOURCE_ID} - set(columns))))
        keep = part.pop(C.PATCH_INDEX) >= 0
        if self.excluded_sources:
            keep &= ~np.isin(part[C.SOURCE_ID], list(self.excluded_sources))
        return {name: part[name][keep] for name in columns}


class OkSources:
    """load(p): the ok source rows of part p (whole-image selectors), less the listing positions
    found to be duplicates, in the part's order."""

    def __init__(self, store: PartStore, duplicates: frozenset[int], scored: bool):
        self.store = store
        self.duplicates = duplicates  # input_index of sources marked duplicate
        self.scored = scored

    def __call__(self, partition: int, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        # Always all of them: the rows are few (one per source), and `columns` names no other.
        part = self.store.read(partition, columns=(C.INPUT_INDEX, C.STATUS, C.SOURCE_ID) + ((C.PATCH_INDEX, C.SCORE) if self.scored else ()))
        keep = part[C.STATUS] == "ok"
        if self.scored:
            keep &= part[C.PATCH_INDEX] < 0
        if self.duplicates:
            keep &= ~np.isin(part[C.INPUT_INDEX], list(self.duplicates))
        return {name: part[name][keep] for name in (C.SOURCE_ID, C.SCORE) if name in part}


def select(load, store: PartStore, budget: int, config: Config, whole_images: bool, scored: bool) -> list[Selection]:
    """Each part's Selection, in part order, from Ray tasks; the driver holds the verdict only
    (selected ids, thresholds, centroids)."""
    parts = list(range(store.n_partitions))

    def run(fn, calls):
        return raydata.run_tasks(fn, calls, config.ray)

    if whole_images:
        verdict = select_parts.select_images_in_parts(load, parts, run, budget=budget, method=config.selector, seed=config.seed)
    else:
        verdict = select_parts.select_patches_in_parts(
            load, parts, run, budget=budget, config=config.select, method=config.selector, seed=config.seed
        )
    # Groups of about sqrt(P) parts: each group reads every part's keys once to rank its rows,
    # so the pool's keys are read about sqrt(P) times, and a group holds about sqrt(P) parts.
    size = max(1, math.isqrt(len(parts)))
    groups = [parts[start : start + size] for start in range(0, len(parts), size)]
    labelled = run(select_parts.parts_selection, [(load, parts, group, verdict, config.seed, scored) for group in groups])
    return [selection for group in labelled for selection in group]
