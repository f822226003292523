"""Score stage: conditional-entropy scores and embeddings, independent of batch composition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import KVASIR as KVASIR_ROOT
from optidel import seeding
from optidel.manifests import schema
from optidel.pipeline.config import MAEConfig, ScoreConfig
from optidel.stages import columns
from optidel.stages import crops as crop_lib
from optidel.stages.mae import MAE, MAESpec, save_proxy, to_input, train_proxy
from optidel.stages.score import Score, mask_noise, proxy_info, proxy_spec, train_self_proxy

KVASIR = KVASIR_ROOT / "images"
pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = ScoreConfig(
    image_size=32,
    mask_ratio=0.75,
    masks_per_patch=4,
    mae=MAEConfig(patch_size=8, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=1,
                  decoder_num_heads=4),
)  # fmt: skip
PATCHES_PER_SOURCE = 5


def load_sources(n: int) -> list[tuple[str, np.ndarray]]:
    if not KVASIR.is_dir():  # the test skips where the dataset is not beside the checkout
        pytest.skip(f"kvasir-seg not found at {KVASIR}")
    out = []
    for path in sorted(KVASIR.glob("*.jpg"))[:n]:
        with Image.open(path) as img:
            img.draft("RGB", (256, 256))  # JPEG decodes at a reduced scale: fast, same content
            out.append((path.stem, np.asarray(img.convert("RGB"))))
    return out


def source_rows(index: int, source_id: str, image: np.ndarray) -> list[dict]:
    """One ok source's rows, as propose emits them: the source row, then its patch rows."""
    h, w = image.shape[:2]
    rows = [
        {columns.INPUT_INDEX: index, columns.SOURCE_ID: source_id, columns.STATUS: schema.OK,
         columns.WIDTH: w, columns.HEIGHT: h, columns.PATCH_INDEX: -1,
         columns.CROP: crop_lib.crop_resize(image, (0, 0, w, h), CONFIG.image_size)}
    ]  # fmt: skip
    rng = seeding.rng(0, "test-boxes", source_id)
    for k in range(PATCHES_PER_SOURCE):
        side = int(rng.integers(min(h, w) // 5, min(h, w) // 2))
        x0, y0 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        box = (x0, y0, x0 + side, y0 + side)
        rows.append(
            {columns.INPUT_INDEX: index, columns.SOURCE_ID: source_id, columns.PATCH_INDEX: k,
             columns.PATCH_ID: f"{source_id}-{k}", **dict(zip(columns.BOX_COLUMNS, box)),
             columns.CROP: crop_lib.crop_resize(image, box, CONFIG.image_size)}
        )  # fmt: skip
    return rows


def corrupt_source_row(index: int) -> dict:
    s = CONFIG.image_size
    return {columns.INPUT_INDEX: index, columns.SOURCE_ID: "", columns.STATUS: schema.CORRUPT,
            columns.PATCH_INDEX: -1, columns.CROP: np.zeros((s, s, 3), np.uint8)}  # fmt: skip


def make_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    batch = columns.to_batch(rows, columns.CANDIDATE_COLUMNS)
    batch[columns.CROP] = np.stack([row[columns.CROP] for row in rows])
    return batch


@pytest.fixture(scope="module")
def rows_by_source() -> list[list[dict]]:
    return [source_rows(i, f"src{i:02d}-{stem}", image) for i, (stem, image) in enumerate(load_sources(8))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, rows_by_source) -> str:
    crops = np.stack([row[columns.CROP] for rows in rows_by_source for row in rows])
    model = train_proxy(
        crops, proxy_spec(CONFIG), CONFIG.mask_ratio, steps=25, batch_size=16, lr=1.5e-3, seed=0, early_step=5
    )
    path = tmp_path_factory.mktemp("proxy") / "proxy.pt"
    save_proxy(model, str(path))
    return str(path)


def by_row_key(out: dict[str, np.ndarray]) -> dict[tuple, tuple[bytes, bytes]]:
    keys = zip(out[columns.INPUT_INDEX].tolist(), out[columns.PATCH_INDEX].tolist())
    named = (columns.SCORE, columns.SCORE_EARLY, columns.EMBEDDING)
    return {key: tuple(out[name][i].tobytes() for name in named) for i, key in enumerate(keys)}


def test_scores_finite_embeddings_unit_norm_and_columns(checkpoint, rows_by_source):
    rows = rows_by_source[0] + [corrupt_source_row(99)]
    batch = make_batch(rows)
    out = Score(CONFIG, seed=0, checkpoint=checkpoint)(batch)

    assert columns.CROP not in out
    assert set(out) == set(columns.CANDIDATE_COLUMNS) | {columns.SCORE, columns.SCORE_EARLY, columns.EMBEDDING}
    for name in columns.CANDIDATE_COLUMNS:
        np.testing.assert_array_equal(out[name], batch[name], err_msg=name)
    ok = out[columns.STATUS] != schema.CORRUPT
    for name in (columns.SCORE, columns.SCORE_EARLY, columns.EMBEDDING):
        assert out[name].dtype == np.float32, name
    assert out[columns.EMBEDDING].shape == (len(rows), CONFIG.mae.embed_dim)
    assert np.isfinite(out[columns.SCORE][ok]).all() and np.isfinite(out[columns.SCORE_EARLY][ok]).all()
    np.testing.assert_allclose(np.linalg.norm(out[columns.EMBEDDING][ok], axis=1), 1.0, rtol=1e-5)
    assert np.isnan(out[columns.SCORE][~ok]).all() and np.isnan(out[columns.SCORE_EARLY][~ok]).all()
    assert not out[columns.EMBEDDING][~ok].any()


def test_a_row_scores_the_same_alone_in_a_big_shuffled_batch_or_cut_off_its_source(checkpoint, rows_by_source):
    stage = Score(CONFIG, seed=3, checkpoint=checkpoint)
    everything = [row for rows in rows_by_source for row in rows] + [corrupt_source_row(98)]
    order = seeding.rng(0, "test-shuffle").permutation(len(everything))
    together = by_row_key(stage(make_batch([everything[i] for i in order])))
    # Ray cuts batches at a row count, so a source's rows may land in two batches.
    cut = {}
    for start in range(0, len(everything), 7):
        cut.update(by_row_key(stage(make_batch(everything[start : start + 7]))))
    assert cut == together
    for rows in rows_by_source:
        alone = by_row_key(Score(CONFIG, seed=3, checkpoint=checkpoint)(make_batch(rows)))
        for key, value in alone.items():
            assert together[key] == value, key


def test_both_scores_are_gaussian_entropies_of_the_mean_masked_mse_under_each_checkpoint(checkpoint, rows_by_source):
    """By hand: each checkpoint's weights read from the file as they stand, put in a fresh MAE,
    each crop's R masked copies through it, under the row's own masks for both."""
    rows = rows_by_source[1]
    out = Score(CONFIG, seed=0, checkpoint=checkpoint)(make_batch(rows))
    payload = torch.load(checkpoint, weights_only=True)
    models = {}
    for column, weights in ((columns.SCORE, payload["model"]), (columns.SCORE_EARLY, payload["early"])):
        models[column] = MAE(proxy_spec(CONFIG)).eval()
        models[column].load_state_dict(weights)
    r = CONFIG.masks_per_patch
    for i, row in enumerate(rows):
        key = row[columns.PATCH_ID] if row[columns.PATCH_INDEX] >= 0 else row[columns.SOURCE_ID]
        images = to_input(row[columns.CROP][None]).repeat(r, 1, 1, 1)
        for column, model in models.items():
            with torch.inference_mode():
                mse = model.masked_mse(images, mask_noise(0, key, r, 16), CONFIG.mask_ratio).double().mean().item()
            assert out[column][i] == pytest.approx(0.5 * math.log(2 * math.pi * math.e * mse), rel=1e-5), column
    assert (out[columns.SCORE_EARLY] != out[columns.SCORE]).all()  # two checkpoints, two estimates


def test_a_proxy_without_early_weights_leaves_score_early_empty_and_score_as_it_was(checkpoint, rows_by_source, tmp_path):
    payload = torch.load(checkpoint, weights_only=True)
    plain = tmp_path / "plain.pt"
    torch.save({"model": payload["model"], "optidel_spec": payload["optidel_spec"]}, plain)
    batch = make_batch(rows_by_source[2])
    out = Score(CONFIG, seed=0, checkpoint=str(plain))(batch)
    assert np.isnan(out[columns.SCORE_EARLY]).all()
    assert out[columns.SCORE].tobytes() == Score(CONFIG, seed=0, checkpoint=checkpoint)(batch)[columns.SCORE].tobytes()


def test_self_proxy_takes_its_early_checkpoint_at_the_configured_fraction(rows_by_source):
    crops = np.stack([row[columns.CROP] for row in rows_by_source[0]])
    config = CONFIG.model_copy(update={"mae": CONFIG.mae.model_copy(update={"train_steps": 4, "batch_size": 4})})
    args = dict(steps=4, batch_size=4, lr=config.mae.lr, seed=0)
    for fraction, step in ((0.1, 0), (0.5, 2), (1.0, 4)):
        config.mae.early_fraction = fraction
        early = train_self_proxy(crops, config, seed=0).early
        expected = train_proxy(crops, proxy_spec(config), config.mask_ratio, early_step=step, **args).early
        assert all(torch.equal(early[k], v) for k, v in expected.items()), fraction
    config.mae.early_fraction = None
    assert train_self_proxy(crops, config, seed=0).early is None


def test_noise_crop_scores_higher_than_a_flat_crop(checkpoint, rows_by_source):
    real = rows_by_source[2][1][columns.CROP]
    flat = np.broadcast_to(real.reshape(-1, 3).mean(axis=0).astype(np.uint8), real.shape).copy()
    noise = seeding.rng(0, "test-noise-crop").integers(0, 256, real.shape, dtype=np.uint8)
    rows = [
        {columns.INPUT_INDEX: 0, columns.SOURCE_ID: "synthetic", columns.STATUS: schema.OK, columns.PATCH_INDEX: -1,
         columns.CROP: real},
        *({columns.INPUT_INDEX: 0, columns.SOURCE_ID: "synthetic", columns.PATCH_INDEX: k,
           columns.PATCH_ID: f"synthetic-{k}", columns.CROP: crop} for k, crop in enumerate((flat, real, noise))),
    ]  # fmt: skip
    scores = Score(CONFIG, seed=0, checkpoint=checkpoint)(make_batch(rows))[columns.SCORE]
    assert scores[3] > scores[2] > scores[1]  # noise > real tissue > flat colour


def test_masks_follow_seed_and_row_not_batch(checkpoint, rows_by_source):
    a = mask_noise(0, "patch-a", 4, 16)
    assert torch.equal(a, mask_noise(0, "patch-a", 4, 16))
    assert not torch.equal(a, mask_noise(1, "patch-a", 4, 16))
    assert not torch.equal(a, mask_noise(0, "patch-b", 4, 16))
    assert len({tuple(torch.argsort(m)[:4].tolist()) for m in a}) == 4  # R different visible sets
    batch = make_batch(rows_by_source[3])
    seed0 = Score(CONFIG, seed=0, checkpoint=checkpoint)(batch)
    seed1 = Score(CONFIG, seed=1, checkpoint=checkpoint)(batch)
    assert not np.array_equal(seed0[columns.SCORE], seed1[columns.SCORE])
    # Embeddings see the whole crop: no mask, no seed.
    assert np.array_equal(seed0[columns.EMBEDDING], seed1[columns.EMBEDDING])


def test_shared_masks_score_equal_crops_equally_whatever_their_ids(checkpoint, rows_by_source):
    crop = rows_by_source[4][1][columns.CROP]
    twins = [
        {columns.INPUT_INDEX: 0, columns.SOURCE_ID: "twins", columns.PATCH_INDEX: k, columns.PATCH_ID: f"twin-{k}",
         columns.CROP: crop}
        for k in range(2)
    ]  # fmt: skip
    per_row = Score(CONFIG, seed=0, checkpoint=checkpoint)(make_batch(twins))[columns.SCORE]
    shared_config = CONFIG.model_copy(update={"shared_masks": True})
    shared = Score(shared_config, seed=0, checkpoint=checkpoint)(make_batch(twins))[columns.SCORE]
    assert per_row[0] != per_row[1]  # the default: each id draws its own masks
    assert shared[0] == shared[1]
    assert torch.equal(mask_noise(0, None, 4, 16), mask_noise(0, None, 4, 16))
    assert not torch.equal(mask_noise(0, None, 4, 16), mask_noise(1, None, 4, 16))


def test_proxy_info_and_mismatches_named(checkpoint, rows_by_source):
    info = proxy_info(checkpoint)
    assert info["path"] == checkpoint and len(info["sha256"]) == 64
    assert MAESpec(**info["spec"]) == proxy_spec(CONFIG)
    with pytest.raises(ValueError, match=r"proxy.pt.*32 px.*score.image_size is 64"):
        Score(CONFIG.model_copy(update={"image_size": 64}), seed=0, checkpoint=checkpoint).setup()
    batch = make_batch(rows_by_source[0])
    batch[columns.CROP] = batch[columns.CROP][:, :16, :16]
    with pytest.raises(ValueError, match="column 'crop'"):
        Score(CONFIG, seed=0, checkpoint=checkpoint)(batch)
