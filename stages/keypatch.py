"""From proposer masks (segment-anything's record format) to key patches: square boxes in
source pixels, filtered, de-duplicated and capped, in a deterministic order.

No torch here: the weight-free proposer's Ray workers import this module, and torch (with
torchvision) costs each of them seconds of start-up and ~800 MB of memory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial

import numpy as np
from pycocotools import mask as mask_utils


@dataclass(frozen=True)
class KeyPatch:
    """A key patch: half-open square box [x0, x1) x [y0, y1) (after the margin) and the mask
    that proposed it."""

    x0: int
    y0: int
    x1: int
    y1: int
    mask_area: int
    predicted_iou: float
    stability_score: float
    mask: np.ndarray  # bool (H, W), full source resolution, or array-like (regions.UpsampledMask)

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


def key_patches(masks: list[dict], image_shape: tuple[int, ...], config, pixels: np.ndarray | None = None) -> list[KeyPatch]:
    """Masks -> at most `config.max_patches_per_image` key patches, best first.

    Area and box come from each record's "area" and "bbox" (SAM computes both from the mask),
    so a mask's pixels are read only for the patches kept, when their RLE is written.

    `config` is a ProposeConfig (min/max_area_frac, patch_nms_thresh, max_patches_per_image,
    margin, min_patch_side and the artefact gates). With the image's `pixels`, a square crop is
    dropped before NMS and the cap when it has more than max_dark_frac near-black pixels, more
    than max_bright_frac blown-out ones, more than max_clipped_frac with a channel clipped (or its
    frame more than max_frame_clipped_frac of its lit pixels), an estimated noise above
    max_noise_sigma grey levels, or a blockiness above max_blockiness."""
    height, width = image_shape[:2]
    image_area = height * width
    gates = _gates(pixels, config) if pixels is not None else []
    candidates = []
    for index, record in enumerate(masks):
        mask = record["segmentation"]
        if tuple(mask.shape) != (height, width):
            raise ValueError(f"mask {index} has shape {mask.shape}, image is {(height, width)}")
        area = int(record["area"])
        if area == 0 or not config.min_area_frac <= area / image_area <= config.max_area_frac:
            continue
        x, y, w, h = record["bbox"]  # XYWH, w and h being (last - first) pixel
        box = square_box((x, y, x + w + 1, y + h + 1), width, height, config.margin, config.min_patch_side)
        if any(measure(box) > limit for measure, limit in gates):
            continue
        quality = float(record["predicted_iou"]) * float(record["stability_score"])
        # The index only breaks exact ties, so equal inputs always rank the same way.
        rank_key = (-quality, -area, box[1], box[0], box[3], box[2], index)
        candidates.append((rank_key, box, area, record, mask))
    if not candidates:
        return []
    candidates.sort(key=lambda c: c[0])
    # NMS on the square crops actually cut: two masks whose crops nearly coincide give the proxy
    # the same pixels twice.
    boxes = np.array([c[1] for c in candidates], dtype=np.float64)
    kept = greedy_nms(boxes, config.patch_nms_thresh, config.max_patches_per_image)
    return [
        KeyPatch(
            *candidates[i][1],
            mask_area=candidates[i][2],
            predicted_iou=float(candidates[i][3]["predicted_iou"]),
            stability_score=float(candidates[i][3]["stability_score"]),
            mask=candidates[i][4],
        )
        for i in kept
    ]


def greedy_nms(boxes: np.ndarray, iou_thresh: float, limit: int) -> list[int]:
    """Indices of the boxes (x0, y0, x1, y1), in priority order, that torchvision's `nms` keeps
    (IoU above `iou_thresh` with a kept box suppresses), stopping at `limit` kept."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    for i in range(len(boxes)):
        if len(kept) >= limit:
            break
        if kept:
            k = np.asarray(kept)
            w = np.clip(np.minimum(boxes[k, 2], boxes[i, 2]) - np.maximum(boxes[k, 0], boxes[i, 0]), 0, None)
            h = np.clip(np.minimum(boxes[k, 3], boxes[i, 3]) - np.maximum(boxes[k, 1], boxes[i, 1]), 0, None)
            inter = w * h
            if np.any(inter / (areas[k] + areas[i] - inter) > iou_thresh):
                continue
        kept.append(i)
    return kept


def _share_of(flags: np.ndarray) -> Callable[[tuple[int, int, int, int]], float]:
    """The share of a box's pixels that are flagged."""
    def share(box: tuple[int, int, int, int]) -> float:
        x0, y0, x1, y1 = box
        return np.count_nonzero(flags[y0:y1, x0:x1]) / ((x1 - x0) * (y1 - y0))

    return share


def _the_frame(value: float) -> Callable[[tuple[int, int, int, int]], float]:
    """A measure of the whole frame, the same for every box."""
    return lambda box: value


def _lit_share_clipped(brightest: np.ndarray, config) -> float:
    """The share of the frame's lit pixels (a channel above dark_level) with a channel at
    bright_level or above, given each pixel's brightest channel; 0 for a frame with no lit pixel."""
    lit = brightest > config.dark_level
    n_lit = np.count_nonzero(lit)
    return np.count_nonzero(lit & (brightest >= config.bright_level)) / n_lit if n_lit else 0.0


class _Frame:
    """A frame's pixels (uint8 H x W x 3) and, computed once for the gates that read them, its grey
    levels and each pixel's brightest channel."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = np.asarray(pixels)

    @cached_property
    def brightest(self) -> np.ndarray:
        return self.pixels.max(axis=2)

    @cached_property
    def grey(self) -> np.ndarray:
        return grey_levels(self.pixels)


# Each gate's ProposeConfig key (the most a crop may measure), and how its measure of a box is
# built from the frame (_Frame) and the config. A frame has a few dozen candidate boxes, so
# measuring each box directly is as fast as a summed-area table, at 1 byte a pixel.
GATES: dict[str, Callable] = {
    # The black frame, text and overlay boxes around an endoscope's view.
    "max_dark_frac": lambda frame, config: _share_of(frame.brightest <= config.dark_level),
    # Specular glare: every channel clipped at the sensor's top.
    "max_bright_frac": lambda frame, config: _share_of(frame.pixels.min(axis=2) >= config.bright_level),
    # Over-exposure: one channel (red, in endoscopy) clipped over much of the crop, short of white.
    "max_clipped_frac": lambda frame, config: _share_of(frame.brightest >= config.bright_level),
    # Over-exposure is frame-wide: gated crop by crop, a frame whose most clipped crops go proposes
    # its less clipped ones. So the frame's own share, over its lit pixels (the black frame around
    # an endoscope's view is not the scene), gates every crop of it.
    "max_frame_clipped_frac": lambda frame, config: _the_frame(_lit_share_clipped(frame.brightest, config)),
    "max_noise_sigma": lambda frame, config: partial(noise_sigma, _immerkaer_residual(frame.grey)),
    "max_blockiness": lambda frame, config: partial(blockiness, frame.grey),
}


def box_measures(pixels: np.ndarray, config, keys) -> dict[str, Callable[[tuple[int, int, int, int]], float]]:
    """The frame's measure of a box for each gate key in `keys`, the grey levels taken once."""
    frame = _Frame(pixels)
    return {key: GATES[key](frame, config) for key in keys}


def _gates(pixels: np.ndarray, config) -> list[tuple]:
    """(measure of a box, the most it may be) for each gate that is on: a share below 1, any
    other limit not null."""
    on = [(key, getattr(config, key)) for key in GATES]
    on = {key: limit for key, limit in on if limit is not None and not (key.endswith("_frac") and limit >= 1)}
    return [(measure, on[key]) for key, measure in box_measures(pixels, config, on).items()]


def grey_levels(pixels: np.ndarray) -> np.ndarray:
    """The RGB image's luma (ITU-R BT.601 weights), float32 grey levels."""
    return np.asarray(pixels, dtype=np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def noise_residual(pixels: np.ndarray) -> np.ndarray:
    """|I * N| over the grey image's interior, N Immerkaer's 3x3 mask [[1,-2,1],[-2,4,-2],[1,-2,1]]
    (J. Immerkaer, "Fast Noise Variance Estimation", CVIU 1996): the difference of two
    Laplacians, blind to flat and linearly shaded surfaces, so what remains is mostly noise.
    float32 (H-2, W-2); entry (i, j) is centred on pixel (i+1, j+1)."""
    return _immerkaer_residual(grey_levels(pixels))


def _immerkaer_residual(grey: np.ndarray) -> np.ndarray:
    """noise_residual of the grey levels."""
    n = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    h, w = grey.shape
    out = np.zeros((h - 2, w - 2), np.float32)
    for dy in range(3):
        for dx in range(3):
            out += n[dy, dx] * grey[dy : dy + h - 2, dx : dx + w - 2]
    return np.abs(out)


def noise_sigma(residual: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Immerkaer's estimate of the noise standard deviation, in grey levels, over the box's
    interior pixels: sqrt(pi / 2) / 6 x the mean of |I * N|."""
    x0, y0, x1, y1 = box
    inner = residual[y0 : max(y0, y1 - 2), x0 : max(x0, x1 - 2)]
    return float(np.sqrt(np.pi / 2) / 6 * inner.mean()) if inner.size else 0.0


# JPEG's and MPEG-2's DCT block; H.264's and HEVC's 16-pixel macroblock edges fall on the same grid.
BLOCK = 8


def blockiness(grey: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """How much more the grey image steps across the coding grid's block edges than elsewhere,
    inside the box: the mean absolute difference between neighbouring pixels across the edges
    (every BLOCK pixels from the frame's origin, where block codecs start their grid), over the
    median of the same mean at the other BLOCK - 1 offsets; both axes averaged. After the
    block-edge ratio of Wu and Yuen's GBIM (IEEE Signal Processing Letters, 1997). About 1 for
    a picture without blocks; heavy compression, its blocks flat inside and stepping at their
    edges, gives 2 and more. One grey level is added to both means, so that a flat or nearly
    flat crop, whose steps are rounding, reads as no blocks. A crop under two blocks on a side
    cannot show a grid: 1."""
    x0, y0, x1, y1 = box
    crop = grey[y0:y1, x0:x1]
    if min(crop.shape) < 2 * BLOCK:
        return 1.0
    ratios = []
    for axis, start in ((1, x0), (0, y0)):
        steps = np.abs(np.diff(crop, axis=axis))
        # Step i lies between the crop's pixels i and i + 1, frame coordinate start + i + 1.
        offset = (start + 1 + np.arange(steps.shape[axis])) % BLOCK
        means = [steps.compress(offset == k, axis=axis).mean() for k in range(BLOCK)]
        ratios.append((means[0] + 1.0) / (float(np.median(means[1:])) + 1.0))
    return float(np.mean(ratios))


def square_box(
    box: tuple[int, int, int, int], width: int, height: int, margin: float, min_side: int
) -> tuple[int, int, int, int]:
    """Square around `box`, its side the box's longer side grown by `margin` (at least
    `min_side`), centred, then shifted (not shrunk) to lie inside the image; shrunk only when
    the image itself is smaller."""
    x0, y0, x1, y1 = box
    side = max(round(max(x1 - x0, y1 - y0) * (1 + margin)), min_side)
    side = min(side, width, height)
    left = min(max((x0 + x1 - side) // 2, 0), width - side)
    top = min(max((y0 + y1 - side) // 2, 0), height - side)
    return left, top, left + side, top + side


def mask_to_rle(mask: np.ndarray) -> str:
    """COCO compressed RLE counts of a bool (H, W) mask (the size is stored beside it)."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return rle["counts"].decode("ascii")
