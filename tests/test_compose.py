"""Grouping selected patches into mosaics, and composing real kvasir-seg images into them."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from optidel import imageio, seeding
from optidel.pipeline.config import OutputConfig
from optidel.stages.compose import Compose, group_patches, sample_key, tile_boxes
from optidel.stages.crops import crop_resize

LIMITS = {"max_pixels": 100_000_000, "min_side": 32}


# --- grouping ---------------------------------------------------------------------------------


def test_groups_are_full_and_mix_sources_and_clusters():
    # 10 sources x 4 patches, 4 clusters of 10; sources straddle clusters.
    n = 40
    sources = np.array([f"s{i // 4}" for i in range(n)], dtype=object)
    clusters = np.array([i % 4 if i % 3 else (i // 10) for i in range(n)])
    ranks = np.random.default_rng(0).permutation(n)
    groups, leftover = group_patches(sources, clusters, ranks, 4, seed=0)
    assert leftover == []
    assert len(groups) == 10 and all(len(g) == 4 for g in groups)
    assert sorted(i for g in groups for i in g) == list(range(n))
    for g in groups:
        assert len(set(sources[g])) == 4


def test_groups_spread_clusters_when_they_are_balanced():
    n = 40
    sources = np.array([f"s{i}" for i in range(n)], dtype=object)
    clusters = np.repeat(np.arange(4), 10)
    groups, _ = group_patches(sources, clusters, np.arange(n), 4, seed=3)
    assert all(len(set(clusters[g])) == 4 for g in groups)


def test_leftover_are_the_easiest_and_relieve_crowded_sources():
    sources = np.array(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"], dtype=object)
    groups, leftover = group_patches(sources, np.zeros(10), np.arange(10), 4, seed=0)
    assert [len(g) for g in groups] == [4, 4]
    assert leftover == [8, 9]  # ranks 8 and 9 are the easiest

    # One group possible; source "a" has two patches, one of which must go for a clean group.
    sources = np.array(["a", "a", "b", "c", "d"], dtype=object)
    groups, leftover = group_patches(sources, np.zeros(5), np.array([0, 1, 2, 3, 4]), 4, seed=0)
    assert leftover == [1]
    assert sorted(sources[groups[0]]) == ["a", "b", "c", "d"]


def test_grouping_is_seeded_and_ignores_row_order():
    n = 48
    rng = np.random.default_rng(1)
    sources = np.array([f"s{i // 3}" for i in range(n)], dtype=object)
    clusters = rng.integers(0, 6, n)
    ranks = rng.permutation(1000)[:n]

    def by_rank(groups, leftover, r):
        return [[int(r[i]) for i in g] for g in groups], sorted(int(r[i]) for i in leftover)

    base = by_rank(*group_patches(sources, clusters, ranks, 9, seed=0), ranks)
    perm = rng.permutation(n)
    shuffled = by_rank(*group_patches(sources[perm], clusters[perm], ranks[perm], 9, seed=0), ranks[perm])
    other_seed = by_rank(*group_patches(sources, clusters, ranks, 9, seed=1), ranks)
    assert base == shuffled
    assert base[0] != other_seed[0]
    assert len(base[0]) == 5 and len(base[1]) == 3


def test_unavoidable_same_source_pairs_still_fill_groups():
    sources = np.array(["a"] * 4 + ["b"] * 4, dtype=object)
    groups, leftover = group_patches(sources, np.zeros(8), np.arange(8), 4, seed=0)
    assert leftover == [] and sorted(i for g in groups for i in g) == list(range(8))
    assert all(Counter(sources[g]) == {"a": 2, "b": 2} for g in groups)


def plain_group_patches(sources, clusters, ranks, mosaic: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """group_patches as its docstring states it, a Python object per patch: the reference."""
    n = len(ranks)
    n_groups = n // mosaic
    remaining, per_source, leftover = set(range(n)), Counter(sources.tolist()), []
    for _ in range(n - n_groups * mosaic):
        crowded = [i for i in remaining if per_source[sources[i]] > n_groups]
        i = max(crowded or remaining, key=lambda j: ranks[j])
        remaining.discard(i)
        per_source[sources[i]] -= 1
        leftover.append(i)
    home = {}
    for i in sorted(remaining, key=lambda j: ranks[j]):
        home.setdefault(sources[i], int(clusters[i]))

    def deal_key(i: int):
        c, s = home[sources[i]], sources[i]
        return (seeding.derive(seed, "cluster", c), c, seeding.derive(seed, "source", s), s, int(ranks[i]))

    dealt = sorted(remaining, key=deal_key)
    groups = [dealt[g::n_groups] for g in range(n_groups)]
    for g, members in enumerate(groups):
        order = seeding.rng(seed, "slots", min(int(ranks[i]) for i in members)).permutation(mosaic)
        groups[g] = [members[j] for j in order]
    return groups, sorted(leftover, key=lambda i: ranks[i])


@pytest.mark.parametrize("seed", range(6))
def test_grouping_is_the_plain_one_on_text_and_on_utf8_ids(seed):
    """The numpy grouping against the plain one, on pools with crowded sources (more patches
    than groups), a remainder to leave out, several clusters and non-ASCII ids."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    sources = np.array([f"s{i}-é" for i in rng.integers(0, max(n // 3, 1), n)], dtype=object)
    clusters, ranks = rng.integers(0, 5, n), rng.permutation(10 * n)[:n]
    expected = plain_group_patches(sources, clusters, ranks, 4, seed)
    for ids in (sources, np.char.encode(sources.astype(str), "utf-8")):
        groups, leftover = group_patches(ids, clusters, ranks, 4, seed)
        assert (groups.tolist(), leftover) == expected


def test_sample_key_comes_from_content():
    key = sample_key(["p1", "p2", "p3", "p4"])
    assert len(key) == 24 and "." not in key and int(key, 16) >= 0
    assert key == sample_key(("p1", "p2", "p3", "p4"))
    assert key != sample_key(["p2", "p1", "p3", "p4"])  # slot order is part of the sample
    assert key != sample_key(["p1", "p2", "p3", "p5"])


@pytest.mark.parametrize("size,grid", [(224, 2), (224, 3), (64, 4), (31, 3), (50, 1)])
def test_tile_boxes_partition_the_canvas(size, grid):
    boxes = tile_boxes(size, grid)
    assert len(boxes) == grid * grid
    cover = np.zeros((size, size), dtype=np.int32)
    for x0, y0, x1, y1 in boxes:
        cover[y0:y1, x0:x1] += 1
    assert np.all(cover == 1)
    sides = {x1 - x0 for x0, _, x1, _ in boxes} | {y1 - y0 for _, y0, _, y1 in boxes}
    assert max(sides) - min(sides) <= 1
    assert [(b[1], b[0]) for b in boxes] == sorted((b[1], b[0]) for b in boxes)  # row-major


# --- composing real images --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources(kvasir):
    """The four smallest kvasir images: path, source id and decoded pixels."""
    paths = sorted(kvasir.glob("images/*.jpg"), key=lambda p: (p.stat().st_size, p.name))[:4]
    out = []
    for path in paths:
        data = path.read_bytes()
        decoded = imageio.decode(data, **LIMITS)
        out.append({"uri": str(path), "source_id": imageio.sha256_hex(data), "image": decoded.image})
    return out


def sample_row(sources, picks, grid):
    """A pass-2 row: picks = [(source index, box)] in slot order."""
    patch_ids = [f"{sources[s]['source_id'][:16]}-{box[0]}-{box[1]}" for s, box in picks]
    return {
        "sample_key": sample_key(patch_ids),
        "patch_ids": patch_ids,
        "source_ids": [sources[s]["source_id"] for s, _ in picks],
        "uris": [sources[s]["uri"] for s, _ in picks],
        "members": ["" for _ in picks],
        "offsets": [-1 for _ in picks],
        "lengths": [-1 for _ in picks],
        "frame_times": [float("nan") for _ in picks],  # images, not video frames
        "boxes": [list(box) for _, box in picks],
        "scores": [0.25 + 0.125 * slot for slot in range(grid * grid)],
    }


def to_batch(rows):
    batch = {}
    for col in rows[0]:
        values = np.empty(len(rows), dtype=object)
        values[:] = [r[col] for r in rows]
        batch[col] = values
    return batch


def two_samples(sources):
    # Source 0 appears in both samples; boxes of several shapes, one reaching the image edge.
    h0, w0 = sources[0]["image"].shape[:2]
    first = [(0, (10, 20, 110, 120)), (1, (0, 0, 64, 64)), (2, (50, 40, 250, 240)), (3, (5, 5, 37, 37))]
    second = [
        (3, (100, 100, 180, 180)), (0, (w0 - 90, h0 - 90, w0, h0)), (1, (30, 30, 90, 90)), (2, (0, 0, 32, 32))
    ]
    return [sample_row(sources, first, 2), sample_row(sources, second, 2)]


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_png_mosaic_tiles_are_exact_crops_with_lineage(sources):
    rows = two_samples(sources)
    compose = Compose(OutputConfig(size=96, format="png"), grid=2, **LIMITS)
    out = compose(to_batch(rows))
    assert list(out["sample_key"]) == [r["sample_key"] for r in rows]
    tiles = tile_boxes(96, 2)
    for i, row in enumerate(rows):
        data = out["image"][i]
        assert out["image_sha256"][i] == imageio.sha256_hex(data)
        assert (out["width"][i], out["height"][i]) == (96, 96)
        canvas = decode_png(data)
        assert canvas.shape == (96, 96, 3)
        by_id = {s["source_id"]: s["image"] for s in sources}
        for slot, (x0, y0, x1, y1) in enumerate(tiles):
            expected = crop_resize(by_id[row["source_ids"][slot]], row["boxes"][slot], x1 - x0)
            assert np.array_equal(canvas[y0:y1, x0:x1], expected)

        lineage = json.loads(out["json"][i].decode())
        assert lineage["sample_key"] == row["sample_key"]
        assert lineage["grid"] == 2 and lineage["size"] == 96
        assert lineage["patch_ids"] == row["patch_ids"]
        assert lineage["source_ids"] == row["source_ids"]
        assert lineage["boxes"] == row["boxes"]
        assert lineage["slots"] == [0, 1, 2, 3]
        assert lineage["tiles"] == [list(t) for t in tiles]
        assert lineage["scores"] == pytest.approx(row["scores"])
        assert out["json"][i] == json.dumps(lineage, sort_keys=True, separators=(",", ":")).encode()


def test_jpeg_mosaic_is_close_and_byte_reproducible(sources):
    rows = two_samples(sources)
    compose = Compose(OutputConfig(size=96, format="jpg", quality=95), grid=2, **LIMITS)
    out = compose(to_batch(rows))
    exact = Compose(OutputConfig(size=96, format="png"), grid=2, **LIMITS)(to_batch(rows))
    for i in range(2):
        assert out["image"][i][:3] == b"\xff\xd8\xff"
        diff = np.abs(decode_png(out["image"][i]).astype(int) - decode_png(exact["image"][i]).astype(int))
        assert diff.mean() < 3.0
    # Same bytes whatever else is in the batch and in which order.
    alone = compose(to_batch([rows[1]]))
    reversed_ = compose(to_batch(rows[::-1]))
    assert alone["image"][0] == out["image"][1] == reversed_["image"][0]
    assert reversed_["json"][1] == out["json"][0]


def test_webp_and_uneven_grid(sources):
    h, w = sources[1]["image"].shape[:2]
    box = (0, 0, min(h, w), min(h, w))
    row = sample_row(sources, [(i % 4, box if i % 4 == 1 else (0, 0, 120, 120)) for i in range(9)], 3)
    for fmt in ("webp", "png"):
        out = Compose(OutputConfig(size=64, format=fmt, quality=80), grid=3, **LIMITS)(to_batch([row]))
        canvas = decode_png(out["image"][0])
        assert canvas.shape == (64, 64, 3)
        by_id = {s["source_id"]: s["image"] for s in sources}
        for slot, (x0, y0, x1, y1) in enumerate(tile_boxes(64, 3)):
            tile = canvas[y0:y1, x0:x1].astype(int)
            assert tile.shape[:2] == (y1 - y0, x1 - x0)
            # Tiles of 21 or 22 px: compare with the square crop at the tile's width.
            square = crop_resize(by_id[row["source_ids"][slot]], row["boxes"][slot], x1 - x0).astype(int)
            rows_ = min(tile.shape[0], square.shape[0])
            assert np.abs(tile[:rows_] - square[:rows_]).mean() < (12 if fmt == "webp" else 8)


def test_changed_source_is_detected(sources, tmp_path):
    moved = tmp_path / "frame.jpg"
    shutil.copyfile(sources[0]["uri"], moved)
    local = [dict(sources[0], uri=str(moved))] + sources[1:]
    row = sample_row(local, [(s, (0, 0, 64, 64)) for s in range(4)], 2)
    compose = Compose(OutputConfig(size=64, format="png"), grid=2, **LIMITS)
    assert compose(to_batch([row]))["width"][0] == 64
    with Image.open(sources[1]["uri"]) as other:
        other.save(moved, format="JPEG")
    with pytest.raises(ValueError, match=f"{moved}.*changed between passes"):
        compose(to_batch([row]))


def test_bad_rows_are_named(sources):
    compose = Compose(OutputConfig(size=64, format="png"), grid=2, **LIMITS)
    short = sample_row(sources, [(0, (0, 0, 64, 64))] * 3, 2)
    with pytest.raises(ValueError, match=short["sample_key"]):
        compose(to_batch([short]))
    h, w = sources[2]["image"].shape[:2]
    outside = sample_row(sources, [(0, (0, 0, 64, 64))] * 3 + [(2, (w - 10, 0, w + 10, 20))], 2)
    with pytest.raises(ValueError, match=f"{sources[2]['uri']}: patch {outside['patch_ids'][3]}: box"):
        compose(to_batch([outside]))


def test_ray_style_columns_and_unscored_slots(sources):
    """Ray Data hands equal-length lists over as 2-D arrays; a whole-image baseline may have no
    scores (NaN), which the JSON lineage records as null."""
    rows = two_samples(sources)
    rows[1]["scores"][2] = float("nan")
    arrays = {col: np.array([r[col] for r in rows]) for col in rows[0]}
    assert arrays["boxes"].shape == (2, 4, 4)
    compose = Compose(OutputConfig(size=64, format="png"), grid=2, **LIMITS)
    from_lists, from_arrays = compose(to_batch(rows)), compose(arrays)
    for col in from_lists:
        assert list(from_lists[col]) == list(from_arrays[col])
    assert json.loads(from_lists["json"][1])["scores"][2] is None
