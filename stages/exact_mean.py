"""The mean of float32 rows, exactly rounded: the same bits whatever the row order and however
the rows are split into parts, so the selection, which sums each pass-1 part apart
(pipeline/selection/engine.py), centres embeddings on the mean of the whole pool.

A float32 value is an integer times a power of two (m * 2**(e - 24), |m| < 2**24, e from
np.frexp), so the exact sum of a column is an integer multiple of 2**-172 (float32's smallest
subnormal is 2**-149 = 2**23 * 2**-172). Each part sums its mantissas per (exponent, column) in
float64, exact while a bin holds under 2**29 rows, and hands back one Python int per column;
the ints add exactly, and the mean is rounded once.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

_SCALE_BITS = 172  # sums are integers in units of 2**-172
_EXPONENTS = 277  # frexp exponents of finite float32 values: -148 .. 128
_ROWS_PER_BINCOUNT = 1 << 20  # far below 2**29 rows: a bin's float64 sum stays an exact integer


def column_sums(rows: np.ndarray) -> list[int]:
    """Exact per-column sums of finite float32 rows (n, D), in units of 2**-172."""
    rows = np.asarray(rows, dtype=np.float32)
    dim = rows.shape[1]
    totals = [0] * dim
    for start in range(0, len(rows), _ROWS_PER_BINCOUNT):
        fraction, exponent = np.frexp(rows[start : start + _ROWS_PER_BINCOUNT])
        mantissa = fraction.astype(np.float64) * (1 << 24)
        bins = (exponent.astype(np.int64) + 148) * dim + np.arange(dim)
        sums = np.bincount(bins.ravel(), weights=mantissa.ravel(), minlength=_EXPONENTS * dim).reshape(-1, dim)
        for shift, column in zip(*np.nonzero(sums)):
            totals[column] += int(sums[shift, column]) << int(shift)
    return totals


def add_sums(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b)]


def mean_of_sums(totals: list[int], n: int) -> np.ndarray:
    """float64 mean per column, correctly rounded from the exact sums of n rows."""
    return np.array([float(Fraction(total, n << _SCALE_BITS)) for total in totals], dtype=np.float64)
