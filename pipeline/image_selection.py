"""The whole-image selectors' rows: one patches.parquet row per ok source that is no duplicate,
the whole image as its box. In memory the barrier builds them for every image; for `random`
over the pass-1 parts, Ray tasks build them part by part: the chosen images and their sources
for the plan (all the driver holds of the pool), and patches.parquet's pieces."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Iterator

import numpy as np
import pyarrow as pa

from ..manifests import schema
from ..stages import columns as C
from ..stages import select_parts
from ..stages.compose import sample_key
from ..stages.id_table import IdTable
from . import spool
from .config import Config
from .duplicates import Duplicates
from .partitions import PartStore, part_groups
from .ranks import pool_ranks

IMAGE_COLUMNS = (C.INPUT_INDEX, C.SOURCE_ID, C.WIDTH, C.HEIGHT)  # what an image's row is made of


def image_rows(source_ids: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> dict[str, np.ndarray]:
    """The patch rows of these whole images: their boxes, and sentinels in every other column
    the proposer and the proxy fill."""
    n = len(source_ids)
    rows = C.sentinel_columns(schema.filled_by("patches", schema.PROPOSE, schema.SCORE), n)
    rows.update(
        {
            C.PATCH_ID: np.array([f"{sid[:16]}-img" for sid in source_ids], dtype=object),
            C.SOURCE_ID: source_ids,
            "x0": np.zeros(n, np.int64),
            "y0": np.zeros(n, np.int64),
            "x1": widths,
            "y1": heights,
        }
    )
    return rows


class CompetingImages:
    """load(p): the rows of part p's ok sources that are no duplicate, in the part's order:
    their select_parts.IMAGE_ID, or those `columns` of their source rows. Each task reads its
    part's own statuses; the duplicates travel as their listing positions alone."""

    def __init__(self, store: PartStore, duplicates: Duplicates):
        self.store = store
        self.duplicates = duplicates

    def __call__(self, partition: int, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        columns = columns or (select_parts.IMAGE_ID,)
        rows = self.store.source_rows(partition, tuple(dict.fromkeys((*columns, C.INPUT_INDEX, C.STATUS))))
        keep = (rows[C.STATUS] == schema.OK) & (self.duplicates.at(rows[C.INPUT_INDEX]) < 0)
        return {name: rows[name][keep] for name in columns}


@dataclass
class ChosenImages:
    """`random`'s choice over the parts: the verdict (for_labels), the chosen images' plan rows
    in rank order (image_rows, with cluster, rank, selected and reason), and their sources' rows
    (C.SOURCE_COLUMNS: what pass 2 reads). Its manifest_pieces label every image of the pool."""

    load: CompetingImages
    verdict: select_parts.Verdict
    rows: dict[str, np.ndarray]
    sources: dict[str, np.ndarray]
    config: Config

    def manifest_pieces(self, store: PartStore) -> Iterator[pa.Table]:
        """patches.parquet's rows, one table per part in part order, each group labelled by a
        task; an image's rank is its place in the seeded draw, from a sort by ranges (ranks.py)."""
        parts = list(range(store.n_partitions))
        ranks = pool_ranks(self.load, parts, self.verdict.method, ("draw", self.config.seed), self.config.ray)
        calls = [(self.load, group, self.verdict, *ranks.of(g)) for g, group in enumerate(ranks.groups)]
        yield from spool.run_spooled(_labelled_pieces, calls, store.output, self.config.ray)


def choose_images(store: PartStore, duplicates: Duplicates, competing: int, budget: int, config: Config) -> ChosenImages:
    """`random` by Ray tasks over the parts: the first `budget` of the `competing` images (ok,
    no duplicate) in the seeded draw."""
    load = CompetingImages(store, duplicates)
    parts = list(range(store.n_partitions))
    # select_parts' run(fn, calls): its results, the size of the budget together, through files.
    run = partial(spool.run_through_files, output=store.output, config=config.ray)
    verdict = select_parts.select_images_in_parts(
        load, parts, run, budget=budget, method=config.selector, seed=config.seed, pool=competing
    )
    drawn = np.asarray(verdict.chosen["id"], dtype=object)  # the parts' ids are Python strings too
    table = IdTable(drawn)  # one object, put in the object store once for every task
    found = list(run(_chosen_in_parts, [(load, group, table) for group in part_groups(len(parts))]))
    rows = C.concat([rows for rows, _ in found])
    sources = C.concat([sources for _, sources in found])
    # Unscored (random needs no scores), an image's rank is its place in the seeded draw.
    place = {image: rank for rank, image in enumerate(drawn.tolist())}
    rank = np.array([place[image] for image in rows[C.SOURCE_ID].tolist()], dtype=np.int32)
    rows = C.take(rows, np.argsort(rank))
    n = len(rank)
    rows.update(cluster=np.full(n, -1, np.int32), rank=np.sort(rank), selected=np.ones(n, bool), reason=np.full(n, "", object))
    return ChosenImages(load, verdict.for_labels(), rows, sources, config)


def _chosen_in_parts(load: CompetingImages, group: list[int], drawn: IdTable) -> tuple[dict, dict]:
    """The image rows of the chosen images in the parts of `group`, and their source rows."""
    rows, sources = [], []
    for partition in group:
        images = load(partition, C.SOURCE_COLUMNS)  # one read gives both: an image is its source row
        chosen = C.take(images, drawn.find(images[C.SOURCE_ID]) >= 0)
        rows.append(image_rows(*(chosen[name] for name in (C.SOURCE_ID, C.WIDTH, C.HEIGHT))))
        sources.append(chosen)
    return C.concat(rows), C.concat(sources)


def _labelled_pieces(load: CompetingImages, group: list[int], verdict, *rank_pieces) -> list[pa.Table]:
    """The patches.parquet rows of the parts in `group`, as the in-memory barrier labels them."""
    pieces = []
    ranks = select_parts.part_ranks(len(group), *rank_pieces)
    for partition, selection in zip(group, select_parts.parts_selection(load, group, verdict, ranks)):
        images = load(partition, IMAGE_COLUMNS)
        rows = image_rows(*(images[name] for name in (C.SOURCE_ID, C.WIDTH, C.HEIGHT)))
        n = len(rows[C.PATCH_ID])
        keys = np.array([sample_key([i]) if chosen else "" for i, chosen in zip(rows[C.PATCH_ID].tolist(), selection.selected)], dtype=object)
        rows.update(
            cluster=selection.cluster, rank=selection.rank, selected=selection.selected, reason=selection.reason,
            sample_key=keys, slot=np.where(selection.selected, 0, -1).astype(np.int64),
            mask_rle=pa.nulls(n, schema.MASK_RLE),
        )
        pieces.append(schema.to_table("patches", rows))
    return pieces
