"""benchmarks/learnability.py, the measurement device that ranks a scored run's candidates by
learnability (score_early - score) through the unchanged selection engine: its values against a
hand computation, and what it rewrites of a scored run's pass-1 parts."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learnability.py"
_spec = importlib.util.spec_from_file_location("learnability", SCRIPT)
learnability = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(learnability)

NAN = float("nan")


def part(patch_index, score, score_early) -> pa.Table:
    return pa.table({
        "patch_index": pa.array(patch_index, pa.int64()),
        "patch_id": pa.array([f"p{i}" for i in range(len(patch_index))]),
        "score": pa.array(score, pa.float32()),
        "score_early": pa.array(score_early, pa.float32()),
    })  # fmt: skip


# Two parts: a source row (patch_index -1) then its patches; the second source was never scored.
PARTS = [
    part([-1, 0, 1, 2], [1.0, 2.0, 0.5, 1.5], [1.5, 2.1, 1.5, 1.6]),
    part([-1, 0, -1], [0.8, 1.0, NAN], [1.6, 1.9, NAN]),
]


def test_percentile_ranks_lowest_0_highest_1_ties_by_position():
    assert learnability.percentile_ranks(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert learnability.percentile_ranks(np.array([1.0, 1.0])).tolist() == [0.0, 1.0]
    assert learnability.percentile_ranks(np.array([7.0])).tolist() == [0.0]


def test_learnability_is_the_early_minus_the_final_score():
    got = learnability.ranking_values(PARTS, "learnability")
    np.testing.assert_allclose(got[0], [0.5, 0.1, 1.0, 0.1], atol=1e-6)
    np.testing.assert_allclose(got[1], [0.8, 0.9, NAN], atol=1e-6)


def test_combined_is_the_mean_of_the_pool_ranks_by_score_and_by_learnability():
    got = learnability.ranking_values(PARTS, "combined")
    # Patches, pool-wide: scores 2.0, 0.5, 1.5, 1.0 rank 3, 0, 2, 1 of 3; learnability 0.1, 1.0,
    # 0.1, 0.9 ranks 0, 3, 1 (the tie by position), 2 of 3.
    np.testing.assert_allclose(got[0][1:], [(3 + 0) / 6, (0 + 3) / 6, (2 + 1) / 6], atol=1e-6)
    np.testing.assert_allclose(got[1][1], (1 + 2) / 6, atol=1e-6)
    # Source rows among source rows: scores 1.0, 0.8 and learnability 0.5, 0.8 rank 1, 0 and 0, 1.
    np.testing.assert_allclose([got[0][0], got[1][0]], [0.5, 0.5], atol=1e-6)
    assert np.isnan(got[1][2])


def test_floor_moves_the_least_learnable_rows_under_every_other_and_keeps_the_score():
    got = learnability.ranking_values(PARTS, "floor", floor=0.5)
    # Patches: learnability 0.1, 1.0, 0.1, 0.9 rank 0, 1, 1/3, 2/3: the first and third fall below
    # the 0.5 quantile and move down by the patches' score span plus one (2.0 - 0.5 + 1 = 2.5).
    np.testing.assert_allclose(got[0][1:], [2.0 - 2.5, 0.5, 1.5 - 2.5], atol=1e-6)
    np.testing.assert_allclose(got[1][1], 1.0, atol=1e-6)
    # Source rows: learnability 0.5, 0.8 rank 0, 1: the first moves by 1.0 - 0.8 + 1 = 1.2.
    np.testing.assert_allclose([got[0][0], got[1][0]], [1.0 - 1.2, 0.8], atol=1e-6)
    assert np.isnan(got[1][2])


def scored_out(tmp_path: Path, parts) -> Path:
    out = tmp_path / "scored"
    (out / "work" / "pass1").mkdir(parents=True)
    (out / "work" / "job.json").write_text(json.dumps({"config": {"selector": "optidel"}}))
    for i, table in enumerate(parts):
        pq.write_table(table, out / "work" / "pass1" / f"part-{i:06d}.parquet")
    return out


def test_reselect_writes_the_ranking_into_the_copys_score_and_leaves_the_rest(tmp_path):
    scored, new = scored_out(tmp_path, PARTS), tmp_path / "new"
    learnability.reselect(argparse.Namespace(scored_out=str(scored), new_out=str(new), rank="learnability", floor=0.25, settings=[]))
    expected = learnability.ranking_values(PARTS, "learnability")
    for i, original in enumerate(PARTS):
        copy = pq.read_table(new / "work" / "pass1" / f"part-{i:06d}.parquet")
        assert copy.schema == original.schema
        assert copy.column("score").null_count == 0  # a row never scored keeps its NaN, as pass 1 wrote it
        np.testing.assert_array_equal(copy.column("score").to_numpy(), expected[i].astype(np.float32))
        for name in ("patch_index", "patch_id", "score_early"):
            np.testing.assert_array_equal(copy.column(name).to_numpy(), original.column(name).to_numpy(), name)
        unchanged = pq.read_table(scored / "work" / "pass1" / f"part-{i:06d}.parquet")
        np.testing.assert_array_equal(unchanged.column("score").to_numpy(), original.column("score").to_numpy())
    assert json.loads((new / "work" / "job.json").read_text()) == {"config": {"selector": "optidel"}}


def test_reselect_refuses_a_run_without_early_scores(tmp_path):
    no_early = scored_out(tmp_path, [part([-1, 0], [1.0, 2.0], [NAN, NAN])])
    with pytest.raises(SystemExit, match="no early checkpoint"):
        learnability.reselect(
            argparse.Namespace(scored_out=str(no_early), new_out=str(tmp_path / "new"), rank="learnability", floor=0.25, settings=[])
        )
    assert not (tmp_path / "new").exists()
