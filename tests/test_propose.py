"""The propose stage on real kvasir images: the tiny SAM through SamAutomaticMaskGenerator,
the weight-free regions proposer, and the rules that pick between them."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from masks import rle_to_mask
from sam_fixtures import relaxed_sam_config, save_tiny_sam
from segment_anything.utils.amg import batched_mask_to_box, box_xyxy_to_xywh

from optidel.manifests import schema
from optidel.pipeline.config import ProposeConfig
from optidel.stages import columns
from optidel.stages.crops import crop_resize
from optidel.stages.propose import Propose, check_weights, proposer_info, resolve_proposer
from optidel.stages.regions import RegionsProposer
from optidel.stages.sam import CheckpointError, seeded_sam

CROP = 32


def _image(path, max_side=None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return np.asarray(image)


def _ingest_batch(paths, max_side=None, start_index=0) -> dict[str, np.ndarray]:
    """What the Ingest stage hands over: SOURCE_COLUMNS + IMAGE, plus one corrupt source."""
    rows, images = [], []
    for i, path in enumerate(paths):
        image = _image(path, max_side)
        data = path.read_bytes()
        rows.append(
            {
                columns.INPUT_INDEX: start_index + i,
                columns.SOURCE_ID: hashlib.sha256(data).hexdigest(),
                columns.URI: str(path),
                "byte_size": len(data),
                columns.WIDTH: image.shape[1],
                columns.HEIGHT: image.shape[0],
                "mode": "RGB",
                "format": "JPEG",
                columns.STATUS: schema.OK,
            }
        )
        images.append(image)
    broken = {columns.URI: "broken.jpg", columns.STATUS: schema.CORRUPT, "error": "truncated"}
    rows.append({columns.INPUT_INDEX: start_index + len(paths), **broken})
    images.append(np.zeros((0, 0, 3), dtype=np.uint8))
    batch = columns.to_batch(rows, columns.SOURCE_COLUMNS)
    batch[columns.IMAGE] = np.empty(len(images), dtype=object)
    batch[columns.IMAGE][:] = images
    return batch


def _rows_of(out: dict, i: int) -> dict:
    return {col: out[col][i] for col in out}


def _same(a, b) -> bool:
    """Equal, NaN matching NaN (an image's frame_time)."""
    return a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b))


def _check_layout(batch, out, max_patches):
    """One source row per input, then its patches; crops are exactly crop_resize of the boxes."""
    assert set(out) == set(columns.CANDIDATE_COLUMNS) | {columns.CROP}
    n_rows = len(out[columns.PATCH_INDEX])
    assert out[columns.CROP].shape == (n_rows, CROP, CROP, 3) and out[columns.CROP].dtype == np.uint8
    sources = np.flatnonzero(out[columns.PATCH_INDEX] == -1)
    assert len(sources) == len(batch[columns.INPUT_INDEX])
    bounds = [*sources, n_rows]
    n_patches = []
    for s, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        source_row = _rows_of(out, start)
        assert source_row[columns.PATCH_INDEX] == -1 and source_row[columns.PATCH_ID] == ""
        assert all(_same(source_row[col], batch[col][s]) for col in columns.SOURCE_COLUMNS)
        image = batch[columns.IMAGE][s]
        if batch[columns.STATUS][s] != schema.OK:
            assert stop == start + 1 and not out[columns.CROP][start].any()
            continue
        h, w = image.shape[:2]
        assert np.array_equal(out[columns.CROP][start], crop_resize(image, (0, 0, w, h), CROP))
        source_id = batch[columns.SOURCE_ID][s]
        assert 0 < stop - start - 1 <= max_patches
        n_patches.append(stop - start - 1)
        for k, row in enumerate(range(start + 1, stop)):
            patch = _rows_of(out, row)
            assert patch[columns.PATCH_INDEX] == k
            assert patch[columns.PATCH_ID] == f"{source_id[:16]}-{k:03d}"
            assert patch[columns.SOURCE_ID] == source_id and patch[columns.INPUT_INDEX] == batch[columns.INPUT_INDEX][s]
            assert patch[columns.URI] == "" and patch[columns.STATUS] == "" and patch[columns.WIDTH] == -1
            box = tuple(int(patch[c]) for c in columns.BOX_COLUMNS)
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and x1 - x0 == y1 - y0
            assert np.array_equal(out[columns.CROP][row], crop_resize(image, box, CROP))
            mask = rle_to_mask(patch["mask_rle"], h, w)
            assert mask.sum() == patch["mask_area"] > 0
            inside = mask[y0:y1, x0:x1].sum() / ((x1 - x0) * (y1 - y0))
            assert 0 < patch["mask_fraction"] <= 1 and patch["mask_fraction"] == np.float32(inside)
            assert 0.0 <= patch["stability_score"] <= 1.0
    return n_patches


def _assert_batches_equal(a, b):
    assert set(a) == set(b)
    for col in a:
        assert a[col].dtype == b[col].dtype, col
        if a[col].dtype.kind == "f":
            np.testing.assert_array_equal(a[col], b[col], err_msg=col)
        else:
            assert np.array_equal(a[col], b[col]), col


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny.pt", seed=0)


@pytest.fixture(scope="module")
def small_paths(kvasir):
    return sorted((kvasir / "images").glob("*.jpg"))[:2]


def test_sam_path_layout_crops_and_stable_ids(sam_checkpoint, small_paths):
    config = relaxed_sam_config(sam_checkpoint, max_patches_per_image=4)
    batch = _ingest_batch(small_paths, max_side=256)
    first = Propose(config, crop_size=CROP, seed=0)
    out = first(batch)
    assert first.proposer.name == "sam"
    n_patches = _check_layout(batch, out, max_patches=4)
    assert len(n_patches) == 2
    again = Propose(config, crop_size=CROP, seed=0)(batch)
    _assert_batches_equal(out, again)


def test_sam_output_does_not_depend_on_batch_composition(sam_checkpoint, small_paths):
    config = relaxed_sam_config(sam_checkpoint, max_patches_per_image=3)
    stage = Propose(config, crop_size=CROP)
    together = stage(_ingest_batch(small_paths, max_side=256))
    alone = stage(_ingest_batch(small_paths[1:], max_side=256, start_index=1))
    # The second source's rows (source row + patches) must not change when run on its own.
    rows = np.flatnonzero(together[columns.SOURCE_ID] == alone[columns.SOURCE_ID][0])
    assert len(rows) > 1
    _assert_batches_equal({c: v[rows] for c, v in together.items()}, {c: v[: len(rows)] for c, v in alone.items()})


def test_random_sam_weights_are_seeded_and_leave_the_torch_rng_alone():
    config = relaxed_sam_config(None)
    state = torch.random.get_rng_state()

    def weights(seed):
        return seeded_sam(config, seed).state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_regions_proposer_gives_patches_inside_the_image(kvasir):
    path = sorted((kvasir / "images").glob("*.jpg"))[2]
    config = ProposeConfig(proposer="regions", max_patches_per_image=6)
    batch = _ingest_batch([path])
    out = Propose(config, crop_size=CROP)(batch)
    [n_patches] = _check_layout(batch, out, max_patches=6)
    patch_rows = out[columns.PATCH_INDEX] >= 0
    assert n_patches >= 2
    crops = out[columns.CROP][patch_rows]
    assert all(crop.std() > 0 for crop in crops)
    quality = out["predicted_iou"][patch_rows]
    assert np.all((quality >= 0) & (quality <= 1)) and np.all(np.diff(quality) <= 0)


def test_regions_records_match_sams_format_and_partition_the_image(sam_checkpoint, small_paths):
    image = _image(small_paths[0], max_side=256)
    config = relaxed_sam_config(sam_checkpoint)
    [sam_records] = Propose(config, crop_size=CROP).masks([image])
    records = RegionsProposer(ProposeConfig(regions_max_side=128)).generate(image)
    assert sam_records and records
    assert set(records[0]) == set(sam_records[0])
    assert sum(r["area"] for r in records) == image.shape[0] * image.shape[1]
    coverage = np.sum([np.asarray(r["segmentation"]) for r in records], axis=0)
    assert np.all(coverage == 1)
    for r in records:
        seg = np.asarray(r["segmentation"])
        assert seg.dtype == bool and seg.shape == image.shape[:2] and r["area"] == seg.sum()
        sam_box = box_xyxy_to_xywh(batched_mask_to_box(torch.as_tensor(seg))).tolist()
        assert r["bbox"] == sam_box
        assert 0 <= r["point_coords"][0][0] <= image.shape[1] and 0 <= r["point_coords"][0][1] <= image.shape[0]


def test_resolve_proposer_rules(tmp_path):
    ckpt = str(tmp_path / "sam.pt")
    assert resolve_proposer(ProposeConfig()).name == "regions"
    assert resolve_proposer(ProposeConfig(sam_checkpoint=ckpt)).name == "sam"
    assert resolve_proposer(ProposeConfig(proposer="regions", sam_checkpoint=ckpt)).name == "regions"
    assert resolve_proposer(ProposeConfig(proposer="sam", sam_model="vit_tiny")).name == "sam"
    check_weights(ProposeConfig(proposer="sam", sam_model="vit_tiny"))  # random tiny weights are allowed
    with pytest.raises(CheckpointError, match="propose.proposer=sam needs propose.sam_checkpoint"):
        check_weights(ProposeConfig(proposer="sam", sam_model="vit_b"))


def test_proposer_info_records_the_checkpoint_hash(sam_checkpoint):
    info = proposer_info(relaxed_sam_config(sam_checkpoint))
    assert info == {
        "name": "sam",
        "model": "vit_tiny",
        "checkpoint": str(sam_checkpoint),
        "checkpoint_sha256": hashlib.sha256(sam_checkpoint.read_bytes()).hexdigest(),
    }
    assert proposer_info(ProposeConfig())["checkpoint_sha256"] is None
