"""sources.parquet. When the plan holds every source (the in-memory barrier), one write of its
table; when it was made over the parts, in pieces: Ray tasks read each part's source rows and
mark the duplicates found by pipeline/duplicates.py, and the driver writes one part's piece at
a time, taken from the spool (spool.py), never holding the pool's sources. Both give the same
bytes (Output.write_manifest_pieces cuts row groups as one write would)."""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from ..manifests import schema
from ..manifests.layout import Output
from . import spool
from .barrier import Plan
from .config import Config
from .duplicates import Duplicates, marked
from .partitions import PartStore, part_groups

# What sources.parquet takes from a part's source rows; the barrier adds duplicate_of.
PART_COLUMNS = schema.filled_by("sources", schema.LISTING, schema.INGEST)


def write(output: Output, plan: Plan, store: PartStore, config: Config) -> None:
    if plan.duplicates is None:
        output.write_manifest("sources", schema.to_table("sources", plan.sources))
    else:
        output.write_manifest_pieces("sources", _pieces(store, plan.duplicates, config))


def _pieces(store: PartStore, duplicates: Duplicates, config: Config) -> Iterator[pa.Table]:
    """sources.parquet's rows, one table per part in part order, built by one task per group of
    parts, each given the duplicates among its own sources only."""
    calls = []
    for group in part_groups(store.n_partitions):
        span = range(store.sources_of(group[0]).start, store.sources_of(group[-1]).stop)
        calls.append((store, group, duplicates.within(span)))
    yield from spool.run_spooled(_marked_pieces, calls, store.output, config.ray)


def _marked_pieces(store: PartStore, group: list[int], duplicates: Duplicates) -> list[pa.Table]:
    return [schema.to_table("sources", marked(store.source_rows(p, PART_COLUMNS), duplicates)) for p in group]

