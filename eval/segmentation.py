"""The secondary metric, fine-tuning: the pre-trained encoder plus a light decoder, trained end
to end on a few labeled pairs, then scored on the held-out split at each mask's own resolution.

The decoder is SETR-naive-like: a 3x3 conv on the grid of patch tokens, then a 1x1 conv to
p*p logits per token, pixel-shuffled to the input resolution. It is small on purpose: the
encoder's features, which is what pre-training changed, must do the work. Loss: binary cross
entropy plus soft Dice, the usual pair for polyps (a small foreground). Augmentation: random
horizontal and vertical flips (endoscopy has no up or left).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from optidel import seeding
from ..stages.mae import MAE, adamw_warmup_cosine, to_input
from .metrics import iou_counts


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int
    batch_size: int
    lr: float
    decoder_width: int = 64


class Segmenter(nn.Module):
    def __init__(self, mae: MAE, decoder_width: int):
        super().__init__()
        self.mae = mae
        # The MAE's own pixel decoder and mask token play no part in segmentation.
        for name, param in mae.named_parameters():
            if name.startswith("decoder") or name == "mask_token":
                param.requires_grad_(False)
        spec = mae.spec
        self.head = nn.Sequential(
            nn.Conv2d(spec.embed_dim, decoder_width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(decoder_width, spec.patch_size**2, 1),
            nn.PixelShuffle(spec.patch_size),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, 3, S, S) -> foreground logits (N, 1, S, S)."""
        spec = self.mae.spec
        n, grid = images.shape[0], spec.image_size // spec.patch_size
        tokens = self.mae.patch_tokens(images)
        return self.head(tokens.transpose(1, 2).reshape(n, spec.embed_dim, grid, grid))


def finetune(
    mae: MAE, images: np.ndarray, masks: np.ndarray, settings: FinetuneSettings, seed: int, device: str
) -> Segmenter:
    """Train encoder + decoder on uint8 images (N, S, S, 3) and boolean masks (N, S, S).
    The decoder's initial weights and the batch order derive from the seed alone, so every
    arm of one seed is fine-tuned identically."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.torch_seed(seed, "eval-decoder"))
        model = Segmenter(mae, settings.decoder_width)
    model.to(device).train()
    optimizer, schedule = adamw_warmup_cosine(model, settings.lr, settings.steps)
    draws = seeding.rng(seed, "eval-finetune")
    batches = _epoch_batches(len(images), settings.batch_size, draws)
    for _ in range(settings.steps):
        index = next(batches)
        x, y = _flipped(images[index], masks[index], draws)
        logits = model(to_input(x).to(device))
        target = torch.from_numpy(y).float().unsqueeze(1).to(device)
        loss = F.binary_cross_entropy_with_logits(logits, target) + _soft_dice_loss(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def test_counts(
    model: Segmenter, images: np.ndarray, native_masks: list[np.ndarray], device: str, batch_size: int = 32
) -> np.ndarray:
    """Per held-out image `iou_counts` (I, 2, 2) of the fine-tuned model's prediction."""
    parts = [
        native_counts(
            model(to_input(images[start : start + batch_size]).to(device)), native_masks[start : start + batch_size]
        )
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts)


@torch.no_grad()
def native_counts(logits: torch.Tensor, native_masks: list[np.ndarray]) -> np.ndarray:
    """`iou_counts` (N, 2, 2) of foreground logits (N, 1, S, S), each upsampled (bilinear) to
    its mask's own size and thresholded at 0 (probability 0.5), against the first N masks."""
    counts = []
    for logit, mask in zip(logits, native_masks):
        full = F.interpolate(logit[None].float(), size=mask.shape, mode="bilinear", align_corners=False)[0, 0]
        counts.append(iou_counts((full > 0).cpu().numpy(), mask))
    return np.stack(counts)


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    total = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    return (1.0 - (2.0 * inter + 1.0) / (total + 1.0)).mean()


def _epoch_batches(n: int, batch_size: int, draws: np.random.Generator) -> Iterator[np.ndarray]:
    """Batches of indices running through seeded permutations of range(n), epoch after epoch."""
    pending = np.empty(0, dtype=np.int64)
    while True:
        while len(pending) < batch_size:
            pending = np.concatenate([pending, draws.permutation(n)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def _flipped(images: np.ndarray, masks: np.ndarray, draws: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    images, masks = images.copy(), masks.copy()
    for i in range(len(images)):
        if draws.random() < 0.5:
            images[i], masks[i] = images[i, :, ::-1], masks[i, :, ::-1]
        if draws.random() < 0.5:
            images[i], masks[i] = images[i, ::-1], masks[i, ::-1]
    return images, masks
