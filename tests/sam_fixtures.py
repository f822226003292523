"""A tiny, randomly initialised but real SAM, and the mask-generator settings it needs.

Random weights make SamAutomaticMaskGenerator propose near-whole-image masks with low
predicted IoU and zero stability (DESIGN.md), so tests relax its thresholds, its box NMS and
the key-patch area and NMS filters; otherwise every mask would be filtered away."""

from __future__ import annotations

from pathlib import Path

import torch

from optidel.pipeline.config import ProposeConfig
from optidel.stages.sam import build_sam
from segment_anything.modeling import Sam

RELAXED = {
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
    "min_area_frac": 0.0,
    "max_area_frac": 1.0,
    "patch_nms_thresh": 1.0,
}


def tiny_sam(seed: int = 0):
    """vit_tiny with weights drawn from `seed` (the caller's torch RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_sam("vit_tiny", None)


def save_tiny_sam(path: Path, seed: int = 0) -> Path:
    save_sam(tiny_sam(seed), path)
    return path


def relaxed_sam_config(checkpoint: Path | None, **overrides) -> ProposeConfig:
    """ProposeConfig for the tiny SAM: 4 points per side, relaxed filters."""
    settings = {
        "proposer": "sam",
        "sam_model": "vit_tiny",
        "sam_checkpoint": str(checkpoint) if checkpoint else None,
        "points_per_side": 4,
        **RELAXED,
    }
    return ProposeConfig(**{**settings, **overrides})


def save_sam(model: Sam, path: str | Path) -> None:
    """Save the model's state dict only (loadable with weights_only=True)."""
    torch.save(model.state_dict(), path)
