"""The proxy model: a Masked Autoencoder (He et al. 2022) from timm's ViT blocks.

Parameter names follow facebookresearch/mae `models_mae.MaskedAutoencoderViT`, so the official
checkpoints that carry the decoder (e.g. mae_visualize_vit_base.pth, `{"model": state_dict}`)
load by key name. Both position embeddings are fixed 2-D sin-cos tables, stored but not trained.

Pixels are "normalised" as the official code feeds them: ImageNet mean/std per channel. The
reconstruction target is the normalised pixels themselves, not the per-patch-normalised ones
(`norm_pix_loss`): scoring compares patches by their absolute residual, and per-patch
normalisation would divide a flat patch's tiny residual by its tiny variance and call it hard.
Self-trained proxies therefore train on the same target they are scored with.

A self-trained proxy also keeps the weights it had early in its training (`MAE.early`, saved
in the same checkpoint file, so one sha256 covers both): the score stage's learnability
column compares a patch's loss under them with its loss under the final weights.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import posixpath
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Callable

import fsspec
import numpy as np
import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block, PatchEmbed
from timm.optim import param_groups_weight_decay
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from optidel import seeding

from .weights import load_error_reason

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ProxyCheckpointError(ValueError):
    """A proxy checkpoint that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class MAESpec:
    image_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for dim, heads in ((self.embed_dim, self.num_heads), (self.decoder_embed_dim, self.decoder_num_heads)):
            if dim % 4 or dim % heads:
                raise ValueError(f"width {dim} must be a multiple of 4 (sin-cos) and of its {heads} heads")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """(1, 1 + grid*grid, dim): a zero row for the cls token, then MAE's 2-D sin-cos table."""
    table = build_sincos2d_pos_embed([grid, grid], dim=dim, interleave_sin_cos=True)
    # timm puts the row code first; MAE's get_2d_sincos_pos_embed puts the column code first.
    table = table.roll(dim // 2, dims=1)
    return torch.cat([torch.zeros(1, dim), table]).unsqueeze(0)


def to_input(crops: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S) in the MAE's normalised pixel space."""
    x = torch.tensor(crops).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class MAE(nn.Module):
    def __init__(self, spec: MAESpec):
        super().__init__()
        self.spec = spec
        norm_layer = partial(nn.LayerNorm, eps=1e-6)  # as the official mae_vit_* builders
        grid = spec.image_size // spec.patch_size

        self.patch_embed = PatchEmbed(spec.image_size, spec.patch_size, 3, spec.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.embed_dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(spec.embed_dim, grid), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(spec.embed_dim, spec.num_heads, 4.0, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(spec.depth)
        )
        self.norm = norm_layer(spec.embed_dim)

        self.decoder_embed = nn.Linear(spec.embed_dim, spec.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, spec.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            sincos_pos_embed(spec.decoder_embed_dim, grid), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(spec.decoder_embed_dim, spec.decoder_num_heads, 4.0, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(spec.decoder_depth)
        )
        self.decoder_norm = norm_layer(spec.decoder_embed_dim)
        self.decoder_pred = nn.Linear(spec.decoder_embed_dim, spec.patch_size**2 * 3)
        self._init_weights()
        # The early checkpoint's state dict (train_proxy's early_step), or None. A plain
        # attribute, not a submodule: it is no part of this model's own state_dict.
        self.early: dict[str, torch.Tensor] | None = None

    def _init_weights(self) -> None:
        # The official initialisation: xavier for linears and the patch projection, N(0, .02) tokens.
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, L, p*p*3) in the official order (row, col, then p, q, channel)."""
        p = self.spec.patch_size
        n, c, s, _ = images.shape
        g = s // p
        x = images.reshape(n, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(n, g * g, p * p * c)

    def keep_index(self, noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
        """Per-sample noise (N, L) -> indices (N, len_keep) of the visible patches: as the
        official random_masking, the patches with the smallest noise stay visible."""
        len_keep = int(self.spec.num_patches * (1 - mask_ratio))
        return torch.argsort(noise, dim=1, stable=True)[:, :len_keep]

    def forward_encoder(self, x: torch.Tensor, keep_index: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, 3, S, S), visible patch indices (N, K) -> (N, 1 + K, D)."""
        x = self.patch_embed(x) + self.pos_embed[:, 1:, :]
        x = torch.gather(x, 1, keep_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, keep_index: torch.Tensor) -> torch.Tensor:
        """Encoder output (N, 1 + K, D) -> predicted patches (N, L, p*p*3)."""
        x = self.decoder_embed(latent)
        n, _, width = x.shape
        tokens = self.mask_token.expand(n, self.spec.num_patches, width)
        tokens = tokens.scatter(1, keep_index.unsqueeze(-1).expand(-1, -1, width), x[:, 1:, :])
        x = torch.cat([x[:, :1, :], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def masked_mse(
        self, images: torch.Tensor, noise: torch.Tensor, mask_ratio: float, lowpass_sigma: float | None = None
    ) -> torch.Tensor:
        """Per-sample MSE (N,) over the masked patches, in normalised pixel space. With
        `lowpass_sigma` (pixels), over a Gaussian low-pass of the image instead: the
        reconstruction where masked, the image where visible, both blurred, so that detail finer
        than sigma, which no model predicts from context (sensor noise, compression blocks),
        stops counting."""
        keep = self.keep_index(noise, mask_ratio)
        pred = self.forward_decoder(self.forward_encoder(images, keep), keep)
        target = self.patchify(images)
        masked = torch.ones(pred.shape[:2], dtype=pred.dtype, device=pred.device).scatter(1, keep, 0.0)
        if lowpass_sigma is not None:
            pred = torch.where(masked.bool().unsqueeze(-1), pred, target)
            pred, target = (self.patchify(_blur(self.unpatchify(x), lowpass_sigma)) for x in (pred, target))
        per_patch = (pred - target).pow(2).mean(dim=-1)
        return (per_patch * masked).sum(dim=1) / masked.sum(dim=1)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """patchify's inverse: (N, L, p*p*3) -> (N, 3, S, S)."""
        p, s = self.spec.patch_size, self.spec.image_size
        n, g = patches.shape[0], s // p
        return patches.reshape(n, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(n, 3, s, s)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder features of every patch (N, L, D), nothing masked, without the cls token."""
        everything = torch.arange(self.spec.num_patches, device=images.device).expand(images.shape[0], -1)
        return self.forward_encoder(images, everything)[:, 1:, :]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features (N, D): mean of the patch tokens, nothing masked."""
        return self.patch_tokens(images).mean(dim=1)

    def early_model(self) -> MAE | None:
        """An MAE of the same shape with the early weights, in eval mode; None without them."""
        if self.early is None:
            return None
        model = MAE(self.spec)
        model.load_state_dict(self.early, strict=True)
        return model.eval()


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur out to 3 sigma, reflected at the borders (torchvision's)."""
    return gaussian_blur(images, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state dict, which later optimizer steps do not change."""
    return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}


def adamw_warmup_cosine(
    model: nn.Module, lr: float, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The MAE recipe's optimizer for `steps` steps (the proxy here, pre-training and fine-tuning
    in optidel.eval): AdamW (betas 0.9/0.95, weight decay 0.05 except biases and norms), linear
    warm-up over the first tenth of the steps, then cosine decay to zero."""
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_proxy(
    crops: np.ndarray,
    spec: MAESpec,
    mask_ratio: float,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
    device: str = "cpu",
    early_step: int | None = None,
) -> MAE:
    """Train an MAE on uint8 crops (N, S, S, 3) on `device`; returns it on the CPU, in eval mode.

    AdamW as the official recipe (betas 0.9/0.95, weight decay 0.05 except biases and norms),
    linear warm-up over the first tenth of the steps, then cosine decay to zero: the official
    schedule, compressed to a few hundred steps. Batches (drawn with replacement) and masks
    come from a generator seeded by `seed`, the initial weights from a derived torch seed, so
    the same call gives the same weights. `progress(step, loss)`, if given, is called after
    each step (1-based); it only reads the loss, so the weights do not depend on it. Batches and
    masks are drawn on the CPU whatever the device, so a GPU sees the same draws. With
    `early_step` (0 to `steps`), the weights after that many steps are kept as the model's
    `early`; copying them changes nothing in the training.
    """
    s = spec.image_size
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (s, s, 3) or len(crops) == 0:
        raise ValueError(f"train_proxy: expected uint8 crops (N>0, {s}, {s}, 3), got {crops.dtype} {crops.shape}")
    if early_step is not None and not 0 <= early_step <= steps:
        raise ValueError(f"train_proxy: early_step {early_step} is not within 0..{steps} steps")
    # fork_rng: seed the initialisation without moving the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.torch_seed(seed, "proxy-init"))
        model = MAE(spec).to(device)
    optimizer, schedule = adamw_warmup_cosine(model, lr, steps)
    draws = seeding.torch_generator(seed, "proxy-batches")
    early = _weights(model) if early_step == 0 else None
    model.train()
    for step in range(1, steps + 1):
        index = torch.randint(len(crops), (batch_size,), generator=draws)
        noise = torch.rand(batch_size, spec.num_patches, generator=draws)
        loss = model.masked_mse(to_input(crops[index.numpy()]).to(device), noise.to(device), mask_ratio).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step == early_step:
            early = _weights(model)
        if progress is not None:
            progress(step, loss.item())
    model = model.cpu().eval()
    model.early = early
    return model


def save_proxy(model: MAE, path: str) -> str:
    """Write {"model": state_dict, "optidel_spec": spec}, plus "early": the early weights when
    the model has them, to a local path or fsspec URL, whole or not at all; returns the file's
    sha256."""
    payload = {"model": model.state_dict(), "optidel_spec": asdict(model.spec)}
    if model.early is not None:
        payload["early"] = model.early
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    fs, final = fsspec.core.url_to_fs(str(path))
    fs.makedirs(posixpath.dirname(final) or ".", exist_ok=True)
    with fs.open(final + ".tmp", "wb") as f:
        f.write(data)
    fs.mv(final + ".tmp", final)
    return hashlib.sha256(data).hexdigest()


def read_checkpoint(path: str, fallback_spec: MAESpec | None = None) -> tuple[dict, MAESpec, str, dict | None]:
    """(state_dict, spec, sha256, early state_dict or None) of a proxy checkpoint, tensors only
    (weights_only=True)."""
    try:
        with fsspec.open(str(path), "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ProxyCheckpointError(f"{path}: cannot read proxy checkpoint: {exc}") from exc
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ProxyCheckpointError(
            f"{path}: refused: not a tensors-only torch checkpoint ({load_error_reason(exc)}); "
            'pickled code or objects are never loaded: re-save just {"model": state_dict}'
        ) from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise ProxyCheckpointError(f'{path}: expected a {{"model": state_dict}} checkpoint')
    early = payload.get("early")
    if early is not None and not isinstance(early, dict):
        raise ProxyCheckpointError(f'{path}: "early" is not a state_dict')
    state = payload["model"]
    try:
        if isinstance(payload.get("optidel_spec"), dict):
            spec = MAESpec(**payload["optidel_spec"])
        else:
            spec = _infer_spec(state, fallback_spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProxyCheckpointError(f"{path}: cannot determine the model's shape: {exc}") from exc
    return state, spec, hashlib.sha256(data).hexdigest(), early


def load_proxy(path: str, fallback_spec: MAESpec | None = None) -> MAE:
    """An MAE from a checkpoint of ours or an official one with its decoder, in eval mode, with
    its early weights when the file has them.

    Official files carry no spec: shapes give everything but the head counts, which come from
    `fallback_spec`."""
    state, spec, _, early = read_checkpoint(path, fallback_spec)
    model = MAE(spec)
    model.early = early
    try:
        model.load_state_dict(state, strict=True)
        model.early_model()  # early weights that do not fit are refused here, not when scoring
    except RuntimeError as exc:
        raise ProxyCheckpointError(f"{path}: weights do not fit an MAE of {spec}: {exc}") from exc
    return model.eval()


def _infer_spec(state: dict, fallback: MAESpec | None) -> MAESpec:
    if fallback is None:
        raise ValueError("the file has no optidel_spec; pass a fallback spec for the head counts")
    for key in ("patch_embed.proj.weight", "pos_embed", "decoder_embed.weight"):
        if key not in state:
            raise KeyError(f"{key} missing (an encoder-only checkpoint cannot reconstruct)")
    embed_dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    shapes = {
        "image_size": grid * patch,
        "patch_size": patch,
        "embed_dim": embed_dim,
        "depth": _count_blocks(state, "blocks."),
        "decoder_embed_dim": state["decoder_embed.weight"].shape[0],
        "decoder_depth": _count_blocks(state, "decoder_blocks."),
    }
    rest = {f.name: getattr(fallback, f.name) for f in fields(MAESpec) if f.name not in shapes}
    return MAESpec(**shapes, **rest)


def _count_blocks(state: dict, prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in state if key.startswith(prefix)})
