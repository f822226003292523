"""The exact embedding mean (stages/exact_mean.py): correctly rounded, and the same bits however
the rows are ordered or split into parts, where a float64 running sum is not."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from optidel.stages.exact_mean import add_sums, column_sums, mean_of_sums


def _rows(seed: int) -> np.ndarray:
    """Magnitudes from subnormal to huge in one column, so rounding order matters."""
    rng = np.random.default_rng(seed)
    rows = (rng.normal(size=(300, 5)) * 10.0 ** rng.integers(-40, 30, size=(300, 5))).astype(np.float32)
    rows[::7, 0] = np.float32(1e-45)  # the smallest subnormal
    rows[3, 1] = 0.0
    return rows


def test_mean_is_the_correctly_rounded_exact_mean():
    rows = _rows(0)
    exact = [sum(Fraction(float(v)) for v in column) / len(rows) for column in rows.T]
    assert mean_of_sums(column_sums(rows), len(rows)).tolist() == [float(m) for m in exact]


def test_mean_ignores_row_order_and_the_split_into_parts():
    rows = _rows(1)
    whole = mean_of_sums(column_sums(rows), len(rows))
    shuffled = rows[np.random.default_rng(2).permutation(len(rows))]
    parts = np.split(shuffled, [1, 40, 41, 200])
    sums = column_sums(parts[0])
    for part in parts[1:]:
        sums = add_sums(sums, column_sums(part))
    assert np.array_equal(mean_of_sums(sums, len(rows)), whole)
    # A float64 running sum in another order gives other bits: what the exact sum avoids.
    assert not np.array_equal(rows.astype(np.float64).sum(axis=0), shuffled.astype(np.float64).sum(axis=0))
