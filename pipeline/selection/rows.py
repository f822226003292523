"""The selection's rows in the pass-1 parts, for each unit: which rows of a part compete, the
engine's view of them (load), the chosen rows' plan columns and their sources (all the plan
holds of the pool), and patches.parquet's pieces, labelled by Ray tasks part by part.

A patch competes when its source is ok and no duplicate; an image is such a source, its row in
patches.parquet the whole image as its box. Each task reads its parts' own
statuses; the duplicates travel as their listing positions alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Iterator

import numpy as np
import pyarrow as pa

from ...manifests import schema
from ...stages import columns as C
from ...stages.id_table import IdTable, utf8
from .. import raydata
from ..config import Config
from ..partitions import MASK_COLUMNS, PartStore, part_groups, patch_masks
from . import engine, spool
from .duplicates import Duplicates
from .keys import EMBEDDING, ID, SCORE, SOURCE, rank_order
from .ranks import PoolRanks, pool_ranks, ranks_from_files
from .selectors import Selector

# What competes reads of a part.
COMPETES_COLUMNS = (C.PATCH_INDEX, C.INPUT_INDEX, C.STATUS)
PLAN_COLUMNS = tuple(name for name in C.BARRIER_PATCH_COLUMNS if name != C.EMBEDDING)  # a patch's plan row


# What a row's cap group (the engine's SOURCE) is made of: its source's id, and where a video
# frame sits in its video.
CAP_COLUMNS = (C.SOURCE_ID, C.URI, C.MEMBER, C.FRAME_TIME)


def cap_groups(sources: dict[str, np.ndarray], window_s: float) -> np.ndarray:
    """The per-source cap's group of each source row: an image is its own group; a video's
    frames share one per window of `window_s` seconds of the video (select.video_cap_window_s),
    so the cap spreads a selection along a video as it spreads one over images."""
    time = sources[C.FRAME_TIME].astype(np.float64)
    groups = np.asarray(sources[C.SOURCE_ID], dtype=object).copy()
    for i in np.flatnonzero(~np.isnan(time)).tolist():
        groups[i] = f"{sources[C.URI][i]}::{sources[C.MEMBER][i]}@{int(time[i] // window_s)}"
    return groups


class _Unit:
    """load(p): part p's competing rows in its order, by the engine's names (keys.ID, ...)."""

    id_column: str  # the part's column the engine's ID reads

    def __init__(self, store: PartStore, duplicates: Duplicates, selector: Selector, cap_window_s: float):
        self.store, self.selector = store, selector
        # Their listing positions alone: every task over the parts is handed the unit, and the ids
        # the duplicates repeat (sources.parquet's) were 9 in 10 of its bytes.
        self.duplicate_positions = duplicates.positions
        self.cap_window_s = cap_window_s

    def __call__(self, partition: int, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        columns = columns or ((ID, SOURCE, SCORE, EMBEDDING) if self.selector.needs_scores else (ID, SOURCE))
        names = {ID: self.id_column, SCORE: C.SCORE, EMBEDDING: C.EMBEDDING}
        wanted = tuple(dict.fromkeys(names[name] for name in columns if name != SOURCE))
        if SOURCE in columns:
            rows, groups = self.with_cap_groups(partition, wanted)
        else:
            rows, groups = self.rows(partition, wanted), None
        return {name: groups if name == SOURCE else rows[names[name]] for name in columns}


class Patches(_Unit):
    id_column = C.PATCH_ID

    def rows(self, partition: int, columns: tuple[str, ...]) -> dict:
        return self.with_sources(partition, columns, ())[0]

    def with_cap_groups(self, partition: int, columns: tuple[str, ...]) -> tuple[dict, np.ndarray]:
        rows, sources = self.with_sources(partition, (*columns, C.INPUT_INDEX), (C.INPUT_INDEX, *CAP_COLUMNS))
        group_of = dict(zip(sources[C.INPUT_INDEX].tolist(), cap_groups(sources, self.cap_window_s)))
        return rows, np.array([group_of[i] for i in rows[C.INPUT_INDEX].tolist()], dtype=object)

    def with_sources(self, partition: int, columns: tuple[str, ...], source_columns: tuple[str, ...]) -> tuple[dict, dict]:
        """The `columns` of the part's competing patch rows, and the `source_columns` of its source
        rows (every source, competing or not), from one read of the part."""
        part = self.store.read(partition, columns=tuple(dict.fromkeys((*columns, *source_columns, *COMPETES_COLUMNS))))
        is_patch = part[C.PATCH_INDEX] >= 0
        keep = np.zeros(len(is_patch), dtype=bool)
        keep[is_patch] = self.competes(part)
        return {name: part[name][keep] for name in columns}, {name: part[name][~is_patch] for name in source_columns}

    def competes(self, part: dict[str, np.ndarray]) -> np.ndarray:
        """Which of a part's patch rows (PATCH_INDEX >= 0, in order) compete: by listing position,
        not id, since a duplicate's patches carry its original's ids."""
        is_patch = part[C.PATCH_INDEX] >= 0
        ok = part[C.INPUT_INDEX][~is_patch & (part[C.STATUS] == schema.OK)]
        position = part[C.INPUT_INDEX][is_patch]
        return np.isin(position, ok) & ~np.isin(position, self.duplicate_positions)

    def chosen(self, partition: int, keep_ids: IdTable) -> tuple[dict, dict, np.ndarray]:
        """The plan rows of the part's competing patches, their sources' rows, and where each is
        in `keep_ids` (-1: not chosen)."""
        rows, sources = self.with_sources(partition, (*PLAN_COLUMNS, C.INPUT_INDEX), C.SOURCE_COLUMNS)
        at = keep_ids.find(rows[C.PATCH_ID])
        chosen_sources = C.take(sources, np.isin(sources[C.INPUT_INDEX], rows[C.INPUT_INDEX][at >= 0]))
        return {name: rows[name] for name in PLAN_COLUMNS}, chosen_sources, at

    def manifest(self, partition: int) -> tuple[dict, np.ndarray]:
        """Every patch row of the part, with its mask, and which compete."""
        part = self.store.read(partition, columns=tuple(dict.fromkeys((*COMPETES_COLUMNS, *PLAN_COLUMNS, *MASK_COLUMNS))))
        is_patch = part[C.PATCH_INDEX] >= 0
        rows = {name: part[name][is_patch] for name in PLAN_COLUMNS}
        rows[C.MASK_RLE] = patch_masks(part)
        return rows, self.competes(part)


class Images(_Unit):
    id_column = C.SOURCE_ID

    def rows(self, partition: int, columns: tuple[str, ...]) -> dict:
        rows = self.store.source_rows(partition, tuple(dict.fromkeys((*columns, C.INPUT_INDEX, C.STATUS))))
        keep = (rows[C.STATUS] == schema.OK) & ~np.isin(rows[C.INPUT_INDEX], self.duplicate_positions)
        return {name: rows[name][keep] for name in columns}

    def with_cap_groups(self, partition: int, columns: tuple[str, ...]) -> tuple[dict, np.ndarray]:
        rows = self.rows(partition, tuple(dict.fromkeys((*columns, *CAP_COLUMNS))))
        return rows, cap_groups(rows, self.cap_window_s)

    def chosen(self, partition: int, keep_ids: IdTable) -> tuple[dict, dict, np.ndarray]:
        images = self.rows(partition, self._columns(C.SOURCE_COLUMNS))
        at = keep_ids.find(images[C.SOURCE_ID])
        return self._image_rows(images), C.take({name: images[name] for name in C.SOURCE_COLUMNS}, at >= 0), at

    def manifest(self, partition: int) -> tuple[dict, np.ndarray]:
        images = self.rows(partition, self._columns((C.SOURCE_ID, C.WIDTH, C.HEIGHT)))
        rows = self._image_rows(images)
        rows[C.MASK_RLE] = pa.nulls(len(images[C.SOURCE_ID]), schema.MASK_RLE)
        return rows, np.ones(len(images[C.SOURCE_ID]), dtype=bool)

    def _columns(self, columns: tuple[str, ...]) -> tuple[str, ...]:
        return (*columns, C.SCORE) if self.selector.needs_scores else columns

    def _image_rows(self, images: dict) -> dict:
        """The images' patch rows: the whole image as the box, its own score when scored, and
        sentinels in the other columns the proposer and the proxy fill."""
        n = len(images[C.SOURCE_ID])
        rows = C.sentinel_columns(schema.filled_by("patches", schema.PROPOSE, schema.SCORE), n)
        rows.update({C.PATCH_ID: np.array([f"{sid[:16]}-img" for sid in images[C.SOURCE_ID]], dtype=object),
                     C.SOURCE_ID: images[C.SOURCE_ID], "x0": np.zeros(n, np.int64), "y0": np.zeros(n, np.int64),
                     "x1": images[C.WIDTH], "y1": images[C.HEIGHT]})
        if self.selector.needs_scores:
            rows[C.SCORE] = images[C.SCORE]
        return rows


@dataclass
class Chosen:
    """A selector's choice over the parts: the verdict (for_labels), and every competing row's
    rank (in files under OUT/work/ranks, for the labels and pass 2: ranks.py)."""

    unit: Patches | Images
    verdict: engine.Verdict
    ranks: PoolRanks


def choose(store: PartStore, duplicates: Duplicates, selector: Selector, budget: int, competing_images: int,
           config: Config) -> tuple[Chosen, dict[str, np.ndarray]]:
    """The choice, and what the plan holds of each chosen row (_plan_keys), in part order: the
    rest of its row and its source's, what pass 2 reads, stay in the parts (plan.pass_two_rows)."""
    unit = (Patches if selector.unit == "patch" else Images)(store, duplicates, selector, config.select.video_cap_window_s)
    parts = list(range(store.n_partitions))
    # The engine's run(fn, calls): its results, the size of the budget together, through files.
    run = partial(spool.run_through_files, output=store.output, config=config.ray)
    verdict = engine.choose(
        unit, parts, run, partial(raydata.split, config=config.ray), budget=budget, selector=selector,
        config=config.select, seed=config.seed, pool=competing_images, groups=part_groups(len(parts)),
    )
    ranks = pool_ranks(unit, parts, rank_order(selector, config.seed), store.output, config.ray)
    keys = run(_plan_keys, [(unit, group, verdict.chosen, *ranks.of(g)) for g, group in enumerate(ranks.groups)])
    return Chosen(unit, verdict.for_labels(), ranks), C.concat(list(keys))


def _plan_keys(unit: Patches | Images, group: list[int], keep_ids: IdTable, *rank_files) -> dict:
    """What the plan holds of the chosen rows of the parts in `group`, fixed-width (about 120 B a
    row, its ids as UTF-8 bytes): the engine's id (keys.ID), patch and source ids, score, cluster
    and rank."""
    rows, _ = chosen_rows(unit, group, keep_ids, *rank_files)
    return {ID: utf8(rows[unit.id_column]), C.PATCH_ID: utf8(rows[C.PATCH_ID]), C.SOURCE_ID: utf8(rows[C.SOURCE_ID]),
            **{name: rows[name] for name in (C.SCORE, "cluster", "rank")}}


def chosen_rows(unit: Patches | Images, group: list[int], keep_ids: IdTable, *rank_files) -> tuple[dict, dict]:
    """The plan rows of the chosen rows of the parts in `group` (`keep_ids`: by the engine's id,
    with their cluster), with their cluster and rank (from the group's ranked pieces), and the
    source rows they come from, each in part order: one read of each part."""
    rows, sources = [], []
    for partition, rank in zip(group, ranks_from_files(len(group), *rank_files)):
        part_rows, part_sources, at = unit.chosen(partition, keep_ids)
        keep = at >= 0
        picked = C.take(part_rows, keep)
        picked["cluster"] = keep_ids.column("cluster", at[keep]).astype(np.int32)
        picked["rank"] = rank[keep]
        rows.append(picked)
        sources.append(part_sources)
    return C.concat(rows), C.concat(sources)


def manifest_pieces(chosen: Chosen, plan_rows: IdTable, sample_keys: np.ndarray, store: PartStore, config: Config) -> Iterator[pa.Table]:
    """patches.parquet's rows, one table per part in part order, each group of parts labelled by
    a task, given the plan's word on the chosen rows (`plan_rows`: the engine's id -> selected,
    sample, slot; `sample_keys`: each sample's key); through the spool: the driver holds one
    part's piece at a time."""
    calls = [(chosen.unit, chosen.verdict, plan_rows, sample_keys, group, *chosen.ranks.of(g))
             for g, group in enumerate(chosen.ranks.groups)]
    yield from spool.run_spooled(_labelled_pieces, calls, store.output, config.ray)


def _labelled_pieces(unit: Patches | Images, verdict: engine.Verdict, plan_rows: IdTable, sample_keys: np.ndarray,
                     group: list[int], *rank_files) -> list[pa.Table]:
    """The patches.parquet rows of the parts in `group`."""
    pieces = []
    for partition, selection in zip(group, engine.parts_selection(unit, group, verdict, ranks_from_files(len(group), *rank_files))):
        rows, competing = unit.manifest(partition)
        n = len(rows[C.PATCH_ID])
        cluster, rank, selected = np.full(n, -1, np.int32), np.full(n, -1, np.int32), np.zeros(n, bool)
        # A duplicate source's patches were proposed before duplicates were known; they never compete.
        reason = np.where(competing, "", schema.DROP_DUPLICATE_SOURCE).astype(object)
        cluster[competing], rank[competing], selected[competing], reason[competing] = (
            selection.cluster, selection.rank, selection.selected, selection.reason
        )
        sample_key, slot = np.full(n, "", dtype=object), np.full(n, -1, np.int64)
        found = plan_rows.find(rows[unit.id_column])
        planned = competing & (found >= 0)
        at = found[planned]
        selected[planned], slot[planned] = plan_rows.column("selected", at), plan_rows.column("slot", at)
        # A chosen row the plan did not select was left over by the grouping into full mosaics.
        reason[planned] = np.where(selected[planned], "", schema.DROP_INCOMPLETE_GROUP).tolist()
        in_sample = plan_rows.column("sample", at)
        sample_key[np.flatnonzero(planned)[in_sample >= 0]] = np.char.decode(sample_keys[in_sample[in_sample >= 0]], "utf-8").tolist()
        rows.update(cluster=cluster, rank=rank, selected=selected, reason=reason, sample_key=sample_key, slot=slot)
        pieces.append(schema.to_table("patches", rows))
    return pieces
