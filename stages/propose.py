"""The propose stage: masks from SAM (or the weight-free regions proposer) -> key patches, each
with its crop resized for the proxy; one source row, then its patch rows, per ingested source.

torch and segment-anything are imported only on the SAM path (stages/sam.py): the regions
proposer's Ray workers then start in a fraction of a second and without torch's ~800 MB."""

from __future__ import annotations

import numpy as np

from ..manifests import schema
from . import columns
from .crops import crop_resize
from .keypatch import key_patches, mask_to_rle
from .regions import RegionsProposer

TINY_MODEL = "vit_tiny"


def resolve_proposer(config) -> str:
    """'sam' or 'regions' for a ProposeConfig: 'auto' means SAM when a checkpoint is given.
    Random SAM weights are allowed only for vit_tiny (smoke tests)."""
    if config.proposer == "auto":
        return "sam" if config.sam_checkpoint else "regions"
    if config.proposer == "sam" and not config.sam_checkpoint and config.sam_model != TINY_MODEL:
        from .sam import CheckpointError

        raise CheckpointError("propose.proposer=sam needs propose.sam_checkpoint")
    return config.proposer


def proposer_info(config) -> dict:
    """What run.json records about the proposer."""
    from .sam import file_sha256

    name = resolve_proposer(config)
    checkpoint = config.sam_checkpoint if name == "sam" else None
    return {
        "name": name,
        "model": config.sam_model if name == "sam" else None,
        "checkpoint": checkpoint,
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
    }


class Propose:
    """Ingest batch (SOURCE_COLUMNS + IMAGE) -> CANDIDATE_COLUMNS + CROP (uint8 (n, S, S, 3))."""

    def __init__(self, config, crop_size: int, seed: int = 0, device: str = "cpu"):
        self.config = config
        self.crop_size = crop_size
        self.seed = seed
        self.device = device
        self.proposer_name = resolve_proposer(config)
        self._generate = None  # images -> mask records per image (segment-anything's format)

    def setup(self) -> None:
        if self._generate is not None:
            return
        if self.proposer_name == "regions":
            regions = RegionsProposer(self.config)
            self._generate = lambda images: [regions.generate(image) for image in images]
            return
        from .sam import mask_generator

        self._generate = mask_generator(self.config, self.seed, self.device)

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
            "predicted_iou": patch.predicted_iou,
            "stability_score": patch.stability_score,
            "mask_rle": mask_to_rle(patch.mask),
        }
