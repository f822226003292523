"""Cutting a box out of a decoded image and resizing it: the one definition, used when patches
are cropped for the proxy (pass 1) and when tiles are re-cut for the mosaics (pass 2), so a
tile can always be traced back to exactly the pixels its box names."""

from __future__ import annotations

import numpy as np
from PIL import Image


def crop_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int | tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> the half-open box [x0, x1) x [y0, y1) resized to (size, size, 3),
    or to (height, width, 3) when size is a (width, height) pair.

    Bicubic through PIL: deterministic, and antialiased when shrinking, which big endoscopy
    frames cut to small tiles need."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = image.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"box {(x0, y0, x1, y1)} outside image of size {w}x{h}")
    width, height = (size, size) if isinstance(size, int) else size
    region = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    return np.asarray(region.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)
