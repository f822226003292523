"""Pass 2: group the selected patches M per output sample, and compose each group into one
mosaic image (grid x grid tiles on a size x size canvas) with its lineage."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from optidel import seeding, sources

from .crops import crop_resize
from .execution import Execution
from .write import sample_json

# Per-slot columns of a pass-2 input row: each row holds a list of M values, in slot order.
SLOT_COLUMNS = ("patch_ids", "source_ids", "uris", "members", "offsets", "lengths", "frame_times", "boxes", "scores")

# Fixed encoder settings: same pixels => same bytes (for a given Pillow/libjpeg/libwebp build).
# JPEG keeps full-resolution chroma (4:4:4) so colour does not bleed across tiles of different
# sources; PNG and WebP use fixed effort levels.
PNG_COMPRESS_LEVEL = 6
WEBP_METHOD = 4


def group_patches(source_ids, clusters, ranks, mosaic: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Indices of the selected patches (rows of the inputs) grouped `mosaic` per output sample,
    in slot order (one row per sample), plus the leftover indices that do not fill a group.

    Ranks are the patches' unique hardness ranks, the stable key that makes the grouping ignore
    input order. The leftover are the easiest patches, preferring those of a source that has
    more patches than there are groups. The rest are sorted by (seeded cluster order, seeded
    source order, rank) and dealt round-robin to the groups: a source's patches are adjacent in
    that order, so they land in different groups whenever it has no more patches than there are
    groups, and each group draws from M evenly spaced points of the cluster order.

    The source ids are text, or its UTF-8 bytes (which sort as the text does). The work is on
    numpy columns, no Python object per patch: the driver groups the whole budget.
    """
    names, source = np.unique(np.asarray(source_ids), return_inverse=True)  # source codes, in id order
    cluster = np.asarray(clusters, dtype=np.int64)
    rank = np.asarray(ranks, dtype=np.int64)
    n = len(rank)
    if source.shape != (n,) or cluster.shape != (n,):
        lengths = (len(source), len(cluster), n)
        raise ValueError(f"group_patches: source_ids, clusters and ranks differ in length {lengths}")
    if len(np.unique(rank)) != n:
        raise ValueError("group_patches: ranks must be unique (they are the patches' stable key)")
    if mosaic < 1:
        raise ValueError(f"group_patches: mosaic must be >= 1, got {mosaic}")
    n_groups = n // mosaic
    leftover = _leftover(source, rank, n - n_groups * mosaic, n_groups)
    kept = np.setdiff1d(np.arange(n), leftover)

    # A source sorts under the cluster of its hardest kept patch, so its patches stay adjacent.
    by_rank = kept[np.argsort(rank[kept])]
    _, hardest = np.unique(source[by_rank], return_index=True)
    home = np.zeros(len(names), dtype=np.int64)
    home[source[by_rank[hardest]]] = cluster[by_rank[hardest]]
    home_cluster = home[source[kept]]
    text = (name.decode() if isinstance(name, bytes) else name for name in names)  # one at a time: no copy as text
    source_draw = np.fromiter((seeding.derive(seed, "source", s) for s in text), dtype=np.uint64, count=len(names))
    homes, home_of = np.unique(home_cluster, return_inverse=True)
    cluster_draw = np.array([seeding.derive(seed, "cluster", c) for c in homes.tolist()], dtype=np.uint64)[home_of]
    # The deal's key, last the first: (cluster's draw, cluster, source's draw, source id, rank).
    dealt = kept[np.lexsort((rank[kept], source[kept], source_draw[source[kept]], home_cluster, cluster_draw))]
    groups = dealt.reshape(mosaic, n_groups).T.copy()  # group g: dealt[g::n_groups]
    # The deal puts the first cluster block in slot 0 of every group; shuffle slots per group.
    for g, members in enumerate(groups):
        groups[g] = members[seeding.rng(seed, "slots", int(rank[members].min())).permutation(mosaic)]
    return groups, sorted(leftover, key=lambda i: rank[i])


def _leftover(source: np.ndarray, rank: np.ndarray, count: int, n_groups: int) -> list[int]:
    """`count` rows to leave out: the easiest of a source with more rows than groups while there
    is one (it cannot spread over the groups anyway), else the easiest."""
    remaining = np.ones(len(rank), dtype=bool)
    per_source = np.bincount(source, minlength=source.max() + 1 if len(source) else 0)
    out = []
    for _ in range(count):
        crowded = remaining & (per_source[source] > n_groups)
        candidates = np.flatnonzero(crowded if crowded.any() else remaining)
        i = int(candidates[np.argmax(rank[candidates])])
        remaining[i] = False
        per_source[source[i]] -= 1
        out.append(i)
    return out


def sample_key(patch_ids: Sequence[str]) -> str:
    """A sample's key, from its patch ids in slot order: 24 hex digits of their sha256."""
    return hashlib.sha256("\n".join(patch_ids).encode()).hexdigest()[:24]


def tile_boxes(size: int, grid: int) -> list[tuple[int, int, int, int]]:
    """Tile rectangles (x0, y0, x1, y1), half-open, row-major slot order, edges at
    round(i * size / grid) (halves up): every canvas pixel lies in exactly one tile."""
    edges = [(2 * i * size + grid) // (2 * grid) for i in range(grid + 1)]
    return [(edges[c], edges[r], edges[c + 1], edges[r + 1]) for r in range(grid) for c in range(grid)]


class Compose:
    """Pass-2 stage: rows = samples with per-slot lists (SLOT_COLUMNS) -> encoded mosaics.

    Output columns: sample_key, image (encoded bytes), json (the sample's lineage, UTF-8),
    image_sha256, image_bytes, width, height.
    """

    # Samples per Ray task: enough to amortise the task, small enough to stream.
    execution = Execution(batch_size=16)

    def __init__(self, config, grid: int, max_pixels: int, min_side: int):
        self.config = config  # OutputConfig
        self.grid = grid
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.tiles = tile_boxes(config.size, grid)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = [str(k) for k in batch["sample_key"]]
        rows = [{col: list(batch[col][r]) for col in SLOT_COLUMNS} for r in range(len(keys))]
        for key, row in zip(keys, rows):
            lengths = {col: len(row[col]) for col in SLOT_COLUMNS}
            if set(lengths.values()) != {len(self.tiles)}:
                raise ValueError(
                    f"sample {key}: expected {len(self.tiles)} slots in every column, got {lengths}"
                )
        tiles = self._cut_tiles(rows)
        out = {"sample_key": [], "image": [], "json": [], "image_sha256": [], "image_bytes": [], "width": [], "height": []}
        for r, (key, row) in enumerate(zip(keys, rows)):
            canvas = np.zeros((self.config.size, self.config.size, 3), dtype=np.uint8)
            for slot, (x0, y0, x1, y1) in enumerate(self.tiles):
                canvas[y0:y1, x0:x1] = tiles[r, slot]
            data = self._encode(canvas)
            out["sample_key"].append(key)
            out["image"].append(data)
            out["json"].append(self._lineage(key, row))
            out["image_sha256"].append(hashlib.sha256(data).hexdigest())
            out["image_bytes"].append(len(data))
            out["width"].append(self.config.size)
            out["height"].append(self.config.size)
        return {
            "sample_key": np.asarray(out["sample_key"], dtype=object),
            "image": _object_array(out["image"]),
            "json": _object_array(out["json"]),
            "image_sha256": np.asarray(out["image_sha256"], dtype=object),
            "image_bytes": np.asarray(out["image_bytes"], dtype=np.int64),
            "width": np.asarray(out["width"], dtype=np.int32),
            "height": np.asarray(out["height"], dtype=np.int32),
        }

    def _cut_tiles(self, rows: list[dict]) -> dict[tuple[int, int], np.ndarray]:
        """Every tile of the batch, keyed (row, slot). Each distinct source is read and decoded
        once (a video's frames in one pass), and its pixels are let go as soon as its tiles
        are cut."""
        uses: dict[str, list[tuple[int, int]]] = {}
        for r, row in enumerate(rows):
            for slot, source_id in enumerate(row["source_ids"]):
                uses.setdefault(str(source_id), []).append((r, slot))
        places = list(uses.values())
        reads = [self._source_read(source_id, rows[r], slot) for source_id, ((r, slot), *_) in uses.items()]
        tiles = {}
        try:
            for i, image in sources.read_all(reads, max_pixels=self.max_pixels, min_side=self.min_side):
                for r, slot in places[i]:
                    x0, y0, x1, y1 = self.tiles[slot]
                    box = tuple(int(v) for v in rows[r]["boxes"][slot])
                    try:
                        tiles[r, slot] = crop_resize(image, box, (x1 - x0, y1 - y0))
                    except ValueError as exc:
                        patch = rows[r]["patch_ids"][slot]
                        raise ValueError(f"{rows[r]['uris'][slot]}: patch {patch}: {exc}") from exc
        except sources.SourceChanged as exc:
            raise ValueError(f"{exc}; the input pool changed between passes") from None
        return tiles

    @staticmethod
    def _source_read(source_id: str, row: dict, slot: int) -> sources.SourceRead:
        uri, member = str(row["uris"][slot]), str(row["members"][slot])
        where = f"{uri} (member {member})" if member else uri
        offset, length, frame_time = int(row["offsets"][slot]), int(row["lengths"][slot]), float(row["frame_times"][slot])
        return sources.SourceRead(where, uri, offset, length, frame_time, source_id)

    def _encode(self, canvas: np.ndarray) -> bytes:
        image = Image.fromarray(canvas, "RGB")
        buf = io.BytesIO()
        fmt, quality = self.config.format, self.config.quality
        if fmt == "jpg":
            image.save(
                buf, format="JPEG", quality=quality, optimize=False, progressive=False, subsampling=0
            )
        elif fmt == "png":
            image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
        elif fmt == "webp":
            image.save(buf, format="WEBP", quality=quality, method=WEBP_METHOD, lossless=False)
        else:
            raise ValueError(f"output.format {fmt!r}: expected jpg, png or webp")
        return buf.getvalue()

    def _lineage(self, key: str, row: dict) -> bytes:
        lineage = {
            "sample_key": key,
            "grid": self.grid,
            "size": self.config.size,
            "patch_ids": [str(p) for p in row["patch_ids"]],
            "source_ids": [str(s) for s in row["source_ids"]],
            "boxes": [[int(v) for v in box] for box in row["boxes"]],
            "slots": list(range(len(self.tiles))),
            "tiles": [list(t) for t in self.tiles],
            # JSON has no NaN: an unscored slot (whole-image baselines) is null.
            "scores": [float(np.float32(s)) if np.isfinite(s) else None for s in row["scores"]],
        }
        return sample_json(lineage)


def _object_array(values: list) -> np.ndarray:
    # np.asarray would turn a list of bytes into a fixed-width bytes array that strips trailing
    # NULs; an object array keeps each value whole.
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
