"""Column names of the batches that flow between stages (pass 1 and pass 2), derived from the
manifest schema (manifests/schema.py tags each column with the stage that fills it) plus the few
columns that live only inside the pipeline (the listing's location, PATCH_INDEX, pixels).

Batches are Ray Data numpy batches: dict[str, np.ndarray], one row per item, no nulls. A
missing int is -1, a missing float NaN, a missing string "" (manifests.schema.to_table turns
them into nulls when a manifest is written).

Pass 1 rows:
  listing  -> INPUT_INDEX, URI, MEMBER, OFFSET, LENGTH, VIDEO_SAMPLE  (made by the runner)
  ingest   -> SOURCE_COLUMNS + IMAGE                                (one row per source)
  propose  -> CANDIDATE_COLUMNS + CROP                              (one source row + one row per patch)
  score    -> CANDIDATE_COLUMNS + SCORE + SCORE_EARLY + EMBEDDING   (crop dropped)

A "source row" has PATCH_INDEX == -1: it carries the source's manifest fields and, for an ok
source, the whole image as its crop, so the proxy scores and embeds whole images too (used by
the image-level `dedup` selector and the pool's accounting). A "patch row" has PATCH_INDEX >= 0
and carries SOURCE_ID, INPUT_INDEX and the patch fields; its other source fields are sentinels.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..manifests import schema

# Listing (where a source's bytes are). OFFSET/LENGTH locate a tar member's data; -1 for files.
# VIDEO_SAMPLE k: the source is the video's frame on screen at start + k / fps; -1 for images.
INPUT_INDEX = "input_index"
URI = "uri"
MEMBER = "member"
OFFSET = "offset"
LENGTH = "length"
VIDEO_SAMPLE = "video_sample"
LISTING_COLUMNS = (INPUT_INDEX, URI, MEMBER, OFFSET, LENGTH, VIDEO_SAMPLE)

SOURCE_ID = "source_id"
STATUS = "status"
WIDTH = "width"
HEIGHT = "height"
# The sources.parquet columns of the listing and ingest (not the barrier's), plus the location.
SOURCE_COLUMNS = schema.filled_by("sources", schema.LISTING, schema.INGEST) + (OFFSET, LENGTH, VIDEO_SAMPLE)
FRAME_TIME = "frame_time"  # a video frame's time in seconds (float64: it must give back the exact timestamp)

IMAGE = "image"  # decoded RGB uint8 (H, W, 3); shape (0, 0, 3) when the source is not ok

PATCH_INDEX = "patch_index"  # -1 for the source row, 0.. for the source's patches
PATCH_ID = "patch_id"
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
# In batches and pass-1 parts a mask is its COCO counts string alone (it covers the source
# image, whose size is on the source row); patches.parquet's mask_rle struct adds the size
# (pipeline/selection/rows.py).
MASK_RLE = "mask_rle"
# The patches.parquet columns the proposer fills (but the source's own), after PATCH_INDEX.
PATCH_COLUMNS = (PATCH_INDEX, *(c for c in schema.filled_by("patches", schema.PROPOSE) if c != SOURCE_ID))
CANDIDATE_COLUMNS = SOURCE_COLUMNS + PATCH_COLUMNS

CROP = "crop"  # uint8 (S, S, 3), S = score.image_size; zeros for sources that are not ok
SCORE = "score"  # float32 conditional-entropy estimate, nats per dimension
# float32, the same estimate and masks under the proxy's early checkpoint (NaN: the proxy has
# none); score_early - score is the row's learnability (stages/score.py). A candidates column
# (pass-1 parts) that no selector reads yet, so neither the barrier's columns nor
# patches.parquet carry it: a selector that ranks by it adds it to BARRIER_PATCH_COLUMNS.
SCORE_EARLY = "score_early"
EMBEDDING = "embedding"  # float32 (D,) pooled proxy-encoder features, L2-normalised

# What the selection barrier holds of a patch row. Not the source fields (a patch row carries
# them as sentinels) and not its mask (~650 B as RLE, more than the rest together): masks are
# read back from the pass-1 parts only as patches.parquet is written.
BARRIER_PATCH_COLUMNS = (
    *(c for c in schema.filled_by("patches", schema.PROPOSE, schema.SCORE) if c != MASK_RLE),
    EMBEDDING,
)

# Batch dtype and sentinel per column, from the manifest's type: ints travel as int64, floats
# as float32 (float64 ones as float64), everything else as Python objects.
_KINDS = {
    "int": (np.int64, -1),
    "float": (np.float32, float("nan")),
    "double": (np.float64, float("nan")),
    "object": (object, ""),
}


def _kind(type_: pa.DataType) -> str:
    if pa.types.is_integer(type_):
        return "int"
    if pa.types.is_float64(type_):
        return "double"
    return "float" if pa.types.is_floating(type_) else "object"


_KIND_OF = {
    **{field.name: _kind(field.type) for field in (*schema.SOURCES, *schema.PATCHES)},
    OFFSET: "int",  # the pipeline's own columns
    LENGTH: "int",
    VIDEO_SAMPLE: "int",
    PATCH_INDEX: "int",
}


def sentinel(column: str):
    """The value that stands for "none" in a batch column (manifests turn it into null)."""
    return _KINDS[_KIND_OF.get(column, "object")][1]


def sentinel_columns(columns, n: int) -> dict[str, np.ndarray]:
    """n rows of sentinels in each of `columns`, with the batch dtypes."""
    return {col: np.full(n, sentinel(col), dtype=_KINDS[_KIND_OF.get(col, "object")][0]) for col in columns}


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
    return {
        col: np.asarray([row.get(col, sentinel(col)) for row in rows], dtype=_KINDS[_KIND_OF.get(col, "object")][0])
        for col in columns
    }
