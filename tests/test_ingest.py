"""stages.ingest.Ingest on a batch mixing real kvasir images, hostile files and tar members."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from optidel.manifests import schema
from optidel.pipeline.config import IngestConfig
from optidel.pipeline.inputs import list_sources
from optidel.stages import columns
from optidel.stages.ingest import Ingest

import hostile


def listing_batch(refs) -> dict[str, np.ndarray]:
    rows = [dict(zip(columns.LISTING_COLUMNS, (i, *ref))) for i, ref in enumerate(refs)]
    return columns.to_batch(rows, columns.LISTING_COLUMNS)


def source_bytes(row) -> bytes:
    with open(row["uri"], "rb") as f:
        if row["offset"] < 0:
            return f.read()
        f.seek(row["offset"])
        return f.read(row["length"])


@pytest.fixture(scope="module")
def ingested(kvasir, tmp_path_factory):
    pool = tmp_path_factory.mktemp("pool")
    expected_files = hostile.write_hostile_corpus(pool / "hostile")
    expected_tar = hostile.write_hostile_tar(pool / "hostile.tar")
    (pool / "list.txt").write_text("hostile/gone.jpg\n")
    kvasir_images = sorted((kvasir / "images").glob("*.jpg"))[:3]
    inputs = [*(str(p) for p in kvasir_images), str(pool / "hostile"), str(pool / "hostile.tar"), str(pool / "list.txt")]
    refs = list_sources(inputs)
    expected = {(str(p), ""): schema.OK for p in kvasir_images}
    expected.update({(str(pool / "hostile" / name), ""): status for name, status in expected_files.items()})
    expected.update({(str(pool / "hostile.tar"), member): status for member, status in expected_tar.items()})
    expected[(str(pool / "hostile" / "gone.jpg"), "")] = schema.MISSING
    batch = listing_batch(refs)
    return batch, Ingest(IngestConfig())(batch), expected, kvasir_images


def rows(out):
    return [{col: out[col][i] for col in out} for i in range(len(out[columns.URI]))]


def test_output_columns_and_row_order(ingested):
    batch, out, _, _ = ingested
    assert set(out) == set(columns.SOURCE_COLUMNS) | {columns.IMAGE}
    for col in columns.LISTING_COLUMNS:
        np.testing.assert_array_equal(out[col], batch[col])
    assert out[columns.IMAGE].dtype == object and out["byte_size"].dtype == np.int64


def test_statuses(ingested):
    _, out, expected, _ = ingested
    got = {(row["uri"], row["member"]): row["status"] for row in rows(out)}
    assert got == expected


def test_ids_sizes_and_images(ingested):
    _, out, _, _ = ingested
    for row in rows(out):
        image = row[columns.IMAGE]
        if row["status"] == schema.MISSING:
            assert row["source_id"] == "" and row["byte_size"] == -1 and "no such file" in row["error"]
            assert image.shape == (0, 0, 3)
            continue
        data = source_bytes(row)
        assert row["source_id"] == hashlib.sha256(data).hexdigest()  # corrupt ones included
        assert row["byte_size"] == len(data)
        if row["status"] == schema.OK:
            assert row["error"] == ""
            assert image.dtype == np.uint8 and image.shape == (row["height"], row["width"], 3)
        else:
            assert row["error"] and image.shape == (0, 0, 3)


def test_kvasir_pixels_match_pillow(ingested):
    _, out, _, kvasir_images = ingested
    by_uri = {row["uri"]: row for row in rows(out)}
    for path in kvasir_images:
        row = by_uri[str(path)]
        assert (row["format"], row["mode"]) == ("JPEG", "RGB")
        np.testing.assert_array_equal(row[columns.IMAGE], np.asarray(Image.open(path).convert("RGB")))


def test_equal_shapes_stay_separate_objects(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 40), (9, 9, 9)).save(tmp_path / name)
    out = Ingest(IngestConfig())(listing_batch(list_sources([str(tmp_path)])))
    assert out[columns.IMAGE].shape == (2,) and out[columns.IMAGE][1].shape == (40, 40, 3)
    # Byte-identical sources share a source_id; marking duplicates is the barrier's job.
    assert out["source_id"][0] == out["source_id"][1] and list(out["status"]) == [schema.OK, schema.OK]


def test_limits_come_from_the_config(tmp_path):
    Image.new("RGB", (60, 40), (1, 2, 3)).save(tmp_path / "a.png")
    refs = list_sources([str(tmp_path / "a.png")])
    size = (tmp_path / "a.png").stat().st_size

    too_large = Ingest(IngestConfig(max_bytes=size - 1))(listing_batch(refs))
    assert too_large["status"][0] == schema.UNSUPPORTED and "larger than max_bytes" in too_large["error"][0]
    assert too_large["byte_size"][0] == size and too_large["source_id"][0] == ""

    assert Ingest(IngestConfig(min_side=41))(listing_batch(refs))["status"][0] == schema.TOO_SMALL
    assert Ingest(IngestConfig(max_pixels=2399))(listing_batch(refs))["status"][0] == schema.UNSUPPORTED
    assert Ingest(IngestConfig(min_side=40, max_pixels=2400))(listing_batch(refs))["status"][0] == schema.OK


def test_empty_batch():
    out = Ingest(IngestConfig())(listing_batch([]))
    assert set(out) == set(columns.SOURCE_COLUMNS) | {columns.IMAGE}
    assert all(len(v) == 0 for v in out.values())
