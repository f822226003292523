"""Decoding the manifests' mask RLE back to pixels, for tests that compare masks."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def rle_to_mask(rle: str, height: int, width: int) -> np.ndarray:
    return mask_utils.decode({"size": [height, width], "counts": rle.encode("ascii")}).astype(bool)
