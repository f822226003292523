"""The proxy MAE: official parameter names, fixed sin-cos tables, checkpoints, seeded training."""

from __future__ import annotations

import argparse
import hashlib
import pathlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import KVASIR as KVASIR_ROOT
from optidel import seeding
from optidel.stages import crops as crop_lib
from optidel.stages.mae import (
    MAE,
    MAESpec,
    ProxyCheckpointError,
    load_proxy,
    save_proxy,
    to_input,
    train_proxy,
)

KVASIR = KVASIR_ROOT / "images"
pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPEC = MAESpec(
    image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
    decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4,
)  # fmt: skip


def kvasir_crops(n_images: int, per_image: int, size: int, seed: int = 0) -> np.ndarray:
    """Seeded square crops of real Kvasir-SEG frames, resized to `size`; the test skips where
    the dataset is not beside the checkout."""
    if not KVASIR.is_dir():
        pytest.skip(f"kvasir-seg not found at {KVASIR}")
    out = []
    for path in sorted(KVASIR.glob("*.jpg"))[:n_images]:
        with Image.open(path) as img:
            img.draft("RGB", (256, 256))  # JPEG decodes at a reduced scale: fast, same content
            image = np.asarray(img.convert("RGB"))
        h, w = image.shape[:2]
        rng = seeding.rng(seed, path.name)
        for _ in range(per_image):
            side = int(rng.integers(min(h, w) // 4, min(h, w) // 2))
            x0, y0 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
            out.append(crop_lib.crop_resize(image, (x0, y0, x0 + side, y0 + side), size))
    return np.stack(out)


def official_parameter_names(depth: int, decoder_depth: int) -> set[str]:
    """state_dict keys of facebookresearch/mae models_mae.MaskedAutoencoderViT (timm Blocks)."""
    block = [
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
        "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
        "mlp.fc2.weight", "mlp.fc2.bias",
    ]  # fmt: skip
    names = {
        "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
        "norm.weight", "norm.bias", "decoder_embed.weight", "decoder_embed.bias", "mask_token",
        "decoder_pos_embed", "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight",
        "decoder_pred.bias",
    }  # fmt: skip
    names |= {f"blocks.{i}.{b}" for i in range(depth) for b in block}
    names |= {f"decoder_blocks.{i}.{b}" for i in range(decoder_depth) for b in block}
    return names


def mae_sincos_reference(dim: int, grid: int) -> np.ndarray:
    """The paper code's get_2d_sincos_pos_embed layout: [sin x, cos x, sin y, cos y], x = column."""

    def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
        angles = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    ys, xs = np.mgrid[0:grid, 0:grid].astype(np.float64)
    table = np.concatenate([one_axis(dim // 2, xs), one_axis(dim // 2, ys)], axis=1)
    return np.concatenate([np.zeros((1, dim)), table])


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    return kvasir_crops(n_images=12, per_image=6, size=32)


def fixed_noise(n: int, seed: int = 7) -> torch.Tensor:
    return torch.rand(n, SPEC.num_patches, generator=seeding.torch_generator(seed, "test-noise"))


def test_parameter_names_are_the_official_ones():
    model = MAE(replace(SPEC, depth=3, decoder_depth=2))
    assert set(model.state_dict()) == official_parameter_names(depth=3, decoder_depth=2)


def test_position_embeddings_are_fixed_mae_sincos():
    model = MAE(SPEC)
    grid = SPEC.image_size // SPEC.patch_size
    np.testing.assert_allclose(model.pos_embed[0].numpy(), mae_sincos_reference(32, grid), atol=1e-6)
    np.testing.assert_allclose(model.decoder_pos_embed[0].numpy(), mae_sincos_reference(32, grid), atol=1e-6)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "pos_embed" not in trainable and "decoder_pos_embed" not in trainable


def test_masked_mse_averages_the_masked_patches_only(crops):
    model = MAE(SPEC)
    images, noise = to_input(crops[:3]), fixed_noise(3)
    keep = model.keep_index(noise, 0.75)
    assert keep.shape == (3, int(SPEC.num_patches * 0.25))
    # As the official random_masking: every visible patch has less noise than every masked one.
    for i in range(3):
        visible = torch.zeros(SPEC.num_patches, dtype=torch.bool)
        visible[keep[i]] = True
        assert noise[i][visible].max() < noise[i][~visible].min()
    with torch.inference_mode():
        pred = model.forward_decoder(model.forward_encoder(images, keep), keep)
        per_patch = (pred - model.patchify(images)).pow(2).mean(dim=-1)
        got = model.masked_mse(images, noise, 0.75)
    for i in range(3):
        hidden = sorted(set(range(SPEC.num_patches)) - set(keep[i].tolist()))
        assert torch.allclose(got[i], per_patch[i, hidden].mean(), rtol=1e-6)
        assert not torch.allclose(got[i], per_patch[i].mean(), rtol=1e-6)


def test_patchify_matches_the_official_layout():
    model = MAE(SPEC)
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    patches = model.patchify(images)
    # Patch (row 1, col 2), pixel (p=3, q=5), channel 2 sits at [row*4+col, (p*8+q)*3+c].
    assert patches[1, 1 * 4 + 2, (3 * 8 + 5) * 3 + 2] == images[1, 2, 8 + 3, 16 + 5]


def test_save_load_round_trip(tmp_path, crops):
    model = train_proxy(crops[:8], SPEC, 0.75, steps=2, batch_size=4, lr=1e-3, seed=1)
    path = tmp_path / "work" / "proxy.pt"
    sha = save_proxy(model, str(path))
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_proxy(str(path))
    assert loaded.spec == SPEC and not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    images, noise = to_input(crops[:4]), fixed_noise(4)
    with torch.inference_mode():
        assert torch.equal(model.masked_mse(images, noise, 0.75), loaded.masked_mse(images, noise, 0.75))


def test_official_checkpoint_shapes_inferred_heads_from_fallback(tmp_path):
    spec = replace(SPEC, depth=3, decoder_depth=2, decoder_embed_dim=16)
    path = tmp_path / "mae_official_style.pth"
    torch.save({"model": MAE(spec).state_dict()}, path)  # official files carry no spec
    fallback = MAESpec(64, 16, 64, 1, 4, 64, 1, 4)  # wrong shapes, right head counts
    assert load_proxy(str(path), fallback_spec=fallback).spec == spec
    with pytest.raises(ProxyCheckpointError, match="mae_official_style.pth.*fallback"):
        load_proxy(str(path))


class _TouchOnLoad:
    """Unpickling this would run code (create a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_pickled_code_refused(tmp_path):
    state = MAE(SPEC).state_dict()
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": state, "optidel_spec": asdict(SPEC), "hook": _TouchOnLoad(marker)}, evil)
    with pytest.raises(ProxyCheckpointError, match="evil.pt.*refused"):
        load_proxy(str(evil))
    assert not marker.exists()
    # The official training script's checkpoints also pickle argparse.Namespace args.
    with_args = tmp_path / "with_args.pth"
    torch.save({"model": state, "args": argparse.Namespace(lr=1.0)}, with_args)
    with pytest.raises(ProxyCheckpointError, match="with_args.pth.*Namespace"):
        load_proxy(str(with_args), fallback_spec=SPEC)


def test_wrong_shaped_or_incomplete_weights_refused(tmp_path):
    state = MAE(SPEC).state_dict()
    wrong = tmp_path / "wrong.pt"
    torch.save({"model": state, "optidel_spec": asdict(replace(SPEC, embed_dim=64))}, wrong)
    with pytest.raises(ProxyCheckpointError, match="wrong.pt.*do not fit"):
        load_proxy(str(wrong))
    encoder_only = tmp_path / "mae_pretrain.pth"
    torch.save({"model": {k: v for k, v in state.items() if "decoder" not in k and k != "mask_token"}}, encoder_only)
    with pytest.raises(ProxyCheckpointError, match="mae_pretrain.pth.*encoder-only"):
        load_proxy(str(encoder_only), fallback_spec=SPEC)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ProxyCheckpointError, match="garbage.pt"):
        load_proxy(str(garbage))


def test_training_lowers_masked_reconstruction_error(crops):
    untrained = train_proxy(crops, SPEC, 0.75, steps=0, batch_size=16, lr=1.5e-3, seed=0)
    trained = train_proxy(crops, SPEC, 0.75, steps=30, batch_size=16, lr=1.5e-3, seed=0)
    images, noise = to_input(crops), fixed_noise(len(crops))
    with torch.inference_mode():
        before = untrained.masked_mse(images, noise, 0.75).mean()
        after = trained.masked_mse(images, noise, 0.75).mean()
    assert after < 0.8 * before


def test_same_seed_same_weights(crops):
    runs = [train_proxy(crops, SPEC, 0.75, steps=4, batch_size=8, lr=1e-3, seed=s) for s in (5, 5, 6)]
    same, other = runs[0].state_dict(), runs[2].state_dict()
    assert all(torch.equal(same[k], v) for k, v in runs[1].state_dict().items())
    assert not torch.equal(same["blocks.0.attn.qkv.weight"], other["blocks.0.attn.qkv.weight"])


def test_bad_training_crops_named():
    with pytest.raises(ValueError, match=r"uint8 crops \(N>0, 32, 32, 3\)"):
        train_proxy(np.zeros((4, 16, 16, 3), np.uint8), SPEC, 0.75, steps=1, batch_size=2, lr=1e-3, seed=0)


def test_progress_reports_every_step_and_leaves_the_checkpoint_unchanged(tmp_path, crops):
    """The training's progress line only reads the loss: the checkpoint's bytes are the same
    with it as without it, under an explicit thread count."""
    from optidel.pipeline.progress import torch_threads

    seen = []
    with torch_threads(2):
        quiet = train_proxy(crops, SPEC, 0.75, steps=5, batch_size=8, lr=1e-3, seed=3)
        reported = train_proxy(
            crops, SPEC, 0.75, steps=5, batch_size=8, lr=1e-3, seed=3, progress=lambda i, x: seen.append((i, x))
        )
    assert [i for i, _ in seen] == [1, 2, 3, 4, 5] and all(np.isfinite(x) and x > 0 for _, x in seen)
    assert save_proxy(quiet, str(tmp_path / "a.pt")) == save_proxy(reported, str(tmp_path / "b.pt"))


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_weights_are_the_weights_after_early_step_and_leave_the_training_unchanged(crops):
    args = dict(steps=4, batch_size=8, lr=1e-3, seed=5)
    plain = train_proxy(crops, SPEC, 0.75, **args)
    with_early = train_proxy(crops, SPEC, 0.75, early_step=2, **args)
    assert plain.early is None
    assert _equal_states(with_early.state_dict(), plain.state_dict())  # the final weights do not move
    # The ends: after 0 steps the initial weights, after all of them the final ones.
    at_start = train_proxy(crops, SPEC, 0.75, early_step=0, **args).early
    assert _equal_states(at_start, train_proxy(crops, SPEC, 0.75, **{**args, "steps": 0}).state_dict())
    assert _equal_states(train_proxy(crops, SPEC, 0.75, early_step=4, **args).early, plain.state_dict())
    assert not _equal_states(with_early.early, plain.state_dict())
    assert not _equal_states(with_early.early, at_start)
    with pytest.raises(ValueError, match="early_step 5 is not within 0..4"):
        train_proxy(crops, SPEC, 0.75, early_step=5, **args)


def test_early_weights_travel_in_the_checkpoint_and_load_as_their_own_model(tmp_path, crops):
    model = train_proxy(crops[:8], SPEC, 0.75, steps=3, batch_size=4, lr=1e-3, seed=1, early_step=1)
    path = tmp_path / "proxy.pt"
    save_proxy(model, str(path))
    loaded = load_proxy(str(path))
    assert _equal_states(loaded.early, model.early)
    early = loaded.early_model()
    assert early.spec == SPEC and not early.training and _equal_states(early.state_dict(), model.early)
    # Same seed, same bytes, early weights included.
    again = train_proxy(crops[:8], SPEC, 0.75, steps=3, batch_size=4, lr=1e-3, seed=1, early_step=1)
    assert save_proxy(again, str(tmp_path / "again.pt")) == hashlib.sha256(path.read_bytes()).hexdigest()
    # A file without them (an official checkpoint, or an older proxy) has no early model.
    torch.save({"model": model.state_dict(), "optidel_spec": asdict(SPEC)}, tmp_path / "plain.pt")
    assert load_proxy(str(tmp_path / "plain.pt")).early_model() is None
    wrong = tmp_path / "wrong-early.pt"
    torch.save({"model": model.state_dict(), "optidel_spec": asdict(SPEC), "early": {"cls_token": model.cls_token}}, wrong)
    with pytest.raises(ProxyCheckpointError, match="wrong-early.pt.*do not fit"):
        load_proxy(str(wrong))
