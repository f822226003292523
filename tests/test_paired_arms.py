"""benchmarks/paired_arms.py: two arms' paired difference from the units of two results folders,
seed with seed, against the harness's own paired_difference on the same counts."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optidel.eval.stats import paired_difference

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_arms.py"
_spec = importlib.util.spec_from_file_location("paired_arms", SCRIPT)
paired_arms = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paired_arms)


def write_units(folder: Path, arm: str, seeds, rng) -> dict[int, np.ndarray]:
    (folder / "units").mkdir(parents=True, exist_ok=True)
    written = {}
    for seed in seeds:
        counts = rng.integers(1, 50, size=(6, 2, 2)).astype(float)
        (folder / "units" / f"{arm}-seed{seed}.json").write_text(json.dumps(
            {"arm": arm, "seed": seed, "counts": counts.tolist(), "finetune_counts": None}))
        written[seed] = counts
    return written


def test_arms_of_two_folders_are_paired_on_their_shared_seeds(tmp_path):
    rng = np.random.default_rng(0)
    a = write_units(tmp_path / "one", "gates", [0, 1, 2], rng)
    write_units(tmp_path / "one", "gates-wide", [0, 1, 2], rng)  # a longer name sharing the prefix: not read
    b = write_units(tmp_path / "two", "plain", [1, 2, 3], rng)
    done = subprocess.run([sys.executable, str(SCRIPT), f"{tmp_path / 'one'}:gates", f"{tmp_path / 'two'}:plain"],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    expected = paired_difference(np.stack([a[1], a[2]]), np.stack([b[1], b[2]]))
    assert result["seeds"] == [1, 2] and result["diff"] == pytest.approx(expected["diff"])
    assert result["ci95"] == pytest.approx(expected["ci95"])
    assert paired_arms.unit_counts(f"{tmp_path / 'one'}:gates", "finetune_counts") == {}  # no fine-tune in these units


def test_a_missing_arm_is_named(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), f"{tmp_path}:gates", f"{tmp_path}:plain"], capture_output=True, text=True)
    assert done.returncode != 0 and "no units of arm 'gates'" in done.stderr
