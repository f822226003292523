"""The dirty video pool (eval/dirty_pool.py, eval/artefacts.py): seeded bytes, the artefact
share, truth.csv and its masks matching the files, frozen clips, and no held-out image in a
pre-training pool."""

from __future__ import annotations

import json
import shutil

import av
import numpy as np
import pytest
from PIL import Image

from optidel import imageio, seeding
from optidel.eval import artefacts, labeled
from optidel.eval.arms import derived_from
from optidel.eval.dirty_pool import TRUTH_CSV, decode_truth_mask, read_truth, write_dirty_video_pool
from optidel.eval.pools import POOL_RECORD
from optidel.eval.recordings import encode_recordings, frame_of


@pytest.fixture(scope="module")
def split(kvasir, tmp_path_factory):
    names = sorted(p.name for p in (kvasir / "images").glob("*.jpg"))[:40]
    root = tmp_path_factory.mktemp("labeled")
    for kind in ("images", "masks"):
        (root / kind).mkdir()
        for name in names:
            shutil.copy(kvasir / kind / name, root / kind / name)
    return labeled.split(root, 0.2, 0.125)


@pytest.fixture(scope="module")
def pool(split, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dirty") / "train"
    truth = write_dirty_video_pool(split.train, folder, frame_size=64, max_clip=8, seed=0, artefact_share=0.45,
                                   freeze_share=0.3)
    return folder, truth


def _frame(tmp_path, size=96):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(60, 200, size=(size // 16, size // 16, 3)), np.ones((16, 16, 1)))
    return smooth.astype(np.uint8)


def test_same_seed_same_bytes_other_seed_other_frames(split, pool, tmp_path):
    folder, truth = pool
    again = write_dirty_video_pool(split.train, tmp_path / "again", frame_size=64, max_clip=8, seed=0,
                                   artefact_share=0.45, freeze_share=0.3)
    assert again == truth
    for name in [row.frame for row in truth] + [TRUTH_CSV, POOL_RECORD]:
        assert (folder / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    other = write_dirty_video_pool(split.train, tmp_path / "other", frame_size=64, max_clip=8, seed=1,
                                   artefact_share=0.45, freeze_share=0.3)
    assert [row.kind for row in other] != [row.kind for row in truth]


def test_truth_matches_the_files(pool):
    folder, truth = pool
    assert read_truth(folder / TRUTH_CSV) == {row.frame: row for row in truth}
    assert sorted(p.name for p in folder.glob("*.jpg")) == sorted(row.frame for row in truth)
    by_name = {row.frame: row for row in truth}
    for row in truth:
        assert row.family == artefacts.family(row.kind)
        assert (row.severity == 0) == (row.kind == artefacts.CLEAN)
        mask = decode_truth_mask(row, 64, 64)
        assert (mask is not None) == (row.kind in artefacts.LOCAL)
        if mask is not None:
            assert 0 < mask.sum() < mask.size
        if row.frozen_of:  # a frozen frame is its held frame's bytes and truth
            held = by_name[row.frozen_of]
            assert (folder / row.frame).read_bytes() == (folder / held.frame).read_bytes()
            assert (row.kind, row.mask_rle, row.clip) == (held.kind, held.mask_rle, held.clip)
            assert not held.frozen_of and held.index < row.index
    assert any(row.frozen_of for row in truth)


def test_artefact_share_and_kinds_within_tolerance(split, tmp_path):
    # 0.45 of 8000 independent draws: 3 standard deviations are about 0.017.
    draws = [seeding.rng(0, "artefact", f"clip{i}", 0).random() < 0.45 for i in range(8000)]
    assert abs(np.mean(draws) - 0.45) < 0.017
    folder = tmp_path / "pool"
    truth = write_dirty_video_pool(split.train, folder, frame_size=32, max_clip=16, seed=3, artefact_share=0.45,
                                   freeze_share=0.0)
    dirty = [row for row in truth if row.kind != artefacts.CLEAN]
    share = len(dirty) / len(truth)
    sd = np.sqrt(0.45 * 0.55 / len(truth))
    assert abs(share - 0.45) < 4 * sd
    assert {row.kind for row in dirty} <= set(artefacts.KINDS)
    assert len({row.kind for row in dirty}) >= 8  # the ten kinds are drawn uniformly


def test_only_the_given_images_enter_the_pool(split, pool, tmp_path):
    folder, truth = pool
    assert {row.clip for row in truth} == {p.name for p in split.train}
    record = json.loads((folder / POOL_RECORD).read_text())
    assert record["truth"] == TRUTH_CSV and record["artefact_share"] == 0.45
    train = {imageio.sha256_hex(p.image.read_bytes()) for p in split.train}
    assert derived_from([str(folder / truth[0].frame)]) == train
    held_out = write_dirty_video_pool(split.validation + split.test, tmp_path / "held", 32, 4, seed=1,
                                      artefact_share=0.45)
    assert {row.clip for row in held_out} == {p.name for p in split.validation + split.test}
    assert derived_from([str(tmp_path / "held" / held_out[0].frame)]).isdisjoint(train)


@pytest.mark.parametrize("kind", artefacts.KINDS)
def test_each_artefact_changes_the_frame_as_its_family_says(kind, tmp_path):
    frame = _frame(tmp_path)
    out, mask = artefacts.apply(kind, frame, 3, seeding.rng(0, kind))
    assert out.shape == frame.shape and out.dtype == np.uint8
    changed = np.abs(out.astype(int) - frame.astype(int)).max(axis=-1) > 8
    assert changed.mean() > 0.01
    if kind in artefacts.LOCAL:
        assert mask is not None and 0 < mask.mean() < 0.6
        assert not changed[~mask].any()  # a local artefact touches nothing outside its mask
    else:
        assert mask is None
    again, _ = artefacts.apply(kind, frame, 3, seeding.rng(0, kind))
    assert np.array_equal(out, again)


def test_published_severities_order_the_damage(tmp_path):
    frame = _frame(tmp_path)
    for kind in ("noise", "low_contrast", "dark", "defocus"):
        errors = [
            np.abs(artefacts.apply(kind, frame, s, seeding.rng(0, kind))[0].astype(float) - frame).mean()
            for s in artefacts.SEVERITIES
        ]
        assert errors == sorted(errors), kind
    specular, mask = artefacts.apply("specular", frame, 5, seeding.rng(1))
    assert (specular[mask].min(axis=-1) >= 250).mean() > 0.1  # glare saturates its core (0.6 of 1.6 radii)


def test_cli_writes_the_dirty_pool_and_refuses_a_bad_share(split, tmp_path, capsys):
    from optidel.pipeline import cli

    root = split.train[0].image.parent.parent
    assert cli.main(["eval", "--write-video-pool", str(tmp_path / "p"), "--artefacts", "0.45",
                     "--labeled", str(root), "--frame-size", "32", "--max-clip", "3"]) == 0
    assert "with an artefact" in capsys.readouterr().out
    assert (tmp_path / "p" / TRUTH_CSV).is_file()
    with Image.open(next((tmp_path / "p").glob("*.jpg"))) as first:
        assert first.size == (32, 32)
    assert cli.main(["eval", "--write-video-pool", str(tmp_path / "q"), "--artefacts", "1.5",
                     "--labeled", str(root)]) == 2
    assert "--artefacts 1.5" in capsys.readouterr().err


def test_recordings_hold_each_clip_losslessly_in_one_video(pool, tmp_path):
    folder, truth = pool
    copies = [tmp_path / "a", tmp_path / "b"]
    for copy in copies:
        shutil.copytree(folder, copy)
        assert encode_recordings(copy) == len({row.clip for row in truth})
    assert not list(copies[0].glob("*.jpg"))
    for recording in sorted(copies[0].glob("*.mkv")):
        assert recording.read_bytes() == (copies[1] / recording.name).read_bytes()  # same pool, same bytes
        with av.open(str(recording)) as container:
            frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
        assert [t for t, _ in frames] == [float(k) for k in range(len(frames))]  # one frame a second
        names = [frame_of(recording.name, k) for k in range(len(frames))]
        assert names == [row.frame for row in truth if row.clip == recording.stem]
        for name, frame in zip(names, frames):  # each frame is its JPEG's pixels, exactly
            assert np.array_equal(frame[1], np.asarray(Image.open(folder / name).convert("RGB")))


def test_recordings_refuse_a_clip_with_a_gap(pool, tmp_path):
    folder, truth = pool
    shutil.copytree(folder, tmp_path / "p")
    long_clip = max({row.clip for row in truth}, key=lambda c: sum(row.clip == c for row in truth))
    (tmp_path / "p" / f"{long_clip}-001.jpg").unlink()
    with pytest.raises(ValueError, match=f"{long_clip}-000.jpg: clip {long_clip}'s frames are not numbered"):
        encode_recordings(tmp_path / "p")
