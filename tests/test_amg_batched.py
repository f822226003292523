"""BatchedMaskGenerator against segment-anything's SamAutomaticMaskGenerator, with a tiny
random SAM on small real kvasir images (CPU).

Random weights give mask logits of about +-0.1, so at SAM's mask threshold of 0 every mask
covers most of the image with the same whole-image box and box NMS can only keep one. The
tests raise this model's mask threshold into the logits' range (smaller masks, distinct
boxes) and pick a small stability offset, so that the IoU, stability and NMS filters each
decide which masks survive and the comparison is not between near-identical masks.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sam_fixtures import tiny_sam
from segment_anything import SamAutomaticMaskGenerator
from skimage.measure import label

from optidel.stages.amg_batched import BatchedMaskGenerator

SETTINGS = {
    "points_per_side": 8,
    "pred_iou_thresh": 0.05,
    "stability_score_thresh": 0.1,
    "stability_score_offset": 0.01,
    "box_nms_thresh": 0.995,
}
MASK_THRESHOLD = 0.08
CANDIDATES = 3 * SETTINGS["points_per_side"] ** 2  # three masks per point prompt


@pytest.fixture(scope="module")
def model():
    sam = tiny_sam(seed=0)
    sam.mask_threshold = MASK_THRESHOLD
    return sam


@pytest.fixture(scope="module")
def images(kvasir):
    paths = sorted((kvasir / "images").glob("*.jpg"))[:3]
    small = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((256, 256))
            small.append(np.asarray(image))
    return small


@pytest.fixture(scope="module")
def reference(model, images):
    generator = SamAutomaticMaskGenerator(model, points_per_batch=64, output_mode="binary_mask", **SETTINGS)
    return [generator.generate(image) for image in images]


@pytest.fixture(scope="module")
def large_batches(model):
    return BatchedMaskGenerator(model, points_per_batch=256, **SETTINGS)


@pytest.fixture(scope="module")
def batched(large_batches, images):
    return large_batches.generate_batch(images)


def _assert_same_records(expected: list[dict], actual: list[dict]) -> None:
    assert len(actual) == len(expected)
    for want, got in zip(expected, actual):
        assert got.keys() == want.keys()
        assert got["segmentation"].dtype == bool and np.array_equal(got["segmentation"], want["segmentation"])
        assert {k: v for k, v in got.items() if k != "segmentation"} == {
            k: v for k, v in want.items() if k != "segmentation"
        }


def _best_match_iou(masks_a: list[np.ndarray], masks_b: list[np.ndarray]) -> float:
    """Mean over masks_a of each mask's best IoU among masks_b."""
    a = np.stack(masks_a).reshape(len(masks_a), -1).astype(np.float64)
    b = np.stack(masks_b).reshape(len(masks_b), -1).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return float((inter / np.maximum(union, 1)).max(axis=1).mean())


def test_settings_make_the_filters_choose(reference):
    for records in reference:
        assert 2 <= len(records) < CANDIDATES
        assert len({record["segmentation"].tobytes() for record in records}) == len(records)
        assert len({tuple(record["bbox"]) for record in records}) > 1


def test_same_point_batches_reproduce_the_reference_exactly(model, images, reference):
    generator = BatchedMaskGenerator(model, points_per_batch=64, **SETTINGS)
    for expected, actual in zip(reference, generator.generate_batch(images)):
        _assert_same_records(expected, actual)


def test_large_point_batches_match_the_reference(reference, batched):
    # Another decoder batch size rounds differently, which may flip a mask near a threshold.
    for expected, actual in zip(reference, batched):
        assert abs(len(actual) - len(expected)) <= max(1, len(expected) // 10)
        ref_masks = [r["segmentation"] for r in expected]
        new_masks = [r["segmentation"] for r in actual]
        assert _best_match_iou(ref_masks, new_masks) >= 0.95
        assert _best_match_iou(new_masks, ref_masks) >= 0.95


def test_results_do_not_depend_on_the_batch_composition(large_batches, images, batched):
    alone = [large_batches.generate(image) for image in images]
    reordered = large_batches.generate_batch(images[::-1])[::-1]
    for single, together, reversed_order in zip(alone, batched, reordered):
        _assert_same_records(single, together)
        _assert_same_records(single, reversed_order)


def test_min_mask_region_area_removes_small_islands_and_holes(model, images, batched):
    min_area = 60
    plain = batched[0]
    cleaned = BatchedMaskGenerator(
        model, points_per_batch=256, min_mask_region_area=min_area, **SETTINGS
    ).generate_batch(images[:1])[0]
    assert cleaned
    plain_masks = {record["segmentation"].tobytes() for record in plain}
    assert any(record["segmentation"].tobytes() not in plain_masks for record in cleaned)
    for record in cleaned:
        mask = record["segmentation"]
        islands = np.bincount(label(mask, connectivity=2).ravel())[1:]
        holes = np.bincount(label(~mask, connectivity=2).ravel())[1:]
        # Only a mask whose islands are all small keeps one (its largest), as the reference does.
        assert len(islands) == 1 or islands.min() >= min_area
        assert len(holes) == 0 or holes.min() >= min_area
        ys, xs = np.nonzero(mask)
        assert record["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert record["area"] == int(mask.sum())


def test_min_mask_region_area_matches_the_reference(model, images):
    pytest.importorskip("cv2", reason="the reference's small-region removal needs OpenCV")
    settings = {**SETTINGS, "min_mask_region_area": 60}
    expected = SamAutomaticMaskGenerator(model, **settings).generate(images[0])
    _assert_same_records(expected, BatchedMaskGenerator(model, **settings).generate(images[0]))


def test_bad_image_is_refused_with_its_index(model, images):
    generator = BatchedMaskGenerator(model, **SETTINGS)
    with pytest.raises(ValueError, match=r"image 1: expected RGB uint8 \(H, W, 3\), got float32"):
        generator.generate_batch([images[0], images[1].astype(np.float32)])


def test_no_surviving_masks_gives_empty_lists_like_the_reference(model, images):
    strict = {**SETTINGS, "pred_iou_thresh": 0.99}
    assert SamAutomaticMaskGenerator(model, **strict).generate(images[0]) == []
    assert BatchedMaskGenerator(model, **strict).generate_batch(images[:2]) == [[], []]
    assert BatchedMaskGenerator(model, **strict).generate_batch([]) == []
