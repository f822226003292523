"""The selection's manifests, in pieces: Ray tasks read each part's rows, sources.parquet's with
the duplicates marked (duplicates.py), patches.parquet's labelled (rows.py), and the driver
writes one part's piece at a time, taken from the spool (spool.py), never holding the pool."""

from __future__ import annotations

import pyarrow as pa

from ...manifests import schema
from ...manifests.layout import Output
from ..config import Config
from ..partitions import PartStore, part_groups
from . import rows, spool
from .duplicates import Duplicates, marked
from .engine import tally
from .plan import Plan

# What sources.parquet takes from a part's source rows; the selection adds duplicate_of.
PART_COLUMNS = schema.filled_by("sources", schema.LISTING, schema.INGEST)


def patches(output: Output, plan: Plan, store: PartStore, config: Config) -> int:
    """patches.parquet; returns its rows (the candidate patches, or the competing images)."""
    pieces, written = rows.manifest_pieces(plan.chosen, plan.patches, plan.sample_keys, store, config), {}
    output.write_manifest_pieces("patches", tally(pieces, written, "rows", lambda piece: piece.num_rows))
    return written["rows"]


def sources(output: Output, duplicates: Duplicates, store: PartStore, config: Config) -> None:
    """sources.parquet's rows, one table per part in part order, built by one task per group of
    parts, each given the duplicates among its own sources only."""
    calls = []
    for group in part_groups(store.n_partitions):
        span = range(store.sources_of(group[0]).start, store.sources_of(group[-1]).stop)
        calls.append((store, group, duplicates.within(span)))
    output.write_manifest_pieces("sources", spool.run_spooled(_marked_pieces, calls, store.output, config.ray))


def _marked_pieces(store: PartStore, group: list[int], duplicates: Duplicates) -> list[pa.Table]:
    return [schema.to_table("sources", marked(store.source_rows(p, PART_COLUMNS), duplicates)) for p in group]
