"""A weight-free proposer: Felzenszwalb graph segmentation (scikit-image) in place of SAM, for
machines without a SAM checkpoint. Its records have SamAutomaticMaskGenerator's format
(output_mode="binary_mask"), so everything downstream treats both proposers alike, except that
"segmentation" is an UpsampledMask: array-like, built at full resolution only when read."""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.measure import regionprops
from skimage.morphology import dilation, footprint_rectangle
from skimage.segmentation import felzenszwalb

_RING = 2  # width, in downscaled pixels, of the surround a region is contrasted with


class UpsampledMask:
    """One region's mask at full resolution, kept as the downscaled label map plus the
    nearest-neighbour row and column lookups that upsample it. A frame has a dozen or more
    regions and at most a few become key patches: only those are ever built full size (a
    1920x1080 bool mask is 2 MB), when np.asarray reads them."""

    def __init__(self, labels: np.ndarray, label: int, rows: np.ndarray, cols: np.ndarray):
        self.labels, self.label, self.rows, self.cols = labels, label, rows, cols

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    def __array__(self, dtype=None, copy=None):
        mask = (self.labels == self.label)[self.rows][:, self.cols]
        return mask if dtype is None else mask.astype(dtype, copy=False)


class RegionsProposer:
    """Felzenszwalb regions of a copy downscaled to `config.regions_max_side`, upsampled back
    to full resolution (nearest). Each region's area and box are counted on the downscaled
    labels, weighting every downscaled row and column by the full-resolution rows and columns
    it becomes: exactly what the full-resolution mask would give.

    The quality fields are weight-free stand-ins, NOT SAM's:
    - predicted_iou = extent * contrast, in [0, 1]: extent is the region's share of its
      bounding box (compact blobs score high, thin strands low); contrast is d / (d + s), where
      d is the distance between the region's mean colour and that of a thin ring around it and
      s the image's own colour spread (RMS distance of pixels from the image mean), so a region
      that stands out from its surround by one typical deviation scores 0.5.
    - stability_score = 1.0: there is no mask threshold to perturb.
    - point_coords = the region's centroid (SAM gives its prompt point).
    """

    def __init__(self, config):
        self.scale = config.regions_scale
        self.max_side = config.regions_max_side
        self.min_area_frac = config.min_area_frac

    def generate(self, image: np.ndarray) -> list[dict]:
        height, width = image.shape[:2]
        small = _downscale(image, self.max_side)
        sh, sw = small.shape[:2]
        # Regions too small to become key patches are merged into neighbours rather than lost.
        min_size = max(1, int(self.min_area_frac * sh * sw))
        labels = felzenszwalb(small, scale=self.scale, sigma=0.8, min_size=min_size).astype(np.int32)
        # Nearest-neighbour upsampling: full-resolution row y shows downscaled row rows[y].
        rows = (np.arange(height) * sh) // height
        cols = (np.arange(width) * sw) // width
        row_weight = np.bincount(rows, minlength=sh)
        col_weight = np.bincount(cols, minlength=sw)
        # Full-resolution pixels per downscaled pixel; sh <= height, so none is dropped.
        weight = np.outer(row_weight, col_weight)

        pixels = small.reshape(-1, 3).astype(np.float64)
        spread = float(np.sqrt(((pixels - pixels.mean(axis=0)) ** 2).sum(axis=1).mean()))
        records = []
        # regionprops ignores label 0, hence the shift; regions come out in label order.
        for region in regionprops(labels + 1, intensity_image=small):
            r0, c0, r1, c1 = region.bbox  # half-open, downscaled
            inside = region.image  # the region's pixels within its downscaled box
            area = int(weight[r0:r1, c0:c1][inside].sum())
            # Full-resolution box: from the first full row showing r0 to the last showing r1 - 1.
            y0, y1 = int(np.searchsorted(rows, r0)), int(np.searchsorted(rows, r1))
            x0, x1 = int(np.searchsorted(cols, c0)), int(np.searchsorted(cols, c1))
            cy, cx = region.centroid
            contrast = _contrast(labels, small, region, spread)
            records.append(
                {
                    "segmentation": UpsampledMask(labels, region.label - 1, rows, cols),
                    "area": area,
                    # SAM's XYWH convention: width/height are (last - first) pixel, not counts.
                    "bbox": [x0, y0, x1 - 1 - x0, y1 - 1 - y0],
                    "predicted_iou": float(region.extent) * contrast,
                    "point_coords": [[(cx + 0.5) * width / sw, (cy + 0.5) * height / sh]],
                    "stability_score": 1.0,
                    "crop_box": [0, 0, width, height],
                }
            )
        return records


def _downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    height, width = image.shape[:2]
    factor = max_side / max(height, width)
    if factor >= 1:
        return image
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _contrast(labels: np.ndarray, small: np.ndarray, region, spread: float) -> float:
    """d / (d + spread), d = colour distance between the region and a ring around it."""
    r0, c0, r1, c1 = region.bbox
    window = (
        slice(max(r0 - _RING, 0), r1 + _RING),
        slice(max(c0 - _RING, 0), c1 + _RING),
    )
    inside = labels[window] == region.label - 1
    ring = dilation(inside, footprint_rectangle((2 * _RING + 1, 2 * _RING + 1))) & ~inside
    if not ring.any() or spread == 0:
        return 0.0
    distance = float(np.linalg.norm(small[window][ring].mean(axis=0) - region.intensity_mean))
    return distance / (distance + spread)
