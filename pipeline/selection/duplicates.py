"""Exact duplicates over the pass-1 parts: an ok source byte-identical to an earlier one in the
listing is its `duplicate`. Map tasks, one per group of parts, send each ok source row (its id
and listing position) to the bucket its id hashes to, counting the rows by status; a reduce task
per bucket keeps each id's first row in listing order and names the others duplicates. The
driver receives the duplicates and the counts alone, never a row per source."""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ...manifests import schema
from ...stages import columns as C
from .. import raydata
from ..config import Config
from ..partitions import PartStore, part_groups
from .keys import split_by

ROW_COLUMNS = (C.INPUT_INDEX, C.SOURCE_ID, C.STATUS)  # what the map reads of a source row


@dataclass(frozen=True)
class Duplicates:
    """Sources found byte-identical to an earlier ok source: their listing positions (sorted)
    and, at the same place, the source id they repeat."""

    positions: np.ndarray  # int64
    of: np.ndarray  # object (str)

    def at(self, input_indices: np.ndarray) -> np.ndarray:
        """For each listing position, where it is in `positions`, or -1 when not a duplicate."""
        found = np.searchsorted(self.positions, input_indices)
        hit = found < len(self.positions)
        hit[hit] = self.positions[found[hit]] == input_indices[hit]
        return np.where(hit, found, -1)

    def within(self, span: range) -> Duplicates:
        """Those at listing positions in `span`: what a task over those sources needs."""
        start, stop = np.searchsorted(self.positions, [span.start, span.stop])
        return Duplicates(self.positions[start:stop], self.of[start:stop])


def find(store: PartStore, config: Config) -> tuple[Duplicates, dict[str, int]]:
    """The pool's duplicates, and its sources counted by status with the duplicates marked (as
    sources.parquet will hold them), by Ray tasks over the parts."""
    groups = part_groups(store.n_partitions)
    calls = [(store, group, len(groups)) for group in groups]
    counts, found = raydata.shuffle(_bucketed_parts, calls, first_occurrences, len(groups), config.ray)
    duplicates = joined(found)
    by_status = sum(counts, Counter())
    if len(duplicates.positions):
        by_status[schema.OK] -= len(duplicates.positions)
        by_status[schema.DUPLICATE] += len(duplicates.positions)
    return duplicates, dict(sorted(by_status.items()))


def _bucketed_parts(store: PartStore, group: list[int], buckets: int) -> tuple[list[dict], Counter]:
    rows = C.concat([store.source_rows(p, ROW_COLUMNS) for p in group])
    return bucketed(rows, buckets), Counter(rows[C.STATUS].tolist())


def bucketed(rows: dict[str, np.ndarray], buckets: int) -> list[dict[str, np.ndarray]]:
    """The ok rows of `rows` (ROW_COLUMNS), as `buckets` pieces of INPUT_INDEX and SOURCE_ID:
    every row of one id lands in the same piece, whichever part or task it comes from."""
    ok = rows[C.STATUS] == schema.OK
    ids, positions = rows[C.SOURCE_ID][ok], rows[C.INPUT_INDEX][ok]
    # crc32, not hash(): Python salts str hashes per process, and the map tasks run in many.
    bucket = np.fromiter((zlib.crc32(i.encode()) % buckets for i in ids.tolist()), np.int64, len(ids))
    return [{C.INPUT_INDEX: positions[rows], C.SOURCE_ID: ids[rows]} for rows in split_by(bucket, buckets)]


def first_occurrences(*pieces: dict[str, np.ndarray]) -> Duplicates:
    """The reduce task: of the ok rows in one bucket's pieces, those whose id a row earlier in
    the listing has (lower INPUT_INDEX), with that id."""
    positions = np.concatenate([piece[C.INPUT_INDEX] for piece in pieces]).astype(np.int64)
    ids = np.concatenate([piece[C.SOURCE_ID] for piece in pieces]).astype(object)
    if not len(ids):
        return Duplicates(positions, ids)
    _, id_code = np.unique(ids, return_inverse=True)
    order = np.lexsort((positions, id_code))  # by id, then listing position
    later = np.r_[False, id_code[order][1:] == id_code[order][:-1]]
    repeats = order[later]
    repeats = repeats[np.argsort(positions[repeats])]
    return Duplicates(positions[repeats], ids[repeats])


def joined(found: list[Duplicates]) -> Duplicates:
    """The buckets' duplicates as one, by listing position."""
    positions = np.concatenate([d.positions for d in found]) if found else np.zeros(0, np.int64)
    of = np.concatenate([d.of for d in found]) if found else np.zeros(0, object)
    order = np.argsort(positions)
    return Duplicates(positions[order], of[order])


def marked(rows: dict[str, np.ndarray], duplicates: Duplicates) -> dict[str, np.ndarray]:
    """Source rows with the duplicates' STATUS `duplicate` and duplicate_of the id they repeat."""
    at = duplicates.at(rows[C.INPUT_INDEX])
    is_duplicate = at >= 0
    status = rows[C.STATUS].copy()
    status[is_duplicate] = schema.DUPLICATE
    duplicate_of = np.full(len(status), "", dtype=object)
    duplicate_of[is_duplicate] = duplicates.of[at[is_duplicate]]
    return {**rows, C.STATUS: status, "duplicate_of": duplicate_of}
