"""The eval's primary metric (the linear probe on frozen tokens) and its statistics (the paired
bootstrap), on hand-made cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optidel.eval.metrics import iou_counts, miou
from optidel.eval.probe import ProbeSettings, fit_probe, probe_counts, token_features
from optidel.eval.pretrain import initial_model, model_spec
from optidel.eval.stats import paired_difference
from optidel.stages.mae import to_input

# --- the probe ------------------------------------------------------------------------------

P, G, D = 4, 4, 6  # patch side, tokens per side, feature width


def _tokens_and_masks(seed: int, n: int):
    """Token features whose first component says whether the token's LEFT half is polyp: the
    probe must learn the pixel layout inside a token, not just a per-token label."""
    draws = np.random.default_rng(seed)
    features = draws.normal(size=(n, G, G, D)).astype(np.float32)
    masks = np.zeros((n, G * P, G * P), dtype=bool)
    for i, r, c in zip(*np.nonzero(features[..., 0] > 0)):
        masks[i, r * P : (r + 1) * P, c * P : c * P + P // 2] = True
    return torch.from_numpy(features), masks


def test_probe_learns_the_pixels_inside_each_token():
    features, masks = _tokens_and_masks(0, 40)
    probe = fit_probe(features, masks, P, ProbeSettings(iterations=200, l2=0.0))
    held_features, held_masks = _tokens_and_masks(1, 10)
    counts = probe_counts(probe, held_features, list(held_masks))
    assert counts.shape == (10, 2, 2)
    assert miou(counts.sum(axis=0)) > 0.99

    # Features that carry nothing about the mask: the same probe fit scores far lower.
    noise = torch.from_numpy(np.random.default_rng(2).normal(size=features.shape).astype(np.float32))
    blind = fit_probe(noise, masks, P, ProbeSettings(iterations=200, l2=0.0))
    assert miou(probe_counts(blind, held_features, list(held_masks)).sum(axis=0)) < 0.8


def test_probe_is_deterministic_and_scores_at_native_size():
    features, masks = _tokens_and_masks(3, 20)
    a = fit_probe(features, masks, P, ProbeSettings(iterations=30))
    b = fit_probe(features, masks, P, ProbeSettings(iterations=30))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    # A mask at twice the resolution: the logits are upsampled to it before thresholding, so the
    # counts are in its pixels (4x as many).
    native = np.repeat(np.repeat(masks[:2], 2, axis=1), 2, axis=2)
    doubled = probe_counts(a, features[:2], list(native))
    single = probe_counts(a, features[:2], list(masks[:2]))
    assert (doubled[:, 0, 1] + doubled[:, 1, 1] >= native[0].size).all()  # the unions cover every pixel
    assert 3.5 < doubled[:, :, 1].sum() / single[:, :, 1].sum() < 4.5


def test_token_features_of_a_real_encoder(one_torch_thread):
    spec = model_spec("tiny", 32)
    mae = initial_model(spec, seed=0).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    features = token_features(mae, images, "cpu", batch_size=2)
    assert features.shape == (3, 4, 4, spec.embed_dim)
    # Token (r, c) is the encoder's output for patch r * 4 + c, batched or not.
    tokens = mae.patch_tokens(to_input(images))
    assert torch.allclose(features[2, 1, 3], tokens[2, 1 * 4 + 3], atol=1e-6)
    alone = token_features(mae, images[1:2], "cpu")
    assert torch.allclose(features[1], alone[0], atol=1e-5)


# --- the paired bootstrap -------------------------------------------------------------------

PERFECT = [[4, 4], [4, 4]]  # one image: background 4/4, foreground 4/4 -> mIoU 1.0
HALF = [[4, 4], [0, 4]]  # background 4/4, foreground 0/4 -> mIoU 0.5


def test_bootstrap_over_seeds_has_the_known_interval():
    # Per-seed differences 0.5 and 0: resampled seed means are 0, 0.25 or 0.5 with
    # probabilities 1/4, 1/2, 1/4, so the 2.5th and 97.5th percentiles are exactly 0 and 0.5.
    a = np.array([[PERFECT], [HALF]])
    b = np.array([[HALF], [HALF]])
    result = paired_difference(a, b)
    assert result == {"diff": 0.25, "ci95": [0.0, 0.5]}
    assert paired_difference(b, a) == {"diff": -0.25, "ci95": [-0.5, 0.0]}


def test_bootstrap_over_images_has_the_known_interval():
    # One seed, two images; A is perfect on the first, B on neither. Resampled image sets are
    # {1,1}, {1,2}, {2,2}: differences computed from summed counts, the extremes are the bounds.
    a = np.array([[PERFECT, HALF]])
    b = np.array([[HALF, HALF]])

    def diff(images):
        return miou(a[0][images].sum(axis=0)) - miou(b[0][images].sum(axis=0))

    result = paired_difference(a, b)
    assert result["diff"] == pytest.approx(diff([0, 1]))
    assert result["ci95"] == pytest.approx([diff([1, 1]), diff([0, 0])])
    assert result["ci95"] == pytest.approx([0.0, 0.5])


def test_bootstrap_of_a_constant_difference_is_a_point_and_is_seeded():
    rng = np.random.default_rng(0)
    per_image = np.stack([iou_counts(rng.random((6, 6)) > 0.5, rng.random((6, 6)) > 0.5) for _ in range(5)])
    a = np.stack([per_image] * 3)
    assert paired_difference(a, a) == {"diff": 0.0, "ci95": [0.0, 0.0]}
    b = rng.integers(1, 9, size=(3, 5, 2, 2))
    b[..., 1] = b[..., 0] + rng.integers(0, 4, size=(3, 5, 2))  # union >= intersection
    assert paired_difference(a, b) == paired_difference(a, b)  # same draws every time
    with pytest.raises(ValueError, match="one shape"):
        paired_difference(a, b[:2])
