"""Masks in patches.parquet: `mask_rle` is COCO's compressed RLE as a {size, counts} struct,
decodable on its own (no join to sources for the image size)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from pycocotools import mask as mask_utils


def decode_mask(row: Mapping[str, Any]) -> np.ndarray:
    """The boolean (height, width) mask of a patches.parquet row, over its whole source image.

    `row` is any mapping with a `mask_rle` entry: a dict from pyarrow's to_pylist or DuckDB, a
    pandas row. ValueError for a row without a mask (a whole-image candidate of the `random`
    and `dedup` selectors)."""
    rle = row["mask_rle"]
    if rle is None:
        raise ValueError(f"patch {row.get('patch_id', '?')}: no mask (a whole-image candidate)")
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    # pycocotools takes compressed counts as bytes; readers hand them over as str.
    coco = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(coco).astype(bool)
