"""The selection barrier's choice, made by Ray tasks over the pass-1 parts (stages/select_parts.py)
instead of in the driver: which rows of each part compete; for `random`, each part's Selection;
for the patch selectors, the chosen rows (all the plan holds of the pool) and patches.parquet's
pieces, labelled by tasks, as the in-memory barrier labels its rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from ..manifests import schema
from ..stages import columns as C
from ..stages import select_parts
from ..stages.select import Selection
from . import raydata
from .config import Config
from .partitions import MASK_COLUMNS, PartStore, patch_masks


class CompetingPatches:
    """load(p): the patch rows of part p whose source competes (select_parts.PART_COLUMNS), in
    the part's order."""

    def __init__(self, store: PartStore, excluded: frozenset[int]):
        self.store = store
        # Listing positions whose patches never compete (a duplicate's patches carry its
        # original's ids, so the position, not the id, tells them apart).
        self.excluded = excluded

    def __call__(self, partition: int, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        columns = columns or select_parts.PART_COLUMNS
        # The source decides whether a patch competes, even when `columns` leaves it out.
        part = self.store.read(partition, columns=(C.PATCH_INDEX, *columns, *({C.INPUT_INDEX} - set(columns))))
        keep = part.pop(C.PATCH_INDEX) >= 0
        keep[keep] = self.competes(part[C.INPUT_INDEX][keep])
        return {name: part[name][keep] for name in columns}

    def competes(self, input_indices: np.ndarray) -> np.ndarray:
        if not self.excluded:
            return np.ones(len(input_indices), dtype=bool)
        return ~np.isin(input_indices, list(self.excluded))


class OkSources:
    """load(p): the ok source rows of part p (whole-image selectors), less the listing positions
    found to be duplicates, in the part's order."""

    def __init__(self, store: PartStore, duplicates: frozenset[int], scored: bool):
        self.store = store
        self.duplicates = duplicates  # input_index of sources not ok after duplicate marking
        self.scored = scored

    def __call__(self, partition: int, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        # Always all of them: the rows are few (one per source), and `columns` names no other.
        part = self.store.read(partition, columns=(C.INPUT_INDEX, C.STATUS, C.SOURCE_ID) + ((C.PATCH_INDEX, C.SCORE) if self.scored else ()))
        keep = part[C.STATUS] == schema.OK
        if self.scored:
            keep &= part[C.PATCH_INDEX] < 0
        if self.duplicates:
            keep &= ~np.isin(part[C.INPUT_INDEX], list(self.duplicates))
        return {name: part[name][keep] for name in (C.SOURCE_ID, C.SCORE) if name in part}


def select_images(load, store: PartStore, budget: int, config: Config, scored: bool) -> list[Selection]:
    """`random` over the parts: each part's Selection, in part order (whole images: a row per
    ok source, which the driver holds anyway as the sources table)."""
    parts = list(range(store.n_partitions))
    run = _runner(config)
    verdict = select_parts.select_images_in_parts(load, parts, run, budget=budget, method=config.selector, seed=config.seed)
    labelled = run(select_parts.parts_selection, [(load, parts, g, verdict, config.seed, scored) for g in _groups(parts)])
    return [selection for group in labelled for selection in group]


@dataclass
class ChosenPatches:
    """A patch selector's choice over the parts: the verdict, and the chosen rows' plan columns
    (select.columns.BARRIER_PATCH_COLUMNS less the embedding, plus cluster and rank), in part order."""

    load: CompetingPatches
    verdict: select_parts.Verdict
    rows: dict[str, np.ndarray]


def choose_patches(store: PartStore, excluded: frozenset[int], budget: int, config: Config) -> ChosenPatches:
    load = CompetingPatches(store, excluded)
    parts = list(range(store.n_partitions))
    run = _runner(config)
    verdict = select_parts.select_patches_in_parts(
        load, parts, run, budget=budget, config=config.select, method=config.selector, seed=config.seed
    )
    chosen = verdict.chosen
    rank = select_parts.ranks_in_pool(load, parts, run, config.selector, chosen["primary"], chosen["id"]) if chosen else []
    labels = {i: (c, r) for i, c, r in zip(chosen.get("id", ()), chosen.get("cluster", ()), rank)}
    rows = C.concat(list(run(_chosen_rows, [(load, p, labels) for p in parts])))
    return ChosenPatches(load, verdict, rows)


def _chosen_rows(load: CompetingPatches, partition: int, labels: dict) -> dict[str, np.ndarray]:
    """The plan columns of part `partition`'s chosen patches, with their cluster and rank."""
    columns = tuple(name for name in C.BARRIER_PATCH_COLUMNS if name != C.EMBEDDING)
    part = load(partition, columns)
    keep = np.array([i in labels for i in part[C.PATCH_ID].tolist()], dtype=bool)
    rows = {name: part[name][keep] for name in columns}
    chosen = [labels[i] for i in rows[C.PATCH_ID].tolist()]
    rows["cluster"] = np.array([c for c, _ in chosen], dtype=np.int32)
    rows["rank"] = np.array([r for _, r in chosen], dtype=np.int32)
    return rows


@dataclass
class PatchLabels:
    """What patches.parquet's writer needs to label every patch of every part by tasks: the
    choice, and the plan's word on the chosen rows (id -> selected, reason, sample_key, slot)."""

    chosen: ChosenPatches
    plan_rows: dict[str, tuple]
    config: Config


def manifest_pieces(store: PartStore, labels: PatchLabels) -> Iterator[pa.Table]:
    """patches.parquet's rows, one table per part in part order, each labelled by a task: the
    driver holds one group's pieces at a time."""
    parts = list(range(store.n_partitions))
    for pieces in _runner(labels.config)(_labelled_pieces, [(store, labels, parts, g) for g in _groups(parts)]):
        yield from pieces


def _labelled_pieces(store: PartStore, labels: PatchLabels, parts: list[int], group: list[int]) -> list[pa.Table]:
    """The patches.parquet rows of the parts in `group`, as the in-memory barrier labels them."""
    load = labels.chosen.load
    selections = select_parts.parts_selection(load, parts, group, labels.chosen.verdict, labels.config.seed)
    columns = tuple(name for name in C.BARRIER_PATCH_COLUMNS if name != C.EMBEDDING)
    pieces = []
    for partition, selection in zip(group, selections):
        # MASK_COLUMNS hold INPUT_INDEX: whether a row competes is decided by its listing position.
        part = store.read(partition, columns=tuple(dict.fromkeys((C.PATCH_INDEX, *columns, *MASK_COLUMNS))))
        is_patch = part[C.PATCH_INDEX] >= 0
        rows = {name: part[name][is_patch] for name in columns}
        rows[C.MASK_RLE] = patch_masks(part)
        n = len(rows[C.PATCH_ID])
        competing = load.competes(part[C.INPUT_INDEX][is_patch])
        cluster = np.full(n, -1, np.int32)
        rank = np.full(n, -1, np.int32)
        selected = np.zeros(n, bool)
        # A duplicate source's patches were proposed before duplicates were known; they never compete.
        reason = np.where(competing, "", schema.DROP_DUPLICATE_SOURCE).astype(object)
        cluster[competing], rank[competing], selected[competing], reason[competing] = (
            selection.cluster, selection.rank, selection.selected, selection.reason
        )
        sample_key = np.full(n, "", dtype=object)
        slot = np.full(n, -1, np.int64)
        for i, patch_id in enumerate(rows[C.PATCH_ID].tolist()):
            if competing[i] and patch_id in labels.plan_rows:
                selected[i], reason[i], sample_key[i], slot[i] = labels.plan_rows[patch_id]
        rows.update(cluster=cluster, rank=rank, selected=selected, reason=reason, sample_key=sample_key, slot=slot)
        pieces.append(schema.to_table("patches", rows))
    return pieces


def _runner(config: Config):
    def run(fn, calls):
        return raydata.run_tasks(fn, calls, config.ray)

    return run


def _groups(parts: list[int]) -> list[list[int]]:
    """Groups of about sqrt(P) parts: each group reads every part's keys once to rank its rows,
    so the pool's keys are read about sqrt(P) times, and a group holds about sqrt(P) parts."""
    size = max(1, math.isqrt(len(parts)))
    return [parts[start : start + size] for start in range(0, len(parts), size)]
