"""The manifests' pieces, and the selection's results, reach the driver through files in
OUT/work/spool, not the object store: every table or result comes back whole and in call
order, only paths cross the object store, and no file outlives the run of pieces, nor what an
interrupted run left, nor a run of results its caller stopped early. What every task of a run
shares (the plan's rows) reaches the object store from a file, put there by a task, never by
the driver."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pytest
import ray

from optidel.manifests.layout import Output
from optidel.pipeline.selection import spool
from optidel.stages.id_table import IdTable
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


def _result(n: int) -> tuple[dict, str]:
    """A result of the kind the selection's tasks return: columns of numbers and of text."""
    return {"id": np.array([f"p-{i}" for i in range(n)], dtype=object), "rank": np.arange(n, dtype=np.int32)}, f"note {n}"


def test_results_come_back_through_files_in_order_and_leave_none_behind(ray_local, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    output = Output(str(tmp_path))
    calls = [(3,), (0,), (5,)]
    taken = list(spool.run_through_files(_result, calls, output, RayConfig()))
    assert [note for _, note in taken] == ["note 3", "note 0", "note 5"]
    for (rows, _), (n,) in zip(taken, calls):
        assert rows["id"].tolist() == [f"p-{i}" for i in range(n)] and rows["rank"].dtype == np.int32
    assert output.fs.ls(output.path(spool.SPOOL_DIR)) == []
    # A caller that stops early (zip over fewer names than calls) leaves no folder either.
    assert [n for n, _ in zip("ab", spool.run_through_files(_result, calls, output, RayConfig()))] == ["a", "b"]
    assert output.fs.ls(output.path(spool.SPOOL_DIR)) == []


def test_a_result_task_hands_on_its_path_alone(tmp_path):
    output = Output(str(tmp_path))
    path = spool._pickled(_result, output, f"{spool.SPOOL_DIR}/run/000004.pickle", 2)
    assert path == f"{spool.SPOOL_DIR}/run/000004.pickle" and output.exists(path)


def _looked_up(table: IdTable, ids: list[str]) -> tuple[list[int], bool]:
    """A task's look-up in the table every call shares, and whether it reads the store's copy."""
    found = table.find(ids)
    return table.columns["slot"][found].tolist(), table.ids.flags.writeable


@pytest.mark.parametrize("run", [spool.run_through_files, spool.run_spooled])
def test_an_argument_the_tasks_share_is_put_by_a_task_from_a_file(ray_local, tmp_path, monkeypatch, run):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    output = Output(str(tmp_path))
    table = IdTable(["b", "a", "c"], slot=np.array([1, 0, 2], dtype=np.int32))
    through_files = []
    put = spool._put_through_file
    monkeypatch.setattr(spool, "_put_through_file", lambda *args: through_files.append(args[-1]) or put(*args))
    if run is spool.run_spooled:
        taken = list(run(lambda *call: [pa.table({"slot": _looked_up(*call)[0]})], [(table, ["c", "a"]), (table, ["b"])], output, RayConfig()))
        assert [piece.column("slot").to_pylist() for piece in taken] == [[2, 0], [1]]
        assert not output.exists(spool.SPOOL_DIR)
    else:
        taken = list(run(_looked_up, [(table, ["c", "a"]), (table, ["b"])], output, RayConfig()))
        assert taken == [([2, 0], False), ([1], False)]  # zero-copy from the object store: read-only
        assert output.fs.ls(output.path(spool.SPOOL_DIR)) == []
    assert any(value is table for value in through_files)  # once, for both calls
