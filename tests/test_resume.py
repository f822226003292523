"""Resume: a run killed with SIGKILL, rerun on the same OUT, finishes with the bytes of an
uninterrupted run; OUT holding another job is refused, naming the difference; pass-1 parts
are written only whole and only once. (All five kill points: benchmarks/reliability.py.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from optidel.manifests.layout import Output
from optidel.pipeline import resume
from optidel.pipeline.partitions import ROWS_OF_SOURCE, PartitionSink, PartStore, part_name
from optidel.pipeline.runner import RunError, run
from optidel.stages import columns as C

import resume_fixtures as rf
from killable import optidel_run


@pytest.fixture(scope="module")
def reference(kvasir, tmp_path_factory, ray_local):
    return rf.reference(kvasir, tmp_path_factory)


def _parts(out) -> int:
    return len(list((out / "work" / "pass1").glob("part-*.parquet")))


def _status(out) -> str:
    return json.loads((out / "run.json").read_text())["status"]


def test_killed_twice_then_rerun_gives_identical_bytes(reference, tmp_path, ray_local):
    """kill -9 of the whole run (driver, its Ray, the workers) at two points, on one OUT."""
    pool, reference_out, reference_info = reference
    out = tmp_path / "out"
    sets = rf.SETS + rf.SMALL_BATCHES

    # 1: the proxy is trained and saved; pass 1 has persisted nothing yet.
    first = optidel_run([str(pool)], out, sets, kill_when=lambda o: (o / "work" / "proxy.json").exists())
    assert first.killed, first.log[-2000:]
    assert _status(out) == "running" and _parts(out) == 0

    # 2: the rerun reuses the proxy and is killed with half of pass 1 persisted.
    second = optidel_run([str(pool)], out, sets, kill_when=lambda o: _parts(o) >= 2)
    assert second.killed, second.log[-2000:]
    assert "proxy: reusing" in second.log
    parts_at_kill = _parts(out)
    assert 2 <= parts_at_kill < 4 and _status(out) == "running"

    # 3: the last rerun (other Ray settings: not part of the job) finishes what is missing.
    info = run([str(pool)], str(out), rf.config())
    assert info["reused"] == {"pass1_partitions": 4, "pass1_partitions_reused": parts_at_kill, "proxy": True, "pass1_proposals": False}
    # The reference scored the proposals its proxy's sample made of the whole pool; these reruns
    # proposed again from the listing: the same bytes either way.
    assert reference_info["reused"]["pass1_proposals"] is True
    rf.assert_same_as_reference(out, reference_out)


def test_interrupted_pass2_is_redone(reference, tmp_path, ray_local):
    """What a kill during pass 2 leaves (some whole shards, one partial .tmp, no manifests) is
    cleared and pass 2 redone from the persisted candidates."""
    pool, reference_out, _ = reference
    out = tmp_path / "out"
    shutil.copytree(reference_out, out)
    shards = sorted((out / "shards").glob("shard-*.tar"))
    assert len(shards) >= 2
    shards[-1].rename(shards[-1].with_name(shards[-1].name + ".tmp"))
    shards[-1].with_name(shards[-1].name + ".tmp").write_bytes(b"partial")
    (out / "index.json").unlink()
    shutil.rmtree(out / "manifests")
    (out / "run.json").write_text('{"status": "running"}')

    info = run([str(pool)], str(out), rf.config())
    assert info["reused"] == {"pass1_partitions": 4, "pass1_partitions_reused": 4, "proxy": True, "pass1_proposals": False}
    assert not list(out.rglob("*.tmp"))
    rf.assert_same_as_reference(out, reference_out)


def test_complete_output_is_reported_not_redone(reference, ray_local):
    pool, reference_out, first = reference
    before = rf.tree(reference_out)
    # Where Ray runs and how it retries are not part of the job.
    info = run([str(pool)], str(reference_out), rf.config("ray.actors=2", "ray.max_retries=1"))
    assert info == first
    assert rf.tree(reference_out) == before


def test_other_job_refused_naming_the_difference(reference, tmp_path):
    pool, reference_out, _ = reference
    before = rf.tree(reference_out)
    with pytest.raises(RunError, match=r"config key select\.clusters: 4 in OUT, 8 now"):
        run([str(pool)], str(reference_out), rf.config("select.clusters=8"))
    fewer = tmp_path / "fewer.txt"
    fewer.write_text("".join(pool.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(RunError, match=r"input listing: 12 sources .* in OUT, 11 sources"):
        run([str(fewer)], str(reference_out), rf.config())
    assert rf.tree(reference_out) == before


def test_a_key_added_since_out_was_written_counts_at_the_value_from_before_it():
    listing = {"sources": 1, "sha256": "0" * 64}
    now = {"format": resume.JOB_FORMAT, "inputs": ["a"], "listing": listing, "models": {},
           "config": {"propose": {"max_blockiness": None, "max_clipped_frac": 1.0, "max_noise_sigma": 6.0, "margin": 0.1}}}
    older = json.loads(json.dumps(now))
    del older["config"]["propose"]["max_blockiness"]  # written before the keys existed
    del older["config"]["propose"]["max_clipped_frac"]
    assert resume.differences(older, now) == []
    now["config"]["propose"]["max_clipped_frac"] = 0.4  # today's default does something new
    assert resume.differences(older, now) == ["config key propose.max_clipped_frac: 1.0 in OUT, 0.4 now"]
    del older["config"]["propose"]["max_noise_sigma"]  # a key not added since: missing is a difference
    assert len(resume.differences(older, now)) == 2


def test_output_of_something_else_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    with pytest.raises(RunError, match="holds no optidel job"):
        resume.open_output(str(out), overwrite=False)
    assert (out / "precious.txt").read_text() == "mine"
    _, recorded = resume.open_output(str(out), overwrite=True)
    assert recorded is None and list(out.iterdir()) == []


def _rows(sources: dict[int, int], d: int = 3) -> dict[str, np.ndarray]:
    """Pass-1 rows as a model stage emits them: per source (input_index -> patch count) one
    source row, then its patch rows, each carrying ROWS_OF_SOURCE."""
    index, patch = [], []
    for i, n in sources.items():
        index += [i] * (n + 1)
        patch += list(range(-1, n))
    index, patch = np.array(index), np.array(patch)
    return {
        C.INPUT_INDEX: index,
        C.PATCH_INDEX: patch,
        C.PATCH_ID: np.array([f"s{i}-{k}" for i, k in zip(index, patch)], dtype=object),
        C.SCORE: (index * 10 + patch).astype(np.float32),
        C.EMBEDDING: np.repeat((index * 10 + patch)[:, None], d, axis=1).astype(np.float32),
        ROWS_OF_SOURCE: np.array([sources[i] + 1 for i in index]),
    }


def _take(rows, positions):
    return {k: v[positions] for k, v in rows.items()}


def test_part_written_only_when_whole_and_duplicates_dropped(tmp_path):
    """Ray may cut a partition's rows (even one source's) across batches, deliver them in any
    order, and deliver a retried batch twice: a part appears once all its rows are in, holding
    each row once, sorted."""
    store = PartStore(Output(str(tmp_path / "out")), n_sources=5, partition_size=3)
    sink = PartitionSink(store, pending=[0, 1])
    rows = _rows({0: 2, 1: 0, 2: 3, 3: 1, 4: 2})  # partitions: sources 0-2 and 3-4
    order = np.random.default_rng(0).permutation(len(rows[C.INPUT_INDEX]))
    in_p0 = rows[C.INPUT_INDEX][order] < 3
    p0, p1 = order[in_p0], order[~in_p0]

    sink.add(_take(rows, np.r_[p0[:-1], p1[:2]]))  # all but one row of partition 0
    sink.add(_take(rows, p0[:3]))  # a retried batch, delivered again
    assert store.done() == set()
    sink.add(_take(rows, np.r_[p0[-1:], p1[2:3]]))
    assert store.done() == {0}
    sink.add(_take(rows, p1[3:]))
    assert store.done() == {0, 1} and sink.unfinished() == []
    sink.add(_take(rows, p0[:2]))  # a copy arriving after its partition was written
    assert not list((tmp_path / "out").rglob("*.tmp"))

    back = {name: np.concatenate([store.read(0)[name], store.read(1)[name]]) for name in store.read(0)}
    expected = {k: v for k, v in rows.items() if k != ROWS_OF_SOURCE}  # built sorted already
    assert sorted(back) == sorted(expected)
    for name in expected:
        assert np.array_equal(back[name], expected[name]), name
    assert back[C.EMBEDDING].dtype == np.float32 and back[C.PATCH_ID].dtype == object
    assert (tmp_path / "out" / part_name(1)).exists()
