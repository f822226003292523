"""Paired comparisons of two arms: the mean per-seed difference of mIoU with a bootstrap 95%
interval, resampling seeds and held-out images together.

The design is paired: a seed fixes the initial weights, the masks and the data order for every
arm, and every arm is tested on the same images, so arm A's unit of seed s is compared with arm
B's unit of seed s on the same resampled images. Both sources of noise count: the seeds (how
pre-training happened to go) and the held-out images (which images happened to be in the test
split). Each bootstrap draw takes seeds with replacement and image weights from one multinomial
draw (images with replacement), recomputes every chosen unit's mIoU from its per-image
intersection/union counts, and averages the paired differences. The interval is the draws'
2.5th and 97.5th percentiles. numpy only.
"""

from __future__ import annotations

import numpy as np

from optidel import seeding
from .metrics import class_iou

DRAWS = 4000


def paired_difference(counts_a: np.ndarray, counts_b: np.ndarray, draws: int = DRAWS, seed: int = 0) -> dict:
    """{"diff": mean over seeds of mIoU(A) - mIoU(B), "ci95": [low, high]} from per-image
    `iou_counts` of shape (seeds, images, 2, 2), seed s of A paired with seed s of B."""
    a, b = np.asarray(counts_a, dtype=np.float64), np.asarray(counts_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 4 or a.shape[2:] != (2, 2) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"expected two count arrays of one shape (seeds, images, 2, 2), got {a.shape} and {b.shape}")
    n_seeds, n_images = a.shape[:2]
    draws_rng = seeding.rng(seed, "paired-bootstrap", n_seeds, n_images)
    weights = draws_rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=draws)  # (B, I)
    chosen_seeds = draws_rng.integers(n_seeds, size=(draws, n_seeds))  # (B, S)
    # Per draw and seed, the difference of the two units' mIoU on the draw's images.
    per_seed = _miou(np.einsum("bi,sicu->bscu", weights, a)) - _miou(np.einsum("bi,sicu->bscu", weights, b))
    boot = np.take_along_axis(per_seed, chosen_seeds, axis=1).mean(axis=1)
    diff = float(np.mean(_miou(a.sum(axis=1)) - _miou(b.sum(axis=1))))
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"diff": diff, "ci95": [float(low), float(high)]}


def _miou(counts: np.ndarray) -> np.ndarray:
    """mIoU of every (2, 2) count block in `counts` (..., 2, 2)."""
    return class_iou(counts).mean(axis=-1)
