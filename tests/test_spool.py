"""The manifests' pieces reach the driver through files in OUT/work/spool, not the object store:
every table comes back whole and in call order, only paths cross the object store, and no
file outlives the run of pieces, nor what an interrupted run left."""

from __future__ import annotations

import sys

import pyarrow as pa
import ray

from optidel.manifests.layout import Output
from optidel.pipeline import spool
from optidel.pipeline.config import RayConfig


def _tables(start: int, count: int) -> list[pa.Table]:
    """`count` tables of text and numbers, the kinds a manifest's piece holds."""
    return [
        pa.table({"id": [f"{start + n:064x}"] * (n + 1), "rank": pa.array(range(n + 1), pa.int32())})
        for n in range(count)
    ]


def test_the_tables_come_back_in_order_and_the_spool_is_emptied(ray_local, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import a test module
    output = Output(str(tmp_path))
    left_over = f"{spool.SPOOL_DIR}/000099-000000.arrow"  # an interrupted run's piece
    output.write_bytes(left_over, b"not arrow")
    calls = [(0, 3), (10, 0), (20, 2)]  # a call may return no table at all
    taken = list(spool.run_spooled(_tables, calls, output, RayConfig()))
    expected = [table for call in calls for table in _tables(*call)]
    assert len(taken) == len(expected) == 5
    assert all(got.equals(want) for got, want in zip(taken, expected))
    assert not output.exists(spool.SPOOL_DIR)


def test_a_task_hands_on_paths_alone_and_the_driver_deletes_each_file_it_reads(tmp_path):
    output = Output(str(tmp_path))
    paths = spool._spool(_tables, output, 7, 0, 2)  # what the task returns, through the object store
    assert paths == [f"{spool.SPOOL_DIR}/000007-000000.arrow", f"{spool.SPOOL_DIR}/000007-000001.arrow"]
    first = spool._take(output, paths[0])
    assert first.equals(_tables(0, 1)[0])
    assert not output.exists(paths[0]) and output.exists(paths[1])
