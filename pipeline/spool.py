"""Tables that Ray tasks hand the driver through files under OUT/work/spool, not through the
object store: the manifests' pieces, which together are as large as the pool.

The driver maps every object it takes from the object store, and the shared pages it touched
stay in its RSS after the object is freed, up to the store's size. Taking patches.parquet's
pieces that way left 520 MiB of them in the driver at 16M candidate patches
(benchmarks/scale.py), growing with the pool. A file is read into the driver's own memory,
freed with its table, and deleted once read. The spool lives beside pass 1's parts, where
every task can already write."""

from __future__ import annotations

from typing import Callable, Iterator

import pyarrow as pa

from ..manifests.layout import WORK_DIR, Output
from . import raydata
from .config import RayConfig

SPOOL_DIR = f"{WORK_DIR}/spool"
# The pieces are mostly text (ids, masks' RLE): lz4 made a 37k-row piece of the 16M pool 6.5x
# smaller (9.5 -> 1.5 MB), read back in 2 ms, against 23 ms for the driver to write it to Parquet.
_COMPRESSION = "lz4"


def run_spooled(fn: Callable[..., list[pa.Table]], calls: list[tuple], output: Output, config: RayConfig) -> Iterator[pa.Table]:
    """Yield the tables fn(*call) returns, a list per call, in call order then list order; each
    call is a Ray task (raydata.run_tasks) that writes its tables to the spool. The driver holds
    one table at a time. Then the spool is removed, with whatever an interrupted run left there."""
    spooled = [(fn, output, index, *call) for index, call in enumerate(calls)]
    for paths in raydata.run_tasks(_spool, spooled, config):
        for path in paths:
            yield _take(output, path)
    if output.exists(SPOOL_DIR):
        output.fs.rm(output.path(SPOOL_DIR), recursive=True)


def _spool(fn, output: Output, index: int, *args) -> list[str]:
    """The task: fn's tables, written; returns their paths, all that crosses the object store."""
    paths = []
    options = pa.ipc.IpcWriteOptions(compression=_COMPRESSION)
    for n, table in enumerate(fn(*args)):
        path = f"{SPOOL_DIR}/{index:06d}-{n:06d}.arrow"
        with output.open_atomic(path) as f, pa.ipc.new_file(f, table.schema, options=options) as writer:
            writer.write_table(table)
        paths.append(path)
    return paths


def _take(output: Output, path: str) -> pa.Table:
    with output.fs.open(output.path(path), "rb") as f:
        data = f.read()
    output.fs.rm(output.path(path))
    return pa.ipc.open_file(pa.py_buffer(data)).read_all()
