"""Key patches from hand-made masks: area filters, NMS, ordering, cap, square margins, RLE."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from optidel.pipeline.config import ProposeConfig
from optidel.stages.keypatch import blockiness, greedy_nms, key_patches, mask_to_rle, noise_residual, noise_sigma

from masks import rle_to_mask

H, W = 100, 120


def record(x0, y0, x1, y1, iou=0.9, stability=1.0, shape=(H, W)):
    """A rectangular mask [x0, x1) x [y0, y1) in segment-anything's record format."""
    seg = np.zeros(shape, dtype=bool)
    seg[y0:y1, x0:x1] = True
    return {
        "segmentation": seg,
        "area": int(seg.sum()),
        "bbox": [x0, y0, x1 - 1 - x0, y1 - 1 - y0],
        "predicted_iou": iou,
        "stability_score": stability,
        "point_coords": [[(x0 + x1) / 2, (y0 + y1) / 2]],
        "crop_box": [0, 0, shape[1], shape[0]],
    }


def config(**overrides):
    base = dict(min_area_frac=0.01, max_area_frac=0.5, patch_nms_thresh=0.5, margin=0.0, min_patch_side=1)
    return ProposeConfig(**{**base, **overrides})


def test_area_filters_keep_only_masks_within_the_fraction_range():
    masks = [
        record(0, 0, 10, 11, iou=0.9),  # 110 px = 0.92 %: too small
        record(20, 20, 40, 40, iou=0.8),  # 400 px = 3.3 %
        record(0, 0, 120, 60, iou=0.7),  # 60 %: too large
        record(60, 50, 120, 100, iou=0.6),  # 3000 px = 25 %
    ]
    patches = key_patches(masks, (H, W, 3), config())
    assert [p.mask_area for p in patches] == [400, 3000]
    assert [p.predicted_iou for p in patches] == [0.8, 0.6]


def test_nms_keeps_the_better_of_overlapping_boxes_and_disjoint_ones():
    masks = [
        record(10, 10, 50, 50, iou=0.7),
        record(12, 10, 52, 50, iou=0.95),  # overlaps the first almost fully, better quality
        record(70, 40, 110, 80, iou=0.8),
    ]
    patches = key_patches(masks, (H, W, 3), config())
    assert [p.box for p in patches] == [(12, 10, 52, 50), (70, 40, 110, 80)]
    loose = key_patches(masks, (H, W, 3), config(patch_nms_thresh=1.0))
    assert len(loose) == 3


@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.7])
def test_greedy_nms_keeps_what_torchvision_nms_keeps(thresh):
    torch = pytest.importorskip("torch")
    from torchvision.ops import nms

    rng = np.random.default_rng(7)
    corners = rng.integers(0, 80, size=(200, 2))
    sides = rng.integers(1, 40, size=(200, 1))
    boxes = np.hstack([corners, corners + sides]).astype(np.float64)  # squares, as key patches are
    scores = torch.arange(len(boxes), 0, -1, dtype=torch.float64)  # priority = row order
    expected = sorted(nms(torch.from_numpy(boxes), scores, thresh).tolist())
    assert 5 < len(expected) < len(boxes)
    assert greedy_nms(boxes, thresh, limit=len(boxes)) == expected
    assert greedy_nms(boxes, thresh, limit=5) == expected[:5]


def test_crops_mostly_outside_the_field_of_view_are_dropped():
    # An endoscope frame: black left third (with white overlay text), tissue elsewhere.
    pixels = np.full((H, W, 3), (180, 90, 70), np.uint8)
    pixels[:, :40] = 0
    pixels[10:14, 5:30] = 255
    masks = [
        record(5, 5, 35, 35, iou=0.99),  # all in the black border, text included: dropped
        record(30, 50, 60, 80, iou=0.95),  # crop [30, 60): a third black, above the default 0.25
        record(34, 10, 64, 40, iou=0.9),  # crop [34, 64): a fifth black: kept
        record(70, 40, 110, 80, iou=0.8),  # tissue only: kept
    ]
    # The glare gate would take the text's crop too, and the compression gate the crop whose black
    # border's edge falls on the 8-pixel grid (x = 40).
    dark_only = dict(max_bright_frac=1.0, max_noise_sigma=None, max_clipped_frac=1.0, max_blockiness=None)
    boxes = [p.box for p in key_patches(masks, (H, W, 3), config(**dark_only), pixels=pixels)]
    assert boxes == [(34, 10, 64, 40), (70, 40, 110, 80)]
    # max_dark_frac = 1 keeps all; without pixels there is nothing to judge by.
    assert len(key_patches(masks, (H, W, 3), config(**dark_only, max_dark_frac=1.0), pixels=pixels)) == 4
    assert len(key_patches(masks, (H, W, 3), config())) == 4
    # The level: at dark_level below the black, nothing is near-black.
    pixels[:, :40] = 30
    pixels[10:14, 5:30] = 255
    assert len(key_patches(masks, (H, W, 3), config(**dark_only, dark_level=20), pixels=pixels)) == 4


def test_ordering_is_quality_then_area_then_position():
    masks = [
        record(70, 60, 90, 80, iou=0.5),  # same quality and area as the next; lower down
        record(70, 10, 90, 30, iou=0.5),
        record(5, 5, 35, 35, iou=0.5),  # same quality, larger
        record(5, 60, 25, 80, iou=0.9, stability=0.5),  # quality 0.45: last
    ]
    boxes = [p.box for p in key_patches(masks, (H, W, 3), config())]
    assert boxes == [(5, 5, 35, 35), (70, 10, 90, 30), (70, 60, 90, 80), (5, 60, 25, 80)]
    assert [p.box for p in key_patches(masks[::-1], (H, W, 3), config())] == boxes


def test_cap_keeps_the_best_patches():
    masks = [record(12 * i, 0, 12 * i + 12, 12, iou=0.1 * (i + 1)) for i in range(8)]
    patches = key_patches(masks, (H, W, 3), config(max_patches_per_image=3))
    assert [p.x0 for p in patches] == [84, 72, 60]


def test_square_margin_centres_and_grows_the_box():
    # 20 x 10 box, margin 0.5 -> side 30, centred on (50, 45).
    [patch] = key_patches([record(40, 40, 60, 50)], (H, W, 3), config(margin=0.5))
    assert patch.box == (35, 30, 65, 60)
    assert patch.mask_area == 200 and patch.mask[45, 50] and not patch.mask[30, 35]


def test_square_box_is_shifted_inside_at_borders_not_shrunk():
    [corner] = key_patches([record(0, 0, 10, 10)], (H, W, 3), config(min_patch_side=40, min_area_frac=0.001))
    assert corner.box == (0, 0, 40, 40)
    [far] = key_patches([record(110, 90, 120, 100)], (H, W, 3), config(margin=1.0, min_area_frac=0.001))
    assert far.box == (100, 80, 120, 100)


def test_square_box_shrinks_only_to_the_image():
    # A 70 x 30 mask in a 120 x 40 image: side would be 84, the image allows 40.
    masks = [record(10, 5, 80, 35, shape=(40, 120))]
    [patch] = key_patches(masks, (40, 120, 3), config(margin=0.2, max_area_frac=0.9))
    assert patch.box == (25, 0, 65, 40)


def test_mask_shape_must_match_the_image():
    with pytest.raises(ValueError, match="mask 0 has shape"):
        key_patches([record(0, 0, 20, 20, shape=(50, 50))], (H, W, 3), config())


def test_rle_round_trip_on_a_non_square_mask():
    mask = np.random.default_rng(0).random((37, 53)) > 0.6
    rle = mask_to_rle(mask)
    assert isinstance(rle, str)
    restored = rle_to_mask(rle, 37, 53)
    assert restored.dtype == bool and np.array_equal(restored, mask)


def test_rle_is_coco_column_major():
    mask = np.zeros((3, 4), dtype=bool)
    mask[:, 1] = True  # column-major runs: 3 off, 3 on, 6 off
    expected = mask_utils.frPyObjects({"size": [3, 4], "counts": [3, 3, 6]}, 3, 4)["counts"].decode()
    assert mask_to_rle(mask) == expected


def test_glare_and_noise_gates_drop_crops_by_physical_measures():
    rng = np.random.default_rng(0)
    pixels = np.full((H, W, 3), (180, 90, 70), np.uint8)
    pixels[45:75, 75:105] = 255  # a blown-out highlight, 30 x 30
    noisy = np.clip(pixels[:, :40].astype(float) + rng.normal(0, 20, (H, 40, 3)), 0, 255)
    pixels[:, :40] = noisy.astype(np.uint8)
    masks = [
        record(70, 40, 110, 80, iou=0.99),  # crop [70, 110) x [40, 80): 900 / 1600 px blown out
        record(2, 5, 32, 35, iou=0.95),  # all in the noisy band
        record(50, 5, 80, 35, iou=0.9),  # clean tissue
    ]
    assert [p.box for p in key_patches(masks, (H, W, 3), config(), pixels=pixels)] == [(50, 5, 80, 35)]  # on by default
    off = dict(max_bright_frac=1.0, max_noise_sigma=None, max_clipped_frac=1.0, max_blockiness=None, max_frame_clipped_frac=1.0)
    assert len(key_patches(masks, (H, W, 3), config(**off), pixels=pixels)) == 3
    kept = key_patches(masks, (H, W, 3), config(max_bright_frac=0.5, max_noise_sigma=8.0), pixels=pixels)
    assert [p.box for p in kept] == [(50, 5, 80, 35)]
    assert len(key_patches(masks, (H, W, 3), config(**{**off, "max_bright_frac": 0.6}), pixels=pixels)) == 3  # 0.5625 <= 0.6
    assert len(key_patches(masks, (H, W, 3), config(**{**off, "max_bright_frac": 0.5, "bright_level": 256 - 1}), pixels=pixels)) == 2


def test_noise_estimate_against_a_hand_computation():
    rng = np.random.default_rng(1)
    ramp = np.add.outer(np.arange(80.0), np.arange(90.0)) + 40  # a linear shading: no noise
    flat = np.repeat(ramp[..., None], 3, axis=2)
    assert noise_sigma(noise_residual(flat.astype(np.uint8)), (0, 0, 90, 80)) == pytest.approx(0.0, abs=1e-4)
    noisy = flat + rng.normal(0, 6.0, flat.shape[:2])[..., None]  # grey noise of sigma 6
    estimate = noise_sigma(noise_residual(noisy), (0, 0, 90, 80))
    assert estimate == pytest.approx(6.0, rel=0.05)
    # by hand on one 3 x 3 box: the residual's single value is |sum(N * I)|
    patch = rng.integers(0, 255, (3, 3)).astype(np.float32)
    n = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]])
    grey = np.repeat(patch[..., None], 3, axis=2)
    assert noise_sigma(noise_residual(grey), (0, 0, 3, 3)) == pytest.approx(
        np.sqrt(np.pi / 2) / 6 * abs((n * patch).sum()), rel=1e-4
    )


def test_over_exposure_and_compression_gates_drop_crops_by_physical_measures():
    rng = np.random.default_rng(2)
    tissue = np.clip(rng.normal((170, 90, 70), 3, (H, W, 3)), 0, 254)
    tissue[:, 40:80, 0] = 255  # over-exposed: the red channel clipped, the others not
    pixels = tissue.astype(np.uint8)
    blocks = rng.integers(60, 200, (H // 8 + 1, 40 // 8, 3))  # heavy compression: flat 8 x 8 blocks
    pixels[:, 80:120] = np.kron(blocks, np.ones((8, 8, 1)))[:H].astype(np.uint8)
    masks = [
        record(45, 10, 75, 40, iou=0.99),  # all over-exposed, no pixel white
        record(84, 50, 114, 80, iou=0.95),  # all blocks
        record(5, 50, 35, 80, iou=0.9),  # plain tissue
    ]
    crop_gates = config(max_frame_clipped_frac=1.0)  # a third of the frame is clipped: the frame gate would drop all
    assert [p.box for p in key_patches(masks, (H, W, 3), crop_gates, pixels=pixels)] == [(5, 50, 35, 80)]  # on by default
    off = dict(max_clipped_frac=1.0, max_blockiness=None, max_frame_clipped_frac=1.0)
    assert len(key_patches(masks, (H, W, 3), config(**off), pixels=pixels)) == 3
    assert len(key_patches(masks, (H, W, 3), config(**{**off, "max_clipped_frac": 0.4}), pixels=pixels)) == 2
    assert len(key_patches(masks, (H, W, 3), config(**{**off, "max_blockiness": 2.0}), pixels=pixels)) == 2


def test_blockiness_against_a_hand_computation():
    rng = np.random.default_rng(3)
    ramp = np.add.outer(np.arange(48.0), 2 * np.arange(48.0))  # steps equal everywhere: no blocks
    assert blockiness(ramp, (0, 0, 48, 48)) == pytest.approx(1.0)
    # Flat 8 x 8 blocks: inside, no step; across an edge, the jump between neighbouring blocks.
    levels = rng.integers(0, 255, (6, 6)).astype(np.float64)
    blocky = np.kron(levels, np.ones((8, 8)))
    box = (3, 5, 43, 45)  # off the grid: the edges stay where the frame's grid puts them
    crop = levels[:6, :6]
    across_x = np.abs(np.diff(crop[0:6, 0:6], axis=1))  # x edges at 8 .. 40, blocks 0..5 in the crop
    across_y = np.abs(np.diff(crop, axis=0))
    # rows of the crop: frame y 5..44, that is 3 rows of block 0, 8 each of 1..4, 5 of block 5
    row_weights = np.array([3, 8, 8, 8, 8, 5]) / 40
    col_weights = np.array([5, 8, 8, 8, 8, 3]) / 40  # frame x 3..42
    expected_x = (row_weights @ across_x).mean() + 1.0
    expected_y = (across_y @ col_weights).mean() + 1.0
    assert blockiness(blocky, box) == pytest.approx((expected_x + expected_y) / 2)
    assert blockiness(blocky + rng.normal(0, 20, blocky.shape), box) < blockiness(blocky, box)


def test_the_frame_wide_over_exposure_gate_drops_every_crop_of_the_frame():
    pixels = np.zeros((H, W, 3), np.uint8)  # columns 0..19 stay black: the frame around the view
    pixels[:, 20:] = (170, 90, 70)
    pixels[:, 20:55, 0] = 255  # the red channel clipped on 35 of the 100 lit columns
    masks = [
        record(25, 10, 50, 35, iou=0.99),  # in the clipped band
        record(70, 50, 100, 80, iou=0.9),  # plain tissue, but in the same frame
    ]
    lit_share = 35 / 100  # over the lit pixels; over the whole frame 35 / 120 = 0.29
    crop_gate_off = dict(max_clipped_frac=1.0)
    assert key_patches(masks, (H, W, 3), config(**crop_gate_off), pixels=pixels) == []  # on by default, at 0.3 < 0.35
    for limit, kept in ((lit_share - 0.01, 0), (lit_share + 0.01, 2), (1.0, 2)):
        gate = dict(crop_gate_off, max_frame_clipped_frac=limit)
        assert len(key_patches(masks, (H, W, 3), config(**gate), pixels=pixels)) == kept, limit
    black = np.zeros((H, W, 3), np.uint8)  # no lit pixel: nothing to call over-exposed
    gate = dict(max_frame_clipped_frac=0.0, max_dark_frac=1.0)
    assert len(key_patches(masks, (H, W, 3), config(**gate), pixels=black)) == 2
