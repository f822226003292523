"""The patch selectors' choice, made by Ray tasks over the pass-1 parts (stages/select_parts.py)
instead of in the driver: which rows of each part compete, the chosen rows and their sources
(all the plan holds of the pool), and patches.parquet's pieces, labelled by tasks, as the
in-memory barrier labels its rows; each row's rank from a sort by ranges (ranks.py). `random`,
which chooses whole images: image_selection.py."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Iterator

import numpy as np
import pyarrow as pa

from ..manifests import schema
from ..stages import columns as C
from ..stages import select_parts
from ..stages.id_table import IdTable
from . import raydata, spool
from .config import Config
from .duplicates import Duplicates
from .partitions import MASK_COLUMNS, PartStore, part_groups, patch_masks
from .ranks import PoolRanks, pool_ranks


class CompetingPatches:
    """load(p): the patch rows of part p whose source competes (select_parts.PART_COLUMNS), in
    the part's order. A source competes when it is ok and no duplicate; each task reads its
    part's own statuses, and the duplicates travel as their listing positions alone."""

    def __init__(self, store: PartStore, duplicates: Duplicates):
        self.store = store
        self.duplicates = duplicates

    def __call__(self, partition: int, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        return self.with_sources(partition, columns or select_parts.PART_COLUMNS)[0]

    def with_sources(self, partition: int, columns: tuple[str, ...], source_columns: tuple[str, ...] = ()) -> tuple[dict, dict]:
        """The `columns` of part `partition`'s competing patch rows, and the `source_columns` of
        its source rows (every source, competing or not), from one read of the part."""
        # The source decides whether a patch competes, even when `columns` leaves it out.
        part = self.store.read(partition, columns=tuple(dict.fromkeys((*columns, *source_columns, *COMPETES_COLUMNS))))
        is_patch = part[C.PATCH_INDEX] >= 0
        keep = np.zeros(len(is_patch), dtype=bool)
        keep[is_patch] = self.competes(part)
        return {name: part[name][keep] for name in columns}, {name: part[name][~is_patch] for name in source_columns}

    def competes(self, part: dict[str, np.ndarray]) -> np.ndarray:
        """Which of a part's patch rows (PATCH_INDEX >= 0, in order) compete, from its
        COMPETES_COLUMNS: by listing position, not id, since a duplicate's patches carry its
        original's ids."""
        is_patch = part[C.PATCH_INDEX] >= 0
        ok = part[C.INPUT_INDEX][~is_patch & (part[C.STATUS] == schema.OK)]
        position = part[C.INPUT_INDEX][is_patch]
        return np.isin(position, ok) & (self.duplicates.at(position) < 0)


# What CompetingPatches.competes reads of a part.
COMPETES_COLUMNS = (C.PATCH_INDEX, C.INPUT_INDEX, C.STATUS)


@dataclass
class ChosenPatches:
    """A patch selector's choice over the parts: the verdict (for_labels), every competing row's
    rank (kept in the object store, for the labels), the chosen rows' plan columns
    (select.columns.BARRIER_PATCH_COLUMNS less the embedding, plus cluster and rank), and their
    sources' rows (C.SOURCE_COLUMNS: what pass 2 reads), each in part order."""

    load: CompetingPatches
    verdict: select_parts.Verdict
    ranks: PoolRanks
    rows: dict[str, np.ndarray]
    sources: dict[str, np.ndarray]


def choose_patches(store: PartStore, duplicates: Duplicates, budget: int, config: Config) -> ChosenPatches:
    load = CompetingPatches(store, duplicates)
    parts = list(range(store.n_partitions))
    # select_parts' run(fn, calls): its results, the size of the budget together, through files.
    run = partial(spool.run_through_files, output=store.output, config=config.ray)
    split = partial(raydata.split, config=config.ray)  # and its split(map_fn, calls, buckets)
    verdict = select_parts.select_patches_in_parts(
        load, parts, run, split, budget=budget, config=config.select, method=config.selector, seed=config.seed,
        groups=part_groups(len(parts)),
    )
    ranks = pool_ranks(load, parts, config.selector, "hardness", config.ray)
    chosen = verdict.chosen
    clusters = IdTable(chosen.get("id", []), cluster=chosen.get("cluster", np.zeros(0, np.int32)))
    rows, sources = zip(*run(_chosen_rows, [(load, group, clusters, *ranks.of(g)) for g, group in enumerate(ranks.groups)]))
    return ChosenPatches(load, verdict.for_labels(), ranks, C.concat(list(rows)), C.concat(list(sources)))


def _chosen_rows(load: CompetingPatches, group: list[int], clusters: IdTable, *rank_pieces) -> tuple[dict, dict]:
    """The plan columns of the chosen patches of the parts in `group`, with their cluster and
    rank (from the group's ranked pieces), and the source rows they come from: one read of each
    part."""
    columns = tuple(name for name in C.BARRIER_PATCH_COLUMNS if name != C.EMBEDDING)
    rows, sources = [], []
    for partition, rank in zip(group, select_parts.part_ranks(len(group), *rank_pieces)):
        part, found = load.with_sources(partition, (*columns, C.INPUT_INDEX), C.SOURCE_COLUMNS)
        at = clusters.find(part[C.PATCH_ID])
        keep = at >= 0
        chosen = {name: part[name][keep] for name in columns}
        chosen["cluster"] = clusters.column("cluster", at[keep]).astype(np.int32)
        chosen["rank"] = rank[keep]
        rows.append(chosen)
        sources.append(C.take(found, np.isin(found[C.INPUT_INDEX], part[C.INPUT_INDEX][keep])))
    return C.concat(rows), C.concat(sources)


@dataclass
class PatchLabels:
    """What patches.parquet's writer needs to label every patch of every part by tasks: the
    choice, and the plan's word on the chosen rows (id -> selected, reason, sample_key, slot)."""

    chosen: ChosenPatches
    plan_rows: IdTable  # the chosen rows: selected, reason, sample_key, slot
    config: Config

    def manifest_pieces(self, store: PartStore) -> Iterator[pa.Table]:
        """patches.parquet's rows, one table per part in part order, each group of parts
        labelled by a task, through the spool: the driver holds one part's piece at a time."""
        chosen = self.chosen
        calls = [(store, chosen.load, chosen.verdict, self.plan_rows, group, *chosen.ranks.of(g))
                 for g, group in enumerate(chosen.ranks.groups)]
        yield from spool.run_spooled(_labelled_pieces, calls, store.output, self.config.ray)


def _labelled_pieces(store: PartStore, load: CompetingPatches, verdict: select_parts.Verdict, plan_rows: IdTable,
                     group: list[int], *rank_pieces) -> list[pa.Table]:
    """The patches.parquet rows of the parts in `group`, as the in-memory barrier labels them."""
    selections = select_parts.parts_selection(load, group, verdict, select_parts.part_ranks(len(group), *rank_pieces))
    columns = tuple(name for name in C.BARRIER_PATCH_COLUMNS if name != C.EMBEDDING)
    pieces = []
    for partition, selection in zip(group, selections):
        part = store.read(partition, columns=tuple(dict.fromkeys((*COMPETES_COLUMNS, *columns, *MASK_COLUMNS))))
        is_patch = part[C.PATCH_INDEX] >= 0
        rows = {name: part[name][is_patch] for name in columns}
        rows[C.MASK_RLE] = patch_masks(part)
        n = len(rows[C.PATCH_ID])
        competing = load.competes(part)
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
        found = plan_rows.find(rows[C.PATCH_ID])
        planned = competing & (found >= 0)
        at = found[planned]
        selected[planned], slot[planned] = plan_rows.column("selected", at), plan_rows.column("slot", at)
        reason[planned] = plan_rows.column("reason", at).tolist()
        sample_key[planned] = plan_rows.column("sample_key", at).tolist()
        rows.update(cluster=cluster, rank=rank, selected=selected, reason=reason, sample_key=sample_key, slot=slot)
        pieces.append(schema.to_table("patches", rows))
    return pieces

