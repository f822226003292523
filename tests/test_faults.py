"""Faults: a Score actor that dies mid-batch is restarted and its batch retried, a bounded
number of times, and the run still writes each sample exactly once; a source whose proposal
raises is recorded with its error while the others go on."""

from __future__ import annotations

import numpy as np
import pytest

from optidel.manifests import schema
from optidel.pipeline.config import IngestConfig, ProposeConfig
from optidel.pipeline.inputs import list_sources
from optidel.pipeline.partitions import ROWS_OF_SOURCE
from optidel.pipeline.pass1_stages import FAILED_STATUS, IsolatedPropose
from optidel.stages import columns as C
from optidel.stages.ingest import Ingest
from optidel.stages.propose import Propose

import resume_fixtures as rf
from test_ingest import listing_batch
from killable import optidel_run


@pytest.fixture(scope="module")
def reference(kvasir, tmp_path_factory, ray_local):
    return rf.reference(kvasir, tmp_path_factory)


def test_actor_death_while_scoring_is_retried_within_bounds(reference, tmp_path):
    pool, reference_out, _ = reference
    out = tmp_path / "out"
    marker = tmp_path / "score-exited"
    rf.trained(reference_out, out)  # skip training the proxy: this test is about scoring

    # No retries allowed: the death stops the run, naming what is unfinished.
    # The first Score call exits its worker, once.
    failed = optidel_run([str(pool)], out, rf.SETS + ["ray.max_retries=0"], score_exits_once=marker)
    assert failed.returncode == 2 and marker.exists(), failed.log[-2000:]
    assert "optidel: error: pass 1 stopped with 4 of 4 partitions unfinished: partition 0 (sources 0-2: " in failed.log
    assert "ActorDiedError" in failed.log

    # Retries allowed (the default): the actor is restarted and its batch retried; rerun on
    # the same OUT, the job resumes and completes with each sample once.
    marker.unlink()
    done = optidel_run([str(pool)], out, rf.SETS, score_exits_once=marker)
    assert done.returncode == 0, done.log[-2000:]
    assert marker.exists()  # the actor did die during this run
    rf.assert_same_as_reference(out, reference_out)


def test_source_whose_proposal_raises_is_recorded_not_fatal(kvasir):
    refs = list_sources(sorted(str(p) for p in (kvasir / "images").glob("*.jpg"))[:3])
    ingested = Ingest(IngestConfig())(listing_batch(refs))
    # An "ok" source whose pixels are empty: the proposer divides by zero on it.
    ingested[C.IMAGE][1] = np.zeros((0, 0, 3), np.uint8)
    config = ProposeConfig()
    with pytest.raises(ZeroDivisionError):
        Propose(config, 64)(ingested)

    out = IsolatedPropose(config, 64)(ingested)
    failed = out[C.INPUT_INDEX] == 1
    assert failed.sum() == 1 and out[C.PATCH_INDEX][failed][0] == -1
    assert out[C.STATUS][failed][0] == FAILED_STATUS != schema.OK
    assert out["error"][failed][0].startswith("propose raised ZeroDivisionError")
    # The other sources are proposed as the plain stage proposes them alone.
    alone = Propose(config, 64)({k: v[[0, 2]] for k, v in ingested.items()})
    assert set(out) == set(alone) | {ROWS_OF_SOURCE}
    for name, values in alone.items():
        assert np.array_equal(out[name][~failed], values, equal_nan=values.dtype.kind == "f"), name
    assert out[ROWS_OF_SOURCE].tolist() == [int((out[C.INPUT_INDEX] == i).sum()) for i in out[C.INPUT_INDEX]]
