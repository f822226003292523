"""The propose stage: masks from a proposer -> key patches, each with its crop resized for the
proxy; one source row, then its patch rows, per ingested source.

Proposers are entries of PROPOSERS (see `register_proposer`): the config's allowed values, the
CLI's choices, the runner's checks and the number of actor pools in pass 1 all read that table.
Built in: `sam` (segment-anything's automatic masks) and `regions` (weight-free).

torch and segment-anything are imported only on the SAM path (stages/sam.py): the regions
proposer's Ray workers then start in a fraction of a second and without torch's ~800 MB."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..manifests import schema
from . import columns
from .crops import crop_resize
from .keypatch import key_patches, mask_to_rle

AUTO = "auto"  # the config's default: `sam` when a checkpoint is given, else `regions`


@dataclass(frozen=True)
class Proposer:
    """One entry of PROPOSERS.

    `factory(config, seed, device)` (config a ProposeConfig) returns `generate(images)`: for a
    list of RGB uint8 images, a list of mask records per image in segment-anything's format
    (segmentation, bbox, area, predicted_iou, stability_score). It runs on a Ray worker."""

    name: str
    factory: Callable
    actor: bool  # loads a model once per worker: its own actor pool; else fused into the ingest task
    needs_weights: bool  # takes a checkpoint: checked before the pool is read, recorded in run.json


PROPOSERS: dict[str, Proposer] = {}


def register_proposer(name: str, *, actor: bool, needs_weights: bool):
    """Decorator: add `factory` to PROPOSERS under `name`."""

    def add(factory):
        if name in PROPOSERS or name == AUTO:
            raise ValueError(f"proposer {name!r} is already registered")
        PROPOSERS[name] = Proposer(name, factory, actor, needs_weights)
        return factory

    return add


@register_proposer("sam", actor=True, needs_weights=True)
def sam_masks(config, seed: int, device: str):
    from .sam import mask_generator

    return mask_generator(config, seed, device)


@register_proposer("regions", actor=False, needs_weights=False)
def region_masks(config, seed: int, device: str):
    from .regions import RegionsProposer  # scikit-image: seconds to import, needed on workers only

    regions = RegionsProposer(config)
    return lambda images: [regions.generate(image) for image in images]


def resolve_proposer(config) -> Proposer:
    """The entry a ProposeConfig names; `auto` means SAM when a checkpoint is given."""
    if config.proposer == AUTO:
        return PROPOSERS["sam" if config.sam_checkpoint else "regions"]
    try:
        return PROPOSERS[config.proposer]
    except KeyError:
        raise ValueError(f"unknown proposer {config.proposer!r}; expected one of {', '.join(PROPOSERS)}") from None


def check_weights(config) -> None:
    """Load the resolved proposer's weights once, so that a missing or wrong checkpoint is
    reported before the pool is read. Random SAM weights are allowed only for vit_tiny."""
    if not resolve_proposer(config).needs_weights:
        return
    from .sam import TINY_MODEL, CheckpointError, build_sam

    if not config.sam_checkpoint and config.sam_model != TINY_MODEL:
        raise CheckpointError(f"propose.proposer={config.proposer} needs propose.sam_checkpoint")
    build_sam(config.sam_model, config.sam_checkpoint)


def proposer_info(config) -> dict:
    """What run.json records about the proposer."""
    from .weights import file_sha256  # not from .sam: the driver calls this, and sam imports torch

    entry = resolve_proposer(config)
    checkpoint = config.sam_checkpoint if entry.needs_weights else None
    return {
        "name": entry.name,
        "model": config.sam_model if entry.needs_weights else None,
        "checkpoint": checkpoint,
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
    }


class Propose:
    """Ingest batch (SOURCE_COLUMNS + IMAGE) -> CANDIDATE_COLUMNS + CROP (uint8 (n, S, S, 3))."""

    def __init__(self, config, crop_size: int, seed: int = 0, device: str = "cpu", proposer: Proposer | None = None):
        self.config = config
        self.crop_size = crop_size
        self.seed = seed
        self.device = device
        # The driver resolves the entry and hands it over, so that a proposer registered only in
        # the driver's process (a plugin, a test) still runs on Ray's workers.
        self.proposer = proposer or resolve_proposer(config)
        self._generate = None  # images -> mask records per image (segment-anything's format)

    def setup(self) -> None:
        if self._generate is None:
            self._generate = self.proposer.factory(self.config, self.seed, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.setup()
        n = len(batch[columns.INPUT_INDEX])
        ok = [i for i in range(n) if batch[columns.STATUS][i] == schema.OK]
        # The whole batch at once: SAM batches frames through its encoder, and the regions
        # proposer's records keep their masks at the downscaled resolution until read.
        masks = dict(zip(ok, self.masks([batch[columns.IMAGE][i] for i in ok])))
        rows, crops = [], []
        for i in range(n):
            source = {col: batch[col][i] for col in columns.SOURCE_COLUMNS}
            rows.append({**source, columns.PATCH_INDEX: -1})
            if i not in masks:
                crops.append(np.zeros((self.crop_size, self.crop_size, 3), dtype=np.uint8))
                continue
            image = batch[columns.IMAGE][i]
            height, width = image.shape[:2]
            crops.append(crop_resize(image, (0, 0, width, height), self.crop_size))
            for k, patch in enumerate(key_patches(masks.pop(i), image.shape, self.config, pixels=image)):
                rows.append(self._patch_row(source, k, patch))
                crops.append(crop_resize(image, patch.box, self.crop_size))
        out = columns.to_batch(rows, columns.CANDIDATE_COLUMNS)
        size = self.crop_size
        out[columns.CROP] = np.stack(crops) if crops else np.zeros((0, size, size, 3), dtype=np.uint8)
        return out

    def masks(self, images: list[np.ndarray]) -> list[list[dict]]:
        """Mask records per image."""
        self.setup()
        return self._generate([np.ascontiguousarray(image) for image in images])

    @staticmethod
    def _patch_row(source: dict, k: int, patch) -> dict:
        source_id = str(source[columns.SOURCE_ID])
        x0, y0, x1, y1 = patch.box
        mask = np.asarray(patch.mask, dtype=bool)  # read once: the regions proposer's is lazy
        return {
            columns.SOURCE_ID: source_id,
            columns.INPUT_INDEX: source[columns.INPUT_INDEX],
            columns.PATCH_INDEX: k,
            columns.PATCH_ID: f"{source_id[:16]}-{k:03d}",
            "x0": x0,
            "y0": y0,
            "x1": x1,
            "y1": y1,
            "mask_area": patch.mask_area,
            "mask_fraction": mask[y0:y1, x0:x1].sum() / ((x1 - x0) * (y1 - y0)),
            "predicted_iou": patch.predicted_iou,
            "stability_score": patch.stability_score,
            "mask_rle": mask_to_rle(mask),
        }
