"""Synthetic "video": a seeded camera moving over a still photo, for the demo pool
(pipeline/demo.py) and the eval's video pools (eval/pools.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def camera_path(photo: np.ndarray, n: int, size: int, rng: np.random.Generator):
    """A smooth random walk of a square window (pan + zoom) over the photo."""
    h, w = photo.shape[:2]
    side_max = min(h, w)
    side_min = max(side_max // 3, 16)
    cx, cy, side = w / 2, h / 2, (side_min + side_max) / 2
    vx = vy = vs = 0.0
    for _ in range(n):
        vx, vy = 0.8 * vx + rng.normal(0, side_max * 0.02), 0.8 * vy + rng.normal(0, side_max * 0.02)
        vs = 0.8 * vs + rng.normal(0, side_max * 0.01)
        side = float(np.clip(side + vs, side_min, side_max))
        cx = float(np.clip(cx + vx, side / 2, w - side / 2))
        cy = float(np.clip(cy + vy, side / 2, h - side / 2))
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = int(side)
        window = Image.fromarray(photo[y0 : y0 + s, x0 : x0 + s])
        yield np.asarray(window.resize((size, size), Image.Resampling.BICUBIC))
