"""The one definition of every manifest column.

Auditors open these files on laptops, so this module (and all of `optidel.manifests`) needs
only pyarrow: no torch, no Ray. Stages import the column names from here.

Sentinels, not nulls, in pass-1 batches: Ray Data's numpy batches carry no nulls for ints, so
inside the pipeline a missing int is -1, a missing float NaN and a missing string "". The
manifest writer turns those sentinels back into nulls (see `to_table`).
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1"

# Source status values (sources.parquet `status`).
OK = "ok"
CORRUPT = "corrupt"  # bytes that do not decode as an image (truncated, zero-byte, not an image)
UNSUPPORTED = "unsupported"  # decodes, but a kind we refuse (e.g. decompression bomb)
TOO_SMALL = "too_small"
DUPLICATE = "duplicate"  # byte-identical to an earlier source; see duplicate_of
MISSING = "missing"  # listed (e.g. in a list file) but not readable
FAILED = "failed"  # decoded, but a pipeline stage raised on it (error says which and why)
STATUSES = (OK, CORRUPT, UNSUPPORTED, TOO_SMALL, DUPLICATE, MISSING, FAILED)

# Why a candidate patch was not selected (patches.parquet `reason`).
DROP_BUDGET = "budget"  # ranked below the budget
DROP_DUPLICATE = "near_duplicate"  # cosine-near a harder selected patch
DROP_QUOTA = "cluster_quota"  # its cluster's quota was full
DROP_SOURCE_CAP = "source_cap"  # its source already gave the per-source maximum
DROP_OUTLIER = "outlier"  # in the trimmed extreme top tail of scores (usually noise)
DROP_DUPLICATE_SOURCE = "duplicate_source"  # its source is a byte duplicate of another
DROP_INCOMPLETE_GROUP = "incomplete_group"  # left over after grouping into full mosaics

SOURCES = pa.schema(
    [
        pa.field("input_index", pa.int64(), nullable=False),  # position in the sorted listing
        pa.field("source_id", pa.string()),  # sha256 of the bytes; null when unreadable
        pa.field("uri", pa.string(), nullable=False),  # file, or the tar holding it
        pa.field("member", pa.string()),  # tar member name, null for plain files
        pa.field("byte_size", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("mode", pa.string()),  # PIL mode as stored, before conversion to RGB
        pa.field("format", pa.string()),  # PIL format name (JPEG, PNG, ...)
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("duplicate_of", pa.string()),  # source_id of the first identical source
    ]
)

PATCHES = pa.schema(
    [
        pa.field("patch_id", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        # Box in source pixels, half-open: [x0, x1) x [y0, y1), after the square margin.
        pa.field("x0", pa.int32(), nullable=False),
        pa.field("y0", pa.int32(), nullable=False),
        pa.field("x1", pa.int32(), nullable=False),
        pa.field("y1", pa.int32(), nullable=False),
        pa.field("mask_area", pa.int64()),  # pixels of the proposing mask
        pa.field("predicted_iou", pa.float32()),
        pa.field("stability_score", pa.float32()),
        pa.field("mask_rle", pa.string()),  # COCO compressed RLE counts, size = (height, width)
        pa.field("score", pa.float32()),  # conditional-entropy estimate, nats per dimension
        pa.field("cluster", pa.int32()),
        pa.field("rank", pa.int32()),  # 0 = hardest among the pool's candidate patches
        pa.field("selected", pa.bool_(), nullable=False),
        pa.field("reason", pa.string()),  # why dropped; null when selected
        pa.field("sample_key", pa.string()),
        pa.field("slot", pa.int32()),  # row-major position in the mosaic grid
    ]
)

SAMPLES = pa.schema(
    [
        pa.field("sample_key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),  # file name under OUT/shards/
        pa.field("index_in_shard", pa.int32(), nullable=False),
        pa.field("members", pa.list_(pa.string()), nullable=False),  # tar member names
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("image_bytes", pa.int64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("grid", pa.int32(), nullable=False),  # tiles per side (M = grid * grid)
        pa.field("patch_ids", pa.list_(pa.string()), nullable=False),  # in slot order
        pa.field("source_ids", pa.list_(pa.string()), nullable=False),
        pa.field("boxes", pa.list_(pa.list_(pa.int32(), 4)), nullable=False),  # x0,y0,x1,y1
        pa.field("slots", pa.list_(pa.int32()), nullable=False),
        pa.field("scores", pa.list_(pa.float32()), nullable=False),
    ]
)

SHARDS = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("nsamples", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
    ]
)

SCHEMAS = {"sources": SOURCES, "patches": PATCHES, "samples": SAMPLES, "shards": SHARDS}


def to_table(name: str, columns: dict) -> pa.Table:
    """Build manifest `name` from column lists/arrays, sentinels (-1, NaN, "") turned to nulls
    in the nullable int/float/string columns, columns cast and ordered as the schema says."""
    schema = SCHEMAS[name]
    missing = [f.name for f in schema if f.name not in columns]
    if missing:
        raise ValueError(f"manifest {name}: missing columns {missing}")
    arrays = []
    for field in schema:
        values = columns[field.name]
        # numpy columns convert without a Python object per value (the barrier holds the whole
        # pool's patches); lists (e.g. samples' list columns) convert as they are.
        array = pa.array(values if getattr(values, "ndim", 0) == 1 else list(values))
        if field.nullable:
            array = _sentinels_to_null(array)
        arrays.append(array.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _sentinels_to_null(array: pa.Array) -> pa.Array:
    import pyarrow.compute as pc

    if pa.types.is_integer(array.type):
        return pc.if_else(pc.equal(array, -1), pa.scalar(None, array.type), array)
    if pa.types.is_floating(array.type):
        return pc.if_else(pc.is_nan(array), pa.scalar(None, array.type), array)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return pc.if_else(pc.equal(array, ""), pa.scalar(None, array.type), array)
    return array
