"""The one definition of every manifest column.

Auditors open these files on laptops, so this module (and all of `optidel.manifests`) needs
only pyarrow: no torch, no Ray. Stages import the column names from here.

Sentinels, not nulls, in pass-1 batches: Ray Data's numpy batches carry no nulls for ints, so
inside the pipeline a missing int is -1, a missing float NaN and a missing string "". The
manifest writer turns those sentinels back into nulls (see `to_table`).
"""

from __future__ import annotations

import pyarrow as pa

# 2: mask_rle became a self-contained {size, counts} struct, each manifest its own folder.
# 3: sources gained frame_index and frame_time (video frames as sources).
SCHEMA_VERSION = "3"

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
DROP_DUPLICATE = "near_duplicate"  # cosine-near a harder selected patch of its cluster
DROP_QUOTA = "cluster_quota"  # its cluster's quota was full
DROP_SOURCE_CAP = "source_cap"  # its source already gave the per-source maximum
DROP_OUTLIER = "outlier"  # in the trimmed extreme top tail of scores (usually noise)
DROP_DUPLICATE_SOURCE = "duplicate_source"  # its source is a byte duplicate of another
DROP_INCOMPLETE_GROUP = "incomplete_group"  # left over after grouping into full mosaics

# Who fills each column. The pipeline derives its per-stage column lists, sentinels and rows
# from these tags (stages/columns.py), so a new column is one line here plus the stage that
# fills it.
LISTING = "listing"  # the runner's listing of the pool (pipeline/inputs.py)
INGEST = "ingest"  # stages/ingest.py
PROPOSE = "propose"  # stages/propose.py
SCORE = "score"  # stages/score.py
BARRIER = "barrier"  # the selection barrier (pipeline/selection/)
COMPOSE = "compose"  # stages/compose.py
WRITER = "writer"  # the shard writer (stages/write.py)


# A mask as COCO's compressed RLE, whole: `size` is [height, width] of the source image (the
# mask covers all of it), `counts` the compressed counts string. pycocotools decodes it as it
# stands (optidel.manifests.decode_mask), without a join to sources for the size. `size` is a
# list, as in COCO's JSON. The fields are nullable because the struct is (a whole-image
# candidate has no mask), and pyarrow 26 trips on non-nullable children under a null struct:
# pa.nulls refuses to build the column, and a filtered read (lineage's) of a fixed-size-list
# child fails.
MASK_RLE = pa.struct([pa.field("size", pa.list_(pa.int32())), pa.field("counts", pa.string())])


def _schema(columns: list[tuple[str, pa.Field]]) -> tuple[pa.Schema, dict[str, str]]:
    """(filled by, field) pairs -> the schema, and each column's filler by name."""
    return pa.schema([f for _, f in columns]), {f.name: by for by, f in columns}


SOURCES, _SOURCES_BY = _schema(
    [
        (LISTING, pa.field("input_index", pa.int64(), nullable=False)),  # position in the sorted listing
        # sha256 of the bytes (of a video frame: of its size and RGB pixels, optidel.video.frame_id);
        # null when unreadable
        (INGEST, pa.field("source_id", pa.string())),
        (LISTING, pa.field("uri", pa.string(), nullable=False)),  # file, or the tar holding it
        (LISTING, pa.field("member", pa.string())),  # tar member name, null for plain files
        # A video frame's position at the stream's nominal rate, and its presentation time in
        # seconds (the exact key: optidel.video.pts_of); null for images.
        (INGEST, pa.field("frame_index", pa.int64())),
        (INGEST, pa.field("frame_time", pa.float64())),
        (INGEST, pa.field("byte_size", pa.int64())),
        (INGEST, pa.field("width", pa.int32())),
        (INGEST, pa.field("height", pa.int32())),
        (INGEST, pa.field("mode", pa.string())),  # PIL mode as stored (a video's pixel format), before RGB
        (INGEST, pa.field("format", pa.string())),  # PIL format name (JPEG, PNG, ...), or the video codec
        (INGEST, pa.field("status", pa.string(), nullable=False)),
        (INGEST, pa.field("error", pa.string())),
        (BARRIER, pa.field("duplicate_of", pa.string())),  # source_id of the first identical source
    ]
)

PATCHES, _PATCHES_BY = _schema(
    [
        (PROPOSE, pa.field("patch_id", pa.string(), nullable=False)),
        (PROPOSE, pa.field("source_id", pa.string(), nullable=False)),
        # Box in source pixels, half-open: [x0, x1) x [y0, y1), after the square margin.
        (PROPOSE, pa.field("x0", pa.int32(), nullable=False)),
        (PROPOSE, pa.field("y0", pa.int32(), nullable=False)),
        (PROPOSE, pa.field("x1", pa.int32(), nullable=False)),
        (PROPOSE, pa.field("y1", pa.int32(), nullable=False)),
        (PROPOSE, pa.field("mask_area", pa.int64())),  # pixels of the proposing mask
        # Share of the box's pixels inside that mask: low when the patch is mostly context
        # around a small region (the square margin), near 1 when the region fills it.
        (PROPOSE, pa.field("mask_fraction", pa.float32())),
        (PROPOSE, pa.field("predicted_iou", pa.float32())),
        (PROPOSE, pa.field("stability_score", pa.float32())),
        (PROPOSE, pa.field("mask_rle", MASK_RLE)),  # null for a whole-image candidate
        (SCORE, pa.field("score", pa.float32())),  # conditional-entropy estimate, nats per dimension
        (BARRIER, pa.field("cluster", pa.int32())),
        (BARRIER, pa.field("rank", pa.int32())),  # 0 = hardest among the pool's candidate patches
        (BARRIER, pa.field("selected", pa.bool_(), nullable=False)),
        (BARRIER, pa.field("reason", pa.string())),  # why dropped; null when selected
        (BARRIER, pa.field("sample_key", pa.string())),
        (BARRIER, pa.field("slot", pa.int32())),  # row-major position in the mosaic grid
    ]
)

SAMPLES, _SAMPLES_BY = _schema(
    [
        (BARRIER, pa.field("sample_key", pa.string(), nullable=False)),
        (WRITER, pa.field("shard", pa.string(), nullable=False)),  # file name under OUT/shards/
        (WRITER, pa.field("index_in_shard", pa.int32(), nullable=False)),
        (WRITER, pa.field("members", pa.list_(pa.string()), nullable=False)),  # tar member names
        (COMPOSE, pa.field("image_sha256", pa.string(), nullable=False)),
        (COMPOSE, pa.field("image_bytes", pa.int64(), nullable=False)),
        (COMPOSE, pa.field("width", pa.int32(), nullable=False)),
        (COMPOSE, pa.field("height", pa.int32(), nullable=False)),
        (BARRIER, pa.field("grid", pa.int32(), nullable=False)),  # tiles per side (M = grid * grid)
        (BARRIER, pa.field("patch_ids", pa.list_(pa.string()), nullable=False)),  # in slot order
        (BARRIER, pa.field("source_ids", pa.list_(pa.string()), nullable=False)),
        (BARRIER, pa.field("boxes", pa.list_(pa.list_(pa.int32(), 4)), nullable=False)),  # x0,y0,x1,y1
        (BARRIER, pa.field("slots", pa.list_(pa.int32()), nullable=False)),
        (BARRIER, pa.field("scores", pa.list_(pa.float32()), nullable=False)),
    ]
)

SHARDS, _SHARDS_BY = _schema(
    [
        (WRITER, pa.field("shard", pa.string(), nullable=False)),
        (WRITER, pa.field("nsamples", pa.int64(), nullable=False)),
        (WRITER, pa.field("bytes", pa.int64(), nullable=False)),
        (WRITER, pa.field("sha256", pa.string(), nullable=False)),
    ]
)

SCHEMAS = {"sources": SOURCES, "patches": PATCHES, "samples": SAMPLES, "shards": SHARDS}
_FILLED_BY = {"sources": _SOURCES_BY, "patches": _PATCHES_BY, "samples": _SAMPLES_BY, "shards": _SHARDS_BY}


def source_where(source: dict) -> str:
    """A sources.parquet row's location as people read it: the file, with its tar member when it
    came from a shard, and a video frame's time and index."""
    where = source["uri"] + (f" :: {source['member']}" if source.get("member") else "")
    if source.get("frame_time") is not None:
        where += f" @ {source['frame_time']:.3f} s (frame {source['frame_index']})"
    return where


def filled_by(name: str, *fillers: str) -> tuple[str, ...]:
    """The columns of manifest `name` that `fillers` fill, in schema order."""
    return tuple(column for column, by in _FILLED_BY[name].items() if by in fillers)


def mask_rle_array(counts, heights, widths) -> pa.StructArray:
    """The mask_rle column from the pipeline's form of it: COCO counts strings ("" for no mask,
    which becomes null) and the height and width of each mask's source image."""
    import pyarrow.compute as pc

    counts = pa.array(list(counts), pa.string())
    sizes = pa.array([[h, w] for h, w in zip(heights, widths)], pa.list_(pa.int32()))
    return pa.StructArray.from_arrays([sizes, counts], fields=list(MASK_RLE), mask=pc.equal(counts, ""))


def to_table(name: str, columns: dict) -> pa.Table:
    """Build manifest `name` from column lists/arrays, sentinels (-1, NaN, "") turned to nulls
    in the nullable int/float/string columns, columns cast and ordered as the schema says. A
    column given as an Arrow array (mask_rle, from mask_rle_array) is taken as it is."""
    schema = SCHEMAS[name]
    missing = [f.name for f in schema if f.name not in columns]
    if missing:
        raise ValueError(f"manifest {name}: missing columns {missing}")
    arrays = []
    for field in schema:
        values = columns[field.name]
        if isinstance(values, pa.Array):
            arrays.append(values.cast(field.type))
            continue
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
