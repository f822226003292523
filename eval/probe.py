"""The primary metric: a linear probe on the frozen encoder's patch tokens.

Each token's feature (the encoder's last, normalised output, nothing masked) is mapped by one
linear layer to the p x p pixels it covers, pixel-shuffled to the input resolution: the
SETR-naive head with no hidden layer. Only the probe is trained, so the score measures what
pre-training put into the features (a full fine-tune lets an encoder from random weights catch
up). The loss is the mean binary cross entropy of the pixels, plus an L2 penalty, minimised by
full-batch L-BFGS from zero weights: convex and free of random draws, so a probe's result is a
function of the encoder alone and many pre-training seeds stay affordable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..stages.mae import MAE, to_input
from .segmentation import native_counts


@dataclass(frozen=True)
class ProbeSettings:
    iterations: int = 100  # L-BFGS iterations
    l2: float = 1e-4  # penalty on the weights (not the bias), per unit of mean loss


@dataclass
class Probe:
    mean: torch.Tensor  # (D,) feature standardisation, from the training features
    scale: torch.Tensor  # (D,)
    weight: torch.Tensor  # (D, p*p)
    bias: torch.Tensor  # (p*p,)
    patch_size: int

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Token features (N, G, G, D) -> foreground logits (N, 1, G*p, G*p)."""
        n, g = features.shape[0], features.shape[1]
        per_token = ((features - self.mean) / self.scale) @ self.weight + self.bias  # (N, G, G, p*p)
        return F.pixel_shuffle(per_token.permute(0, 3, 1, 2), self.patch_size).reshape(n, 1, g * self.patch_size, -1)


@torch.no_grad()
def token_features(mae: MAE, images: np.ndarray, device: str, batch_size: int = 64) -> torch.Tensor:
    """uint8 images (N, S, S, 3) -> float32 token features (N, G, G, D) on the CPU."""
    spec = mae.spec
    grid = spec.image_size // spec.patch_size
    out = []
    for start in range(0, len(images), batch_size):
        tokens = mae.patch_tokens(to_input(images[start : start + batch_size]).to(device))
        out.append(tokens.reshape(len(tokens), grid, grid, spec.embed_dim).float().cpu())
    return torch.cat(out)


def fit_probe(features: torch.Tensor, masks: np.ndarray, patch_size: int, settings: ProbeSettings) -> Probe:
    """Fit the probe to token features (N, G, G, D) and boolean masks (N, G*p, G*p)."""
    dim = features.shape[-1]
    flat = features.reshape(-1, dim)
    mean = flat.mean(dim=0)
    scale = flat.std(dim=0).clamp_min(1e-6)
    x = (flat - mean) / scale
    target = _per_token(torch.from_numpy(masks).float(), patch_size)  # (N*G*G, p*p)
    weight = torch.zeros(dim, patch_size**2, requires_grad=True)
    bias = torch.zeros(patch_size**2, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=settings.iterations, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ weight + bias, target) + settings.l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return Probe(mean, scale, weight.detach(), bias.detach(), patch_size)


@torch.no_grad()
def probe_counts(probe: Probe, features: torch.Tensor, native_masks: list[np.ndarray]) -> np.ndarray:
    """Per held-out image `iou_counts` (I, 2, 2) of the probe's prediction at each mask's size."""
    return native_counts(probe.logits(features), native_masks)


def _per_token(masks: torch.Tensor, p: int) -> torch.Tensor:
    """(N, G*p, G*p) -> (N*G*G, p*p), the pixel order that pixel_shuffle undoes."""
    n, side, _ = masks.shape
    g = side // p
    return masks.reshape(n, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(n * g * g, p * p)
