"""Endoscopy artefacts with published parameters, for the dirty video pool (dirty_pool.py).

Two families, by what a masked autoencoder does with them:
- easy for an MAE (it reconstructs them with a low loss): motion blur, defocus, dark, low
  contrast, over-exposure;
- hard for an MAE (high loss whatever it learns): sensor noise, heavy compression, specular
  highlights, bubbles, lens contact.

Severities 1-5 follow ImageNet-C at 224 px (Hendrycks and Dietterich, arXiv 1903.12261, the
`hendrycks/robustness` code; the pool's 192-px frames are closest to that size): Gaussian noise
sigma .08-.38, defocus disk radius 3-10, motion blur (radius, sigma) (10, 3)-(20, 15), JPEG
quality 25-7, contrast .4-.05, brightness +.1-+.5 on HSV value. Darkness is
`endoscopycorruptions`' (Reyes-Amezcua et al.): HSV value -.1 to -.5. Its specular reflection
adds +.1-.5 to one rectangle, fainter than the saturated glare that EAD2019's specularity class
marks (arXiv 1905.03209), so specular highlights here are saturated blobs of our own design;
no published simulator of bubbles or lens contact was found, so those are ours too, each
described where it is drawn.

Specular highlights, bubbles and lens contact are local: each returns the mask of the pixels
it changed, so a patch that misses it can count as clean. The others cover the frame.
Every draw comes from the Generator passed in, so a frame's artefact depends on its seed only.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color

EASY = ("motion_blur", "defocus", "dark", "low_contrast", "over_exposure")
HARD = ("noise", "compression", "specular", "bubbles", "lens_contact")
KINDS = EASY + HARD
LOCAL = ("specular", "bubbles", "lens_contact")
CLEAN = "clean"
SEVERITIES = (1, 2, 3, 4, 5)

Artefact = Callable[[np.ndarray, int, np.random.Generator], tuple[np.ndarray, "np.ndarray | None"]]


def family(kind: str) -> str:
    """'clean', 'easy' or 'hard'."""
    return CLEAN if kind == CLEAN else "easy" if kind in EASY else "hard"


def apply(kind: str, frame: np.ndarray, severity: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """`frame` (uint8 RGB) with the artefact; and the boolean mask of a local one, else None."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity}: not in 1..5")
    return _ARTEFACTS[kind](frame.astype(np.float32) / 255.0, severity, rng)


def _uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _motion_blur(x, severity, rng):
    # ImageNet-C: a one-sided Gaussian-weighted trail of 2 * radius + 1 shifted copies along a
    # random angle in [-45, 45] degrees; edges replicate.
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    angle = np.deg2rad(rng.uniform(-45.0, 45.0))
    steps = np.arange(2 * radius + 1)
    weights = np.exp(-(steps**2) / (2.0 * sigma**2))
    weights /= weights.sum()
    h, w = x.shape[:2]
    padded = np.pad(x, ((2 * radius + 1,) * 2, (2 * radius + 1,) * 2, (0, 0)), mode="edge")
    out = np.zeros_like(x)
    for step, weight in zip(steps, weights):
        dy, dx = int(round(step * np.sin(angle))), int(round(step * np.cos(angle)))
        top, left = 2 * radius + 1 - dy, 2 * radius + 1 - dx
        out += weight * padded[top : top + h, left : left + w]
    return _uint8(out), None


def _defocus(x, severity, rng):
    # ImageNet-C: a disk kernel (radius, then a Gaussian anti-alias of the kernel itself).
    radius, alias = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    span = np.arange(-max(8, radius), max(8, radius) + 1)
    xx, yy = np.meshgrid(span, span)
    kernel = ndimage.gaussian_filter((xx**2 + yy**2 <= radius**2).astype(np.float32), alias)
    kernel /= kernel.sum()
    out = np.stack([ndimage.convolve(x[..., c], kernel, mode="mirror") for c in range(3)], axis=-1)
    return _uint8(out), None


def _shift_value(x, delta):
    hsv = color.rgb2hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + delta, 0.0, 1.0)
    return color.hsv2rgb(hsv)


def _dark(x, severity, rng):
    return _uint8(_shift_value(x, -[0.1, 0.2, 0.3, 0.4, 0.5][severity - 1])), None  # endoscopycorruptions


def _over_exposure(x, severity, rng):
    return _uint8(_shift_value(x, [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1])), None  # ImageNet-C brightness


def _low_contrast(x, severity, rng):
    factor = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]  # ImageNet-C contrast
    mean = x.mean(axis=(0, 1), keepdims=True)
    return _uint8((x - mean) * factor + mean), None


def _noise(x, severity, rng):
    sigma = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]  # ImageNet-C Gaussian noise
    return _uint8(x + rng.normal(0.0, sigma, size=x.shape)), None


def _compression(x, severity, rng):
    quality = [25, 18, 15, 10, 7][severity - 1]  # ImageNet-C JPEG
    buffer = io.BytesIO()
    Image.fromarray(_uint8(x)).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB")), None


def _grid(shape):
    h, w = shape[:2]
    return np.mgrid[0:h, 0:w].astype(np.float32)


def _blend(x, alpha, target):
    """x where alpha is 0, `target` (an image or a colour) where it is 1; and the mask."""
    alpha = alpha[..., None]
    return _uint8(x * (1.0 - alpha) + np.asarray(target, dtype=np.float32) * alpha), alpha[..., 0] > 0.0


def _specular(x, severity, rng):
    # Glare: `severity` saturated white ellipses (radius 2-6% of the side), a hard core and a
    # soft halo, clustered as reflections off one wet fold are.
    yy, xx = _grid(x.shape)
    side = min(x.shape[:2])
    cy, cx = rng.uniform(0.2, 0.8, size=2) * side
    alpha = np.zeros(x.shape[:2], np.float32)
    for _ in range(severity):
        ry, rx = rng.uniform(0.02, 0.06, size=2) * side
        oy, ox = cy + rng.normal(0, 0.08 * side), cx + rng.normal(0, 0.08 * side)
        d = np.sqrt(((yy - oy) / ry) ** 2 + ((xx - ox) / rx) ** 2)
        alpha = np.maximum(alpha, np.clip(1.6 - d, 0.0, 1.0))  # 1 inside 0.6 radii, 0 beyond 1.6
    return _blend(x, alpha, (1.0, 1.0, 1.0))


def _bubbles(x, severity, rng):
    # 3 x severity bubbles (radius 2-7% of the side) around one point: a bright thin rim, a
    # slightly lightened inside and a small highlight, as air bubbles in the lumen look.
    yy, xx = _grid(x.shape)
    side = min(x.shape[:2])
    cy, cx = rng.uniform(0.2, 0.8, size=2) * side
    out = x.copy()
    mask = np.zeros(x.shape[:2], bool)
    for _ in range(3 * severity):
        r = rng.uniform(0.02, 0.07) * side
        oy, ox = cy + rng.normal(0, 0.12 * side), cx + rng.normal(0, 0.12 * side)
        d = np.sqrt((yy - oy) ** 2 + (xx - ox) ** 2) / r
        inside = d <= 1.0
        rim = np.clip(1.0 - np.abs(d - 0.92) / 0.12, 0.0, 1.0)
        glint = np.clip(1.0 - np.sqrt((yy - oy + 0.45 * r) ** 2 + (xx - ox + 0.45 * r) ** 2) / (0.18 * r), 0.0, 1.0)
        out = np.where(inside[..., None], out * 0.85 + 0.15, out)
        out = out * (1.0 - 0.8 * rim[..., None]) + 0.8 * rim[..., None]
        out = out * (1.0 - glint[..., None]) + glint[..., None]
        mask |= d <= 1.05
    return _uint8(out), mask


def _lens_contact(x, severity, rng):
    # The lens touches the mucosa: a region entering from one edge turns into a washed-out,
    # featureless pink-red (heavy blur, blended towards the colour), radius 25-45% of the side.
    yy, xx = _grid(x.shape)
    h, w = x.shape[:2]
    edge = int(rng.integers(4))
    along = rng.uniform(0.2, 0.8)
    cy, cx = [(0.0, along * w), (h, along * w), (along * h, 0.0), (along * h, w)][edge]
    r = (0.25 + 0.05 * (severity - 1)) * min(h, w)
    d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
    alpha = np.clip((1.2 - d) / 0.4, 0.0, 1.0) * 0.85
    smear = ndimage.gaussian_filter(x, sigma=(8, 8, 0)) * 0.4 + np.array([0.86, 0.38, 0.34]) * 0.6
    return _blend(x, alpha, smear)


_ARTEFACTS: dict[str, Artefact] = {
    "motion_blur": _motion_blur,
    "defocus": _defocus,
    "dark": _dark,
    "low_contrast": _low_contrast,
    "over_exposure": _over_exposure,
    "noise": _noise,
    "compression": _compression,
    "specular": _specular,
    "bubbles": _bubbles,
    "lens_contact": _lens_contact,
}
