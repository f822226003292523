"""`optidel inspect`: a sample's rows, its text form, and the drawing of mosaic beside sources."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image, ImageFilter

from optidel.manifests import decode_mask
from optidel.manifests import lineage as L
from output_fixtures import build_output


@pytest.fixture(scope="module")
def fixture_out(tmp_path_factory, kvasir):
    return build_output(tmp_path_factory.mktemp("lineage") / "out", kvasir, n_samples=3, max_count=2)


def test_lineage_returns_the_samples_patches_and_sources(fixture_out, kvasir):
    row = fixture_out.samples[2]
    info = L.lineage(fixture_out.out, row["sample_key"])
    assert info["sample"]["shard"] == row["shard"] == "shard-000001.tar"
    assert info["sample"]["patch_ids"] == row["patch_ids"]
    assert [s["source_id"] for s in info["sources"]] == row["source_ids"]
    assert [s["uri"] for s in info["sources"]] == [str(fixture_out.source_files[s]) for s in row["source_ids"]]
    # Only the selected patches of this sample, in slot order: not the dropped candidates.
    assert [p["patch_id"] for p in info["patches"]] == row["patch_ids"]
    assert [p["slot"] for p in info["patches"]] == [0, 1, 2, 3]
    assert all(p["sample_key"] == row["sample_key"] and p["selected"] for p in info["patches"])
    assert [[p["x0"], p["y0"], p["x1"], p["y1"]] for p in info["patches"]] == row["boxes"]
    # Each mask decodes on its own to its source's polyp mask (the fixture's masks are kvasir's).
    for patch in info["patches"]:
        polyp = np.asarray(Image.open(kvasir / "masks" / fixture_out.source_files[patch["source_id"]].name).convert("L")) > 127
        assert np.array_equal(decode_mask(patch), polyp)


def test_unknown_key_is_a_clear_key_error(fixture_out):
    with pytest.raises(KeyError, match="nosuchkey.*samples.parquet"):
        L.lineage(fixture_out.out, "nosuchkey")


def test_format_lineage_lists_every_slot_and_source(fixture_out):
    row = fixture_out.samples[0]
    text = L.format_lineage(L.lineage(fixture_out.out, row["sample_key"]))
    assert row["sample_key"] in text and row["shard"] in text
    for patch_id, source_id in zip(row["patch_ids"], row["source_ids"]):
        assert patch_id in text
        assert source_id in text and str(fixture_out.source_files[source_id]) in text


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def test_draw_lineage_layout_and_content(fixture_out, tmp_path, kvasir):
    row = fixture_out.samples[1]
    png = tmp_path / "lineage.png"
    panels = L.draw_lineage(fixture_out.out, row["sample_key"], str(png))
    canvas = np.asarray(Image.open(png).convert("RGB"))

    with tarfile.open(f"{fixture_out.out}/shards/{row['shard']}") as tar:
        mosaic = Image.open(io.BytesIO(tar.extractfile(row["members"][0]).read())).convert("RGB")
    sources = [Image.open(fixture_out.source_files[s]).convert("RGB") for s in row["source_ids"]]
    images = [mosaic, *sources]
    assert len(panels) == len(images)
    for (x0, y0, x1, y1), image in zip(panels, images):
        assert y1 - y0 == L.PANEL_HEIGHT
        assert x1 - x0 == round(image.width * L.PANEL_HEIGHT / image.height)
    assert canvas.shape == (L.PANEL_HEIGHT + L.CAPTION + 2 * L.GAP, panels[-1][2] + L.GAP, 3)

    for (x0, y0, x1, y1), image in zip(panels, images):
        drawn = canvas[y0:y1, x0:x1]
        assert drawn.std() > 10  # not blank
        expected = np.asarray(image.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
        assert _correlation(drawn, expected) > 0.8  # the right picture in the right panel

    # Each source panel has its patch's box in its slot's colour along the box's bottom edge.
    for slot, ((x0, y0, x1, y1), image, box) in enumerate(zip(panels[1:], sources, row["boxes"])):
        sx, sy = (x1 - x0) / image.width, (y1 - y0) / image.height
        cx, cy = int(x0 + (box[0] + box[2]) / 2 * sx), int(y0 + box[3] * sy)
        window = canvas[cy - 3 : cy + 3, cx - 3 : cx + 3].reshape(-1, 3)
        assert (window == L.SLOT_COLOURS[slot]).all(axis=1).any(), slot

    # ... and its mask's outline in that colour: most of the outline's pixels, drawn where the
    # mask (scaled as the panel is) has its edges; boxes and labels cover the rest.
    for slot, (x0, y0, x1, y1) in enumerate(panels[1:]):
        polyp = Image.open(kvasir / "masks" / fixture_out.source_files[row["source_ids"][slot]].name).convert("L")
        scaled = polyp.point(lambda v: 255 if v > 127 else 0).resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST)
        outline = np.asarray(scaled.filter(ImageFilter.FIND_EDGES)) == 255
        drawn = (canvas[y0:y1, x0:x1] == L.SLOT_COLOURS[slot]).all(axis=2)
        assert outline.sum() > 50 and drawn[outline].mean() > 0.8, slot
