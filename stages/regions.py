"""A weight-free proposer: Felzenszwalb graph segmentation (scikit-image) in place of SAM, for
machines without a SAM checkpoint. Its records have SamAutomaticMaskGenerator's format
(output_mode="binary_mask"), so everything downstream treats both proposers alike."""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.measure import regionprops
from skimage.morphology import dilation, footprint_rectangle
from skimage.segmentation import felzenszwalb

from .keypatch import tight_box

_RING = 2  # width, in downscaled pixels, of the surround a region is contrasted with


class RegionsProposer:
    """Felzenszwalb regions of a copy downscaled to `config.regions_max_side`, upsampled back
    to full resolution (nearest).

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
        full_labels = labels[(np.arange(height) * sh) // height][:, (np.arange(width) * sw) // width]

        pixels = small.reshape(-1, 3).astype(np.float64)
        spread = float(np.sqrt(((pixels - pixels.mean(axis=0)) ** 2).sum(axis=1).mean()))
        records = []
        # regionprops ignores label 0, hence the shift; regions come out in label order.
        for region in regionprops(labels + 1, intensity_image=small):
            segmentation = full_labels == region.label - 1
            area = int(segmentation.sum())
            if area == 0:  # a sliver lost when upsampling a non-integer scale
                continue
            x0, y0, x1, y1 = tight_box(segmentation)
            cy, cx = region.centroid
            contrast = _contrast(labels, small, region, spread)
            records.append(
                {
                    "segmentation": segmentation,
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
