"""The driver's progress lines and torch thread setting (pipeline/progress.py)."""

from __future__ import annotations

import logging

import torch

from optidel.pipeline.progress import StageProgress, StepLog, driver_cpus, torch_threads


def test_step_log_reports_a_tenth_at_a_time_and_the_last_step(caplog):
    steps = StepLog("proxy", 25)
    with caplog.at_level(logging.INFO, logger="optidel"):
        for step in range(1, 26):
            steps(step, 0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == [f"proxy: step {i}/25" for i in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25)]
    assert all("loss 0.5000" in line and "ETA" in line for line in lines)
    assert lines[-1].endswith("ETA 0s")


def test_step_log_is_silent_above_info(caplog):
    """--quiet sets optidel's logger to WARNING: no progress lines."""
    steps = StepLog("proxy", 3)
    with caplog.at_level(logging.WARNING, logger="optidel"):
        for step in (1, 2, 3):
            steps(step, 1.0)
    assert not caplog.records


def test_torch_threads_are_set_for_the_block_and_restored():
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else driver_cpus()
    with torch_threads(wanted):
        assert torch.get_num_threads() == wanted
    assert torch.get_num_threads() == before
    assert driver_cpus() >= 1


def test_stage_progress_counts_units_not_batches(caplog):
    """Batches of uneven size: a line at each tenth crossed (once, however many a batch
    crosses) and at the last unit, with the running totals of the other counts."""
    shown = StageProgress("pass 1", 20, "sources")
    with caplog.at_level(logging.INFO, logger="optidel"):
        for sources, patches in ((1, 5), (2, 0), (7, 30), (9, 1), (1, 4)):
            shown.add(sources, patches=patches)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(", ")[:2] for line in lines] == [
        ["pass 1: 3/20 sources", "5 patches"],
        ["pass 1: 10/20 sources", "35 patches"],
        ["pass 1: 19/20 sources", "36 patches"],
        ["pass 1: 20/20 sources", "40 patches"],
    ]
    assert lines[-1].endswith("ETA 0s")


def test_stage_progress_is_silent_above_info(caplog):
    shown = StageProgress("pass 2", 2, "samples")
    with caplog.at_level(logging.WARNING, logger="optidel"):
        shown.add(2)
    assert not caplog.records
