"""Pre-training: the proxy's MAE family (stages/mae.py, timm ViT blocks) trained on an arm's
shard stream for a fixed number of optimizer steps of a fixed batch size, so every arm sees
the same number of images whatever its size (equal compute, arXiv 2401.17542 Table 2): a 5%
arm is cycled through twenty times as many epochs as the full pool.

Augmentation is MAE's: a random resized crop (area 0.2-1, aspect 3/4-4/3) and a horizontal
flip. Initial weights derive from the seed alone, so arms of one seed start from the same
network and differ only by their data; crops and masks derive from the seed too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from optidel import seeding
from ..stages.mae import MAE, MAESpec, adamw_warmup_cosine, to_input
from .arms import Arm, stream

# Encoder/decoder shapes by name. "tiny" is the proxy's default shape (pipeline/config.py
# MAEConfig): CPU-sized. "small"/"base" are ViT-S/16 and ViT-B/16 with the official MAE
# decoders (ViT-S's is MAE's light 256-wide one), for GPUs.
MODELS = {
    "tiny": dict(
        patch_size=8, embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4
    ),
    "small": dict(
        patch_size=16, embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8
    ),
    "base": dict(
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
    ),
}


@dataclass(frozen=True)
class PretrainSettings:
    steps: int
    batch_size: int
    lr: float
    mask_ratio: float = 0.75
    min_crop_area: float = 0.2
    shuffle_buffer: int = 1000


def model_spec(name: str, size: int) -> MAESpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; one of {', '.join(MODELS)}")
    return MAESpec(image_size=size, **MODELS[name])


def initial_model(spec: MAESpec, seed: int) -> MAE:
    """The seed's starting network, the same for every arm; the global torch RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.torch_seed(seed, "eval-init"))
        return MAE(spec)


def pretrain(arm: Arm, spec: MAESpec, settings: PretrainSettings, seed: int, device: str) -> tuple[MAE, dict]:
    """(the pre-trained MAE in eval mode, {images_seen, loss_first, loss_last})."""
    model = initial_model(spec, seed).to(device).train()
    optimizer, schedule = adamw_warmup_cosine(model, settings.lr, settings.steps)
    images = stream(arm, seed, settings.shuffle_buffer)
    crops = seeding.rng(seed, "eval-crops")
    masks = seeding.torch_generator(seed, "eval-masks")
    losses = []
    for _ in range(settings.steps):
        batch = np.stack(
            [augment(next(images), spec.image_size, settings.min_crop_area, crops) for _ in range(settings.batch_size)]
        )
        noise = torch.rand(settings.batch_size, spec.num_patches, generator=masks)
        loss = model.masked_mse(to_input(batch).to(device), noise.to(device), settings.mask_ratio).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    tail = losses[-max(1, len(losses) // 10) :] if losses else [math.nan]
    stats = {
        "images_seen": settings.steps * settings.batch_size,
        "loss_first": losses[0] if losses else math.nan,
        "loss_last": float(np.mean(tail)),  # mean of the last tenth of the steps
    }
    return model.eval(), stats


def augment(image: np.ndarray, size: int, min_area: float, draws: np.random.Generator) -> np.ndarray:
    """A random resized crop of `image` (area fraction in [min_area, 1], aspect 3/4 to 4/3,
    clipped to the image), resized to size x size, flipped left-right half the time."""
    height, width = image.shape[:2]
    area = height * width * draws.uniform(min_area, 1.0)
    aspect = math.exp(draws.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(width, max(1, round(math.sqrt(area * aspect))))
    h = min(height, max(1, round(math.sqrt(area / aspect))))
    x = int(draws.integers(width - w + 1))
    y = int(draws.integers(height - h + 1))
    crop = Image.fromarray(image).resize((size, size), Image.BILINEAR, box=(x, y, x + w, y + h))
    out = np.asarray(crop)
    return out[:, ::-1] if draws.random() < 0.5 else out
