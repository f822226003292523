"""benchmarks/blur_gate.py's sharpness measure against a hand computation: the mean gradient
magnitude of a crop resized to SCALE pixels, so that the same scene at twice the resolution
measures the same."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the script imports its neighbours (gate_measures, learnability)
_spec = importlib.util.spec_from_file_location("blur_gate", BENCHMARKS / "blur_gate.py")
blur_gate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(blur_gate)


def grey_ramp(width: int, slope: float) -> np.ndarray:
    """An RGB image whose grey level rises by `slope` per pixel from left to right."""
    row = np.arange(width, dtype=np.float64) * slope
    return np.repeat(np.repeat(row[None, :, None], width, axis=0), 3, axis=2).round().astype(np.uint8)


def test_sharpness_of_a_ramp_is_its_slope_at_the_measure_scale():
    side = blur_gate.SCALE
    assert blur_gate.sharpness(grey_ramp(side, 2.0), (0, 0, side, side)) == pytest.approx(2.0, abs=1e-3)
    # The same ramp over a crop twice the side: resized to SCALE, each pixel spans two, so the
    # slope per measured pixel doubles (grey 0.299 + 0.587 + 0.114 = 1 of each channel).
    assert blur_gate.sharpness(grey_ramp(2 * side, 1.0), (0, 0, 2 * side, 2 * side)) == pytest.approx(2.0, abs=1e-3)
    flat = np.full((side, side, 3), 128, np.uint8)
    assert blur_gate.sharpness(flat, (0, 0, side, side)) == 0.0


def test_sharpness_reads_only_the_box():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 100:] = grey_ramp(100, 1.0)
    assert blur_gate.sharpness(image, (0, 0, 100, 100)) == 0.0
    assert blur_gate.sharpness(image, (100, 0, 200, 100)) > 1.0
