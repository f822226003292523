"""score.lowpass_sigma: the masked reconstruction error over a Gaussian low-pass of the patch
(stages/mae.py, MAE.masked_mse)."""

from __future__ import annotations

import torch

from optidel.stages.mae import MAE, MAESpec

SPEC = MAESpec(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32,
               decoder_depth=1, decoder_num_heads=2)


def _model() -> MAE:
    torch.manual_seed(0)
    return MAE(SPEC).eval()


def test_unpatchify_inverts_patchify():
    model, images = _model(), torch.randn(3, 3, 32, 32)
    assert torch.equal(model.unpatchify(model.patchify(images)), images)


def test_a_vanishing_lowpass_is_the_plain_error():
    model, images, noise = _model(), torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        plain = model.masked_mse(images, noise, 0.75)
        sharp = model.masked_mse(images, noise, 0.75, lowpass_sigma=0.01)  # a 3-tap kernel, all weight in the middle
    torch.testing.assert_close(sharp, plain)


def test_the_lowpass_discounts_pixel_noise_and_keeps_structure():
    """Pixel noise adds to the plain error about its variance; to the low-passed one, a small share
    of it. A hand check of the blur: noise of variance v blurred by sigma keeps about v / (4 pi sigma^2)."""
    model = _model()
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    smooth = torch.stack([torch.sin(xx / 5), torch.cos(yy / 7), torch.sin((xx + yy) / 9)]).expand(4, 3, 32, 32)
    noisy = smooth + 0.5 * torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = model.masked_mse(noisy, noise, 0.75) - model.masked_mse(smooth, noise, 0.75)
        low = model.masked_mse(noisy, noise, 0.75, 2.0) - model.masked_mse(smooth, noise, 0.75, 2.0)
    assert (plain > 0.2).all()  # the noise's variance, 0.25, less what the decoder happens to match
    assert (low.abs() < 0.25 / (4 * torch.pi * 4) * 3).all()  # within 3x of what survives a sigma-2 blur
