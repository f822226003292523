"""Column names of the batches that flow between stages (pass 1 and pass 2).

Batches are Ray Data numpy batches: dict[str, np.ndarray], one row per item, no nulls. A
missing int is -1, a missing float NaN, a missing string "" (manifests.schema.to_table turns
them into nulls when a manifest is written).

Pass 1 rows:
  listing  -> INPUT_INDEX, URI, MEMBER, OFFSET, LENGTH             (made by the runner)
  ingest   -> SOURCE_COLUMNS + IMAGE                                (one row per source)
  propose  -> CANDIDATE_COLUMNS + CROP                              (one source row + one row per patch)
  score    -> CANDIDATE_COLUMNS + SCORE + EMBEDDING                 (crop dropped)

A "source row" has PATCH_INDEX == -1: it carries the source's manifest fields and, for an ok
source, the whole image as its crop, so the proxy scores and embeds whole images too (used by
the image-level `dedup` selector and the pool's accounting). A "patch row" has PATCH_INDEX >= 0
and carries SOURCE_ID, INPUT_INDEX and the patch fields; its other source fields are sentinels.
"""

from __future__ import annotations

import numpy as np

from ..manifests import schema

# Listing (where a source's bytes are). OFFSET/LENGTH locate a tar member's data; -1 for files.
INPUT_INDEX = "input_index"
URI = "uri"
MEMBER = "member"
OFFSET = "offset"
LENGTH = "length"
LISTING_COLUMNS = (INPUT_INDEX, URI, MEMBER, OFFSET, LENGTH)

SOURCE_ID = "source_id"
STATUS = "status"
WIDTH = "width"
HEIGHT = "height"
# Every sources.parquet column except duplicate_of (decided at the barrier), plus the location.
SOURCE_COLUMNS = tuple(f.name for f in schema.SOURCES if f.name != "duplicate_of") + (OFFSET, LENGTH)

IMAGE = "image"  # decoded RGB uint8 (H, W, 3); shape (0, 0, 3) when the source is not ok

PATCH_INDEX = "patch_index"  # -1 for the source row, 0.. for the source's patches
PATCH_ID = "patch_id"
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
MASK_RLE = "mask_rle"
PATCH_COLUMNS = (PATCH_INDEX, PATCH_ID, *BOX_COLUMNS, "mask_area", "predicted_iou", "stability_score", MASK_RLE)
CANDIDATE_COLUMNS = SOURCE_COLUMNS + PATCH_COLUMNS

CROP = "crop"  # uint8 (S, S, 3), S = score.image_size; zeros for sources that are not ok
SCORE = "score"  # float32 conditional-entropy estimate, nats per dimension
EMBEDDING = "embedding"  # float32 (D,) pooled proxy-encoder features, L2-normalised

# What the selection barrier holds of a patch row. Not the source fields (a patch row carries
# them as sentinels) and not its mask (~650 B as RLE, more than the rest together): masks are
# read back from the pass-1 parts only as patches.parquet is written.
BARRIER_PATCH_COLUMNS = (PATCH_ID, SOURCE_ID, *PATCH_COLUMNS[2:-1], SCORE, EMBEDDING)

# Sentinel per column kind, used when a row has no value for a column.
_INT_COLUMNS = {INPUT_INDEX, OFFSET, LENGTH, "byte_size", WIDTH, HEIGHT, PATCH_INDEX, *BOX_COLUMNS, "mask_area"}
_FLOAT_COLUMNS = {"predicted_iou", "stability_score", SCORE}


def sentinel(column: str):
    if column in _INT_COLUMNS:
        return -1
    if column in _FLOAT_COLUMNS:
        return float("nan")
    return ""


def take(batch: dict[str, np.ndarray], rows) -> dict[str, np.ndarray]:
    """Every column of `batch` at `rows` (an index array, slice or bool mask)."""
    return {name: values[rows] for name, values in batch.items()}


def concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batches with the same columns, joined in order. Each column's pieces are dropped from
    `batches` once joined, so the peak is the result plus one column, not twice the result."""
    return {name: np.concatenate([batch.pop(name) for batch in batches]) for name in list(batches[0])}


def to_batch(rows: list[dict], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Rows (dicts, possibly missing columns) -> a numpy batch with every column, sentinels
    filling the gaps. Array-valued extras (IMAGE, CROP, EMBEDDING) are passed through by the
    caller, not here."""
    batch = {}
    for col in columns:
        values = [row.get(col, sentinel(col)) for row in rows]
        if col in _INT_COLUMNS:
            batch[col] = np.asarray(values, dtype=np.int64)
        elif col in _FLOAT_COLUMNS:
            batch[col] = np.asarray(values, dtype=np.float32)
        else:
            batch[col] = np.asarray(values, dtype=object)
    return batch
