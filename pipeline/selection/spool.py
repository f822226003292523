"""What Ray tasks hand the driver through files under OUT/work/spool, not the object store: the
manifests' pieces, as large as the pool together (run_spooled), and the selection's results,
the size of the budget together (run_through_files). The driver maps every object it takes from
the object store, and the pages it touched stay in its RSS after the object is freed: taking
patches.parquet's pieces that way left 520 MiB in the driver at 16M candidate patches
(benchmarks/scale.py), growing with the pool. A file is read into the driver's own memory and
deleted once read. The spool lives beside pass 1's parts, where every task can already write."""

from __future__ import annotations

import pickle
import uuid
from functools import partial
from typing import Callable, Iterator

import pyarrow as pa

from ...manifests.layout import WORK_DIR, Output
from .. import raydata
from ..config import RayConfig

SPOOL_DIR = f"{WORK_DIR}/spool"
# The pieces are mostly text (ids, masks' RLE): lz4 made a 37k-row piece of the 16M pool 6.5x
# smaller (9.5 -> 1.5 MB), read back in 2 ms, against 23 ms for the driver to write it to Parquet.
_COMPRESSION = "lz4"


def run_spooled(fn: Callable[..., list[pa.Table]], calls: list[tuple], output: Output, config: RayConfig) -> Iterator[pa.Table]:
    """Yield the tables fn(*call) returns, a list per call, in call order then list order; each
    call is a Ray task (raydata.run_tasks) that writes its tables to the spool. The driver holds
    one table at a time. Then the spool is removed, with whatever an interrupted run left there."""
    spooled = [(fn, output, index, *call) for index, call in enumerate(calls)]
    for paths in raydata.run_tasks(_spool, spooled, config, put=partial(_put_through_file, output, SPOOL_DIR, config)):
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
    return pa.ipc.open_file(pa.py_buffer(_read_and_delete(output, path))).read_all()


def _read_and_delete(output: Output, path: str) -> bytes:
    with output.fs.open(output.path(path), "rb") as f:
        data = f.read()
    output.fs.rm(output.path(path))
    return data


def run_through_files(fn: Callable, calls: list[tuple], output: Output, config: RayConfig) -> Iterator:
    """Yield fn(*call) for each call, in call order, as raydata.run_tasks does, each result pickled
    by its task to a file of this call's own folder in the spool: the selection's sample, heads,
    shortlists and chosen rows. From the object store, they left 309 MiB mapped in the driver at
    16M candidate patches (benchmarks/scale.py; 18 MiB through files)."""
    folder = f"{SPOOL_DIR}/{uuid.uuid4().hex}"  # a name no output holds: free to be random
    pickled = [(fn, output, f"{folder}/{index:06d}.pickle", *call) for index, call in enumerate(calls)]
    paths = raydata.run_tasks(_pickled, pickled, config, put=partial(_put_through_file, output, folder, config))
    try:
        for path in paths:
            yield pickle.loads(_read_and_delete(output, path))
    finally:  # also when the caller stops early (zip over fewer calls, next() of the first)
        paths.close()  # waits for the tasks in flight, which would write into the folder after it went
        if output.exists(folder):
            output.fs.rm(output.path(folder), recursive=True)


def _pickled(fn, output: Output, path: str, *args) -> str:
    with output.open_atomic(path) as f:
        pickle.dump(fn(*args), f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _put_through_file(output: Output, folder: str, config: RayConfig, value) -> raydata.ObjectRef:
    """`value` in the object store, as the argument every task of a run shares (the plan's rows,
    the chosen ids), put there by a task that reads it from a file of the run's `folder`, which
    the run removes when done. Put by the driver itself, its pages would stay mapped in the
    driver's RSS: 19 MiB for the plan's rows at 16M candidate patches (benchmarks/scale.py)."""
    path = f"{folder}/shared-{uuid.uuid4().hex}.pickle"
    with output.open_atomic(path) as f:
        raydata.dump(value, f)
    return raydata.result_ref(_unpickled, (output, path), config)


def _unpickled(output: Output, path: str):
    """The task: the value, read back. The file stays until the run ends: a retried task reads it again."""
    with output.fs.open(output.path(path), "rb") as f:
        return pickle.load(f)
