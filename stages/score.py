"""Score stage: a conditional-entropy estimate and an embedding for every candidate row.

A row's score is H(Y|X) in nats per dimension, estimated from the proxy MAE's masked
reconstruction: with mse the masked patches' mean squared error in normalised pixel space,
averaged over R = score.masks_per_patch random masks of ratio score.mask_ratio,

    score = 0.5 * ln(2 * pi * e * mse)

the differential entropy, per dimension, of a Gaussian whose variance is the reconstruction's
residual variance. Harder patches (more the proxy cannot predict from context) score higher.

`score_early` is the same estimate, under the same masks, by the proxy's early checkpoint (a
self-trained proxy's weights after score.mae.early_fraction of its training; NaN for a proxy
file without them). score_early - score = 0.5 * ln(mse_early / mse) is the row's learnability,
a label-free analogue of RHO-LOSS (arXiv 2206.07137): what the proxy learned to predict of it.
Sensor noise and glare stay hard under both checkpoints; tissue the proxy learns drops. Both
checkpoints see the same repeated images and noise: one more masked forward pass per micro-batch.

With score.lowpass_sigma the mse is taken over a Gaussian low-pass of the patch (MAE.masked_mse):
what a loss counts as hard includes what no model can predict, the aleatoric part (sensor noise,
compression blocks), which RHO-LOSS removes with a reference model's loss; blurring both the
reconstruction and the target removes its finest part without a second model.

The masks of row k derive from (seed, k, r) through optidel.seeding, k being the patch_id (or
the source_id for a source row), so a score never depends on luck, batch or worker. With
score.shared_masks every row gets the same R masks, from (seed, r) alone: PASS (AAAI 2024)
finds that per-sample MAE losses rank samples better when the mask draw is not part of the
difference between two rows. BLAS
results can change in the last bit with a matmul's size (seen on CPU at ViT-B width), so rows
run in micro-batches of one fixed shape (ROWS_PER_FORWARD rows, the last padded with blank
crops): no computation mixes samples of a batch, and with the shape fixed the kernels are
fixed too, so a row's bytes cannot depend on what else Ray put in the batch, nor on where Ray
cut a source's rows into batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from optidel import seeding

from ..manifests import schema
from . import columns
from .execution import MODEL_ACTOR, ROWS_PER_FORWARD
from .mae import MAE, MAESpec, load_proxy, read_checkpoint, to_input, train_proxy

_MSE_FLOOR = 1e-12  # a pixel-perfect reconstruction would otherwise score -inf


def proxy_spec(config) -> MAESpec:
    """The MAE shape a ScoreConfig asks for (also the head counts for official checkpoints)."""
    mae = config.mae
    return MAESpec(
        image_size=config.image_size,
        patch_size=mae.patch_size,
        embed_dim=mae.embed_dim,
        depth=mae.depth,
        num_heads=mae.num_heads,
        decoder_embed_dim=mae.decoder_embed_dim,
        decoder_depth=mae.decoder_depth,
        decoder_num_heads=mae.decoder_num_heads,
    )


def train_self_proxy(crops: np.ndarray, config, seed: int, progress=None, device: str = "cpu") -> MAE:
    """`score.proxy = self`: a small MAE of the configured shape trained on the pool's crops,
    with its early weights after score.mae.early_fraction of the steps; `progress` and `device`
    as for train_proxy."""
    early = config.mae.early_fraction
    return train_proxy(
        crops,
        proxy_spec(config),
        mask_ratio=config.mask_ratio,
        steps=config.mae.train_steps,
        batch_size=config.mae.batch_size,
        lr=config.mae.lr,
        seed=seed,
        progress=progress,
        device=device,
        early_step=None if early is None else round(early * config.mae.train_steps),
    )


def proxy_info(path: str, fallback_spec: MAESpec | None = None) -> dict:
    """What run.json records about the proxy: path, sha256, spec."""
    _, spec, sha256, _ = read_checkpoint(path, fallback_spec)
    return {"path": str(path), "sha256": sha256, "spec": asdict(spec)}


def mask_noise(seed: int, row_key: str | None, masks: int, num_patches: int) -> torch.Tensor:
    """(masks, num_patches) masking noise for one row: mask r from (seed, row_key, r) alone, or
    from (seed, r) when row_key is None (the masks every row shares)."""
    keys = ("score-mask", row_key) if row_key is not None else ("score-mask-shared",)
    generators = (seeding.torch_generator(seed, *keys, r) for r in range(masks))
    return torch.stack([torch.rand(num_patches, generator=g) for g in generators])


class Score:
    """CANDIDATE_COLUMNS + CROP -> CANDIDATE_COLUMNS + SCORE + SCORE_EARLY + EMBEDDING (see
    module docstring)."""

    execution = MODEL_ACTOR

    def __init__(self, config, seed: int, checkpoint: str, device: str = "cpu"):
        self.config = config
        self.seed = seed
        self.checkpoint = checkpoint
        self.device = device
        self.model: MAE | None = None
        self.early_proxy: MAE | None = None  # the early checkpoint, when the file has one

    def setup(self) -> None:
        model = load_proxy(self.checkpoint, fallback_spec=proxy_spec(self.config))
        if model.spec.image_size != self.config.image_size:
            raise ValueError(
                f"{self.checkpoint}: the proxy takes {model.spec.image_size} px crops but "
                f"score.image_size is {self.config.image_size}; set score.image_size={model.spec.image_size}"
            )
        early = model.early_model()
        self.early_proxy = None if early is None else early.to(self.device)
        self.model = model.to(self.device).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.model is None:
            self.setup()
        crops = self._crops(batch[columns.CROP])
        patch_index = np.asarray(batch[columns.PATCH_INDEX])
        # Patch rows carry sentinel source fields; only a source row's status says "not ok".
        scored = (patch_index >= 0) | (np.asarray(batch[columns.STATUS]) == schema.OK)
        keys = np.where(patch_index >= 0, batch[columns.PATCH_ID], batch[columns.SOURCE_ID])

        scores = np.full(len(patch_index), np.nan, dtype=np.float32)
        early_scores = scores.copy()
        embeddings = np.zeros((len(patch_index), self.model.spec.embed_dim), dtype=np.float32)
        rows = np.flatnonzero(scored)
        for start in range(0, len(rows), ROWS_PER_FORWARD):
            chunk = rows[start : start + ROWS_PER_FORWARD]
            scores[chunk], early_scores[chunk], embeddings[chunk] = self._score_rows(
                crops[chunk], [str(keys[i]) for i in chunk]
            )

        out = {name: values for name, values in batch.items() if name != columns.CROP}
        out[columns.SCORE] = scores
        out[columns.SCORE_EARLY] = early_scores
        out[columns.EMBEDDING] = embeddings
        return out

    def _crops(self, values: np.ndarray) -> np.ndarray:
        crops = np.stack(list(values)) if values.dtype == object else np.asarray(values)
        s = self.config.image_size
        if crops.dtype != np.uint8 or crops.shape[1:] != (s, s, 3):
            raise ValueError(
                f"column {columns.CROP!r}: expected uint8 (n, {s}, {s}, 3), got {crops.dtype} {crops.shape}"
            )
        return crops

    @torch.inference_mode()
    def _score_rows(self, crops: np.ndarray, keys: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Up to ROWS_PER_FORWARD crops -> (scores (n,), early scores (n,), unit embeddings
        (n, D)), computed on a micro-batch padded to the fixed shape."""
        n, r, spec = len(keys), self.config.masks_per_patch, self.model.spec
        padded = np.zeros((ROWS_PER_FORWARD, *crops.shape[1:]), dtype=np.uint8)
        padded[:n] = crops
        images = to_input(padded).to(self.device)
        noise = torch.zeros(ROWS_PER_FORWARD, r, spec.num_patches)
        for i, key in enumerate(keys):
            noise[i] = mask_noise(self.seed, None if self.config.shared_masks else key, r, spec.num_patches)
        # Row i's R masked copies are rows i*R .. i*R+R-1.
        repeated, noise = images.repeat_interleave(r, dim=0), noise.flatten(0, 1).to(self.device)

        def entropy(model: MAE) -> np.ndarray:
            mse = model.masked_mse(repeated, noise, self.config.mask_ratio, self.config.lowpass_sigma)
            mse = mse.double().view(ROWS_PER_FORWARD, r).mean(dim=1)[:n].clamp_min(_MSE_FLOOR)
            return (0.5 * torch.log(2 * math.pi * math.e * mse)).float().cpu().numpy()

        scores = entropy(self.model)
        early_scores = np.full(n, np.nan, np.float32) if self.early_proxy is None else entropy(self.early_proxy)
        embeddings = F.normalize(self.model.embed(images)[:n], dim=1).float().cpu().numpy()
        return scores, early_scores, embeddings

