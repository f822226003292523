"""Building segment-anything models, loading their weights safely, and the `sam` proposer's
mask generator (the only way into torch and segment-anything from the propose stage).

segment_anything's own builders `torch.load` a checkpoint without `weights_only`, which would
run any code pickled into the file; here the architecture comes from its registry and the
weights are loaded separately, as plain tensors only.
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import torch
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from optidel import seeding

from .amg_batched import BatchedMaskGenerator
from .weights import load_error_reason

TINY_MODEL = "vit_tiny"  # a small image-size-256 SAM for tests and CPU smoke runs; random weights allowed
MODEL_TYPES = ("vit_b", "vit_l", "vit_h", TINY_MODEL)
# ProposeConfig keys passed under segment-anything's own names to either mask generator.
AMG_SETTINGS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "box_nms_thresh",
    "min_mask_region_area",
)


class CheckpointError(ValueError):
    """A SAM checkpoint that is missing, unreadable, unsafe or of the wrong shape."""


def build_sam(model_type: str, checkpoint: str | None) -> Sam:
    """SAM of `model_type` in eval mode; random weights (seeded by the caller) when
    `checkpoint` is None, else the checkpoint's weights, loaded strictly."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown SAM model type {model_type!r}; expected one of {MODEL_TYPES}")
    model = _build_tiny() if model_type == TINY_MODEL else sam_model_registry[model_type](checkpoint=None)
    if checkpoint is not None:
        _load_weights(model, checkpoint, model_type)
    return model.eval()


def seeded_sam(config, seed: int) -> Sam:
    """The SAM a ProposeConfig names; random weights (vit_tiny smoke runs) seeded from `seed`."""
    # Forked so that seeding random weights leaves the caller's torch RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.derive(seed, "sam"))
        return build_sam(config.sam_model, config.sam_checkpoint)


def mask_generator(config, seed: int, device: str):
    """images -> mask records per image, by SAM's automatic mask generation with the settings of
    a ProposeConfig."""
    model = seeded_sam(config, seed).to(device).eval()
    settings = {name: getattr(config, name) for name in AMG_SETTINGS}
    if config.crop_n_layers == 0:
        # Same masks as the reference generator (tests/test_amg_batched.py), many times faster.
        return BatchedMaskGenerator(model, **settings).generate_batch
    try:
        # Crop layers (zoomed-in re-runs) exist only in the reference generator.
        reference = SamAutomaticMaskGenerator(
            model, crop_n_layers=config.crop_n_layers, output_mode="binary_mask", **settings
        )
    except ImportError as exc:  # segment_anything needs OpenCV for min_mask_region_area > 0
        raise ValueError(f"propose.min_mask_region_area > 0 needs OpenCV (cv2): {exc}") from None

    def generate(images):
        with torch.inference_mode():
            return [reference.generate(image) for image in images]

    return generate


def _build_tiny() -> Sam:
    """A small but complete SAM (image size 256) for tests and CPU smoke runs."""
    image_size, patch_size, dim = 256, 16, 64
    grid = image_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=dim,
            depth=2,
            num_heads=2,
            mlp_ratio=4,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=4 * dim, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=dim,
        ),
        # SAM's own normalisation constants, so the tiny model sees inputs as the real ones do.
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def _load_weights(model: Sam, checkpoint: str, model_type: str) -> None:
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{checkpoint}: SAM checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses anything but tensors and plain containers: the file would run code.
        raise CheckpointError(f"{checkpoint}: refused: not a plain weights file ({load_error_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, OSError... for broken files
        raise CheckpointError(f"{checkpoint}: unreadable SAM checkpoint: {load_error_reason(exc)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{checkpoint}: not a state dict (a mapping of parameter names to tensors)")
    problem = _first_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"{checkpoint}: does not fit SAM {model_type}: {problem}")
    model.load_state_dict(state, strict=True)


def _first_mismatch(expected: dict, given: dict) -> str | None:
    """The first key (in the model's order) that is missing or shaped differently, or the
    first unexpected key; None when the state dict fits."""
    for key, tensor in expected.items():
        if key not in given:
            return f"missing key {key}"
        if tuple(given[key].shape) != tuple(tensor.shape):
            return f"key {key} has shape {tuple(given[key].shape)}, expected {tuple(tensor.shape)}"
    extra = [key for key in given if key not in expected]
    return f"unexpected key {extra[0]}" if extra else None
