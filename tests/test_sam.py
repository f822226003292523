"""Building SAM and loading its weights: round trips, and every kind of bad checkpoint refused
with an error that names the file."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from sam_fixtures import save_sam, save_tiny_sam, tiny_sam

from optidel.stages.sam import CheckpointError, build_sam
from optidel.stages.weights import file_sha256


def _marker_writer(path: str):
    """Run on unpickling: proves code in a checkpoint was executed."""
    with open(path, "w") as f:
        f.write("code ran")


class PickledCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_marker_writer, (self.marker,))


def _embeddings(model, seed=0):
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(seed)) * 255
    with torch.inference_mode():
        return model.image_encoder(model.preprocess(image))


def test_vit_tiny_is_a_small_real_sam():
    model = tiny_sam(seed=0)
    assert model.image_encoder.img_size == 256
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert _embeddings(model).shape == (1, 64, 16, 16)


def _predict(model, seed=0):
    """Mask logits and predicted IoUs for one point prompt on a seeded random image."""
    image = np.random.default_rng(seed).integers(0, 256, (200, 240, 3), dtype=np.uint8)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    _, iou, logits = predictor.predict(point_coords=np.array([[100.0, 120.0]]), point_labels=np.array([1]))
    return logits, iou


def test_save_load_round_trip_gives_equal_outputs(tmp_path):
    path = save_tiny_sam(tmp_path / "tiny.pt", seed=3)
    loaded_logits, loaded_iou = _predict(build_sam("vit_tiny", str(path)))
    original_logits, original_iou = _predict(tiny_sam(seed=3))
    other_logits, _ = _predict(tiny_sam(seed=4))
    assert np.array_equal(loaded_logits, original_logits) and np.array_equal(loaded_iou, original_iou)
    assert not np.array_equal(loaded_logits, other_logits)


def test_missing_file_is_refused(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(CheckpointError, match="absent.pt.*not found"):
        build_sam("vit_tiny", str(path))


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = save_tiny_sam(tmp_path / "tiny.pt")
    with pytest.raises(CheckpointError) as err:
        build_sam("vit_b", str(path))
    message = str(err.value)
    assert str(path) in message and "vit_b" in message
    assert "image_encoder.pos_embed" in message  # the first mismatched key, with both shapes
    assert "(1, 16, 16, 64)" in message and "(1, 64, 64, 768)" in message


def test_truncated_or_padded_state_dicts_are_refused(tmp_path):
    state = tiny_sam().state_dict()
    dropped = list(state)[5]
    truncated = {k: v for k, v in state.items() if k != dropped}
    torch.save(truncated, tmp_path / "truncated.pt")
    with pytest.raises(CheckpointError, match=f"truncated.pt.*missing key {dropped}"):
        build_sam("vit_tiny", str(tmp_path / "truncated.pt"))

    torch.save({**state, "extra.weight": torch.zeros(2)}, tmp_path / "padded.pt")
    with pytest.raises(CheckpointError, match="padded.pt.*unexpected key extra.weight"):
        build_sam("vit_tiny", str(tmp_path / "padded.pt"))


def test_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"image_encoder.pos_embed": PickledCode(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pt: refused: not a plain weights file"):
        build_sam("vit_tiny", str(path))
    assert not marker.exists()


def test_unreadable_and_non_state_dict_files_are_refused(tmp_path):
    good = save_tiny_sam(tmp_path / "tiny.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="broken.pt: unreadable"):
        build_sam("vit_tiny", str(broken))

    listed = tmp_path / "listed.pt"
    torch.save([torch.zeros(3)], listed)
    with pytest.raises(CheckpointError, match="listed.pt: not a state dict"):
        build_sam("vit_tiny", str(listed))


def test_unknown_model_type_is_an_error():
    with pytest.raises(ValueError, match="vit_x"):
        build_sam("vit_x", None)


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "tiny.pt"
    save_sam(tiny_sam(seed=1), path)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
