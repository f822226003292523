"""What a selection contains (eval/composition.py) and the peer arms (eval/peers.py), on a
hand-made dirty pool whose every frame's kind is known, through real `optidel run` outputs
(real Ray, real Parquet) and the real peer libraries."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from optidel import seeding
from optidel.eval import artefacts, composition, labeled, peers
from optidel.eval.arms import check_no_held_out_images, open_arm
from optidel.eval.dirty_pool import TRUTH_CSV, FrameTruth, write_truth
from optidel.eval.labeled import EvalError
from optidel.eval.pools import POOL_RECORD, write_record
from optidel.eval.recordings import encode_recordings
from optidel.pipeline import cli
from optidel.pipeline import config as config_mod
from optidel.pipeline.runner import run
from optidel.stages.keypatch import mask_to_rle

SIDE = 96
# Each hand-made frame: (clip, kind). "e-1" repeats "e-0" byte for byte (a frozen clip).
FRAMES = [("a", "clean"), ("a", "clean"), ("b", "noise"), ("b", "specular"), ("c", "dark"), ("c", "low_contrast")]


@pytest.fixture(scope="module")
def hand_pool(kvasir, tmp_path_factory):
    """Six frames cut from three kvasir images with known artefacts, and a frozen repeat."""
    folder = tmp_path_factory.mktemp("hand") / "frames"
    folder.mkdir()
    pairs = labeled.pairs(kvasir)[:3]
    truth = []
    for i, (clip, kind) in enumerate(FRAMES):
        pair = pairs["abc".index(clip)]
        image = labeled.load_image(pair.image)
        frame = np.asarray(Image.fromarray(image[: 2 * SIDE, i * 20 : i * 20 + 2 * SIDE]).resize((SIDE, SIDE)))
        mask = None
        if kind != artefacts.CLEAN:
            frame, mask = artefacts.apply(kind, frame, 4, seeding.rng(0, i))
        name = f"{clip}-{i:03d}.jpg"
        Image.fromarray(frame).save(folder / name, quality=92)
        severity = 0 if kind == artefacts.CLEAN else 4
        truth.append(FrameTruth(name, clip, i, kind, artefacts.family(kind), severity, "", "" if mask is None else mask_to_rle(mask)))
    frozen = truth[4]
    (folder / "c-006.jpg").write_bytes((folder / frozen.frame).read_bytes())
    truth.append(FrameTruth("c-006.jpg", "c", 6, frozen.kind, frozen.family, frozen.severity, frozen.frame, ""))
    write_truth(folder / TRUTH_CSV, truth)
    write_record(folder, pairs, frame_size=SIDE, truth=TRUTH_CSV)
    return folder, {t.frame: t for t in truth}


def test_a_patch_missing_a_local_artefact_is_clean():
    mask = np.zeros((SIDE, SIDE), bool)
    mask[10:20, 10:20] = True
    row = FrameTruth("f.jpg", "a", 0, "specular", "hard", 3, "", mask_to_rle(mask))
    truth = {"f.jpg": row}
    source = {"uri": "/pool/f.jpg", "height": SIDE, "width": SIDE}

    def kind(x0, y0, x1, y1):
        return composition.patch_kind({"x0": x0, "y0": y0, "x1": x1, "y1": y1}, source, truth)

    assert kind(0, 0, 11, 11) == "specular"  # one pixel of the mask: (10, 10)
    assert kind(0, 0, 10, 10) == "clean"  # half-open box: stops just before it
    assert kind(20, 20, 60, 60) == "clean"
    assert kind(None, None, None, None) == "specular"  # a whole-frame candidate shows it
    noisy = {"f.jpg": FrameTruth("f.jpg", "a", 0, "noise", "hard", 3, "", "")}
    assert composition.patch_kind({"x0": 50, "y0": 50, "x1": 60, "y1": 60}, source, noisy) == "noise"


@pytest.fixture(scope="module")
def whole_pool_arm(hand_pool, tmp_path_factory, ray_local):
    """Every distinct frame as one sample: the composition is the pool's, known by hand."""
    folder, _ = hand_pool
    out = tmp_path_factory.mktemp("arms") / "all"
    run([str(folder)], str(out), config_mod.load(overrides={"selector": "random", "keep": 1.0},
                                                  sets=["output.size=64"]))
    return out


def test_composition_of_a_whole_image_arm_is_the_hand_count(whole_pool_arm, hand_pool):
    c = composition.arm_composition(str(whole_pool_arm))
    # six distinct frames (the frozen repeat is a duplicate source): 2 clean, one of each of 4 kinds
    assert c["patches"] == 6 and c["unit"] == "image"
    assert c["clean"] == pytest.approx(2 / 6)
    assert (c["noise"], c["specular"], c["dark"], c["low_contrast"]) == pytest.approx((1 / 6,) * 4)
    assert (c["easy"], c["hard"]) == pytest.approx((2 / 6, 2 / 6))
    assert c["motion_blur"] == c["bubbles"] == 0
    assert (c["clips"], c["frames"]) == (3, 6)
    assert c["score"] is None  # the random selector scores nothing
    pool = composition.pool_composition(composition.pool_truth(str(whole_pool_arm))[1])
    assert (pool["frames"], pool["frozen_repeats"], pool["clips"]) == (6, 1, 3)
    assert pool["clean"] == pytest.approx(2 / 6)


def test_composition_cli_writes_results(whole_pool_arm, tmp_path, capsys):
    assert cli.main(["eval", "--composition", "--arm", f"all={whole_pool_arm}", "--out", str(tmp_path / "r")]) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["arms"]["all"]["composition"]["clean"] == pytest.approx(2 / 6)
    assert "| all | image | 6 | 0.333 [" in (tmp_path / "r" / "results.md").read_text()
    capsys.readouterr()
    # --versus: every arm against a named one, paired; the same selection differs by nothing
    argv = ["eval", "--composition", "--arm", f"all={whole_pool_arm}", "--arm", f"again={whole_pool_arm}",
            "--versus", "all", "--out", str(tmp_path / "v")]
    assert cli.main(argv) == 0
    again = json.loads((tmp_path / "v" / "results.json").read_text())["arms"]["again"]["composition"]
    assert again["clean_vs_all"] == {"diff": 0.0, "ci95": [0.0, 0.0]}
    assert "| clean vs all |" in (tmp_path / "v" / "results.md").read_text()
    capsys.readouterr()
    assert cli.main(argv[:-4] + ["--versus", "nope", "--out", str(tmp_path / "w")]) == 2
    assert "--versus nope: no arm of that name" in capsys.readouterr().err
    # an arm from a pool without truth is refused, naming it
    assert cli.main(["eval", "--composition", "--arm", f"x={tmp_path}", "--out", str(tmp_path / "s")]) == 2
    assert "x" in capsys.readouterr().err


def test_a_pool_of_recordings_counts_as_its_frames_do(hand_pool, tmp_path, ray_local):
    """The hand pool with each clip as one video: every frame is read from its recording and
    found in the truth by its place in it, so the composition is the hand count again."""
    folder, truth = hand_pool
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    new_name = {}
    for clip in "abc":  # a recording's frames are numbered from 000 in a row
        rows = sorted((row for row in truth.values() if row.clip == clip), key=lambda r: r.index)
        new_name.update({row.frame: f"{clip}-{index:03d}.jpg" for index, row in enumerate(rows)})
    for old, new in new_name.items():
        (recordings / new).write_bytes((folder / old).read_bytes())
    write_truth(recordings / TRUTH_CSV, [
        replace(row, frame=new_name[row.frame], index=int(new_name[row.frame][2:5]),
                frozen_of=new_name.get(row.frozen_of, "")) for row in truth.values()
    ])
    shutil.copy(folder / POOL_RECORD, recordings / POOL_RECORD)
    assert encode_recordings(recordings) == 3
    out = tmp_path / "all"
    run([str(recordings)], str(out), config_mod.load(overrides={"selector": "random", "keep": 1.0},
                                                      sets=["output.size=64"]))
    c = composition.arm_composition(str(out))
    assert (c["patches"], c["clips"], c["frames"]) == (6, 3, 6)  # the frozen repeat is a duplicate
    assert c["clean"] == pytest.approx(2 / 6)
    assert (c["noise"], c["specular"], c["dark"], c["low_contrast"]) == pytest.approx((1 / 6,) * 4)


def test_patch_arm_composition_adds_up_and_reads_its_scores(hand_pool, tmp_path, ray_local):
    folder, truth = hand_pool
    out = tmp_path / "hard"
    fast = ["score.mae.train_steps=20", "score.mae.train_patches=64", "score.masks_per_patch=1",
            "select.clusters=2", "output.size=64", "propose.max_patches_per_image=4"]
    run([str(folder)], str(out), config_mod.load(overrides={"selector": "hard", "keep": 0.5}, sets=fast))
    c = composition.arm_composition(str(out))
    assert c["unit"] == "patch"
    assert c["clean"] + sum(c[k] for k in artefacts.KINDS) == pytest.approx(1.0)
    assert c["clean"] + c["easy"] + c["hard"] == pytest.approx(1.0)
    patches = pq.read_table(out / "manifests" / "patches").to_pylist()
    chosen = [p for p in patches if p["selected"]]
    assert c["patches"] == len(chosen)
    assert c["score"] == pytest.approx(np.mean([p["score"] for p in chosen]))
    assert c["pool_score"] == pytest.approx(np.mean([p["score"] for p in patches if p["mask_rle"] is not None]))
    # whole-frame scores of the same run, for arms that score nothing
    frame_scores = composition.whole_image_scores(str(out))
    assert len(frame_scores) == 6 and all(np.isfinite(list(frame_scores.values())))
    lightly = peers.lightly(folder, keep=0.5, scored=str(out))
    assert len(lightly) == 3 and len({p.name for p in lightly}) == 3
    assert all(p.parent == folder for p in lightly)


def test_oracle_draws_only_clean_frames_at_the_budget(hand_pool):
    folder, truth = hand_pool
    chosen = peers.oracle(folder, keep=0.3, seed=0)
    assert peers.budget(peers.distinct(peers.frames(folder)), 0.3) == 2  # ceil(0.3 x 6 distinct frames)
    assert [truth[p.name].kind for p in chosen] == ["clean", "clean"]
    assert peers.oracle(folder, keep=0.3, seed=0) == chosen


def test_cleanvision_removes_dark_low_information_and_repeated_frames(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "pool"
    folder.mkdir()
    textured = [np.kron(rng.integers(40, 230, (12, 12, 3)), np.ones((8, 8, 1))).astype(np.uint8) for _ in range(8)]
    for i, image in enumerate(textured):
        Image.fromarray(image).save(folder / f"ok-{i}.png")
    Image.fromarray(np.full((96, 96, 3), 3, np.uint8)).save(folder / "dark.png")
    (folder / "ok-8.png").write_bytes((folder / "ok-0.png").read_bytes())  # an exact repeat
    paths = sorted(folder.glob("*.png"))
    chosen = peers.cleanvision_keep(paths, 20, seed=0)
    names = {p.name for p in chosen}
    assert "dark.png" not in names
    assert len({"ok-0.png", "ok-8.png"} & names) == 1  # one of the repeated pair is kept
    assert len(chosen) == 8


def test_lightly_covers_the_embedding_space(tmp_path):
    # three tight groups: a diversity selection of three takes one from each
    centres = np.eye(3, 8, dtype=np.float32)
    embeddings = np.concatenate([c + 0.01 * np.random.default_rng(i).normal(size=(5, 8)) for i, c in enumerate(centres)])
    chosen = peers.lightly_keep(embeddings.astype(np.float32), 3)
    assert sorted(i // 5 for i in chosen) == [0, 1, 2]


def test_peer_list_cli_and_errors(hand_pool, tmp_path, capsys):
    folder, truth = hand_pool
    listing = tmp_path / "oracle.txt"
    assert cli.main(["eval", "--write-peer-list", f"oracle={listing}", "--frames", str(folder), "--keep", "0.3"]) == 0
    assert [truth[line.rsplit("/", 1)[1]].kind for line in listing.read_text().split()] == ["clean", "clean"]
    assert cli.main(["eval", "--write-peer-list", f"nobody={listing}", "--frames", str(folder)]) == 2
    assert "nobody" in capsys.readouterr().err
    with pytest.raises(EvalError, match="--scored"):
        peers.lightly(folder, keep=0.3, scored=None)


def test_the_leak_guard_refuses_a_pool_filmed_over_held_out_images(whole_pool_arm, kvasir):
    # the hand pool was filmed over the first three labeled images: held out, they leak
    with pytest.raises(EvalError, match="contains 3 validation or test image"):
        check_no_held_out_images(open_arm("all", str(whole_pool_arm)), labeled.pairs(kvasir)[:3])
    check_no_held_out_images(open_arm("all", str(whole_pool_arm)), labeled.pairs(kvasir)[3:6])


def test_the_probe_table_carries_the_composition_of_dirty_pool_arms(whole_pool_arm, tmp_path):
    from optidel.eval import report

    summaries = {"all": {}}
    pool = composition.add_to(summaries, [open_arm("all", str(whole_pool_arm))], scored=None)
    assert pool["frames"] == 6 and summaries["all"]["composition"]["clean"] == pytest.approx(2 / 6)
    table = report.composition_markdown({"pool": "hand", "pool_composition": pool, "arms": summaries})
    assert "| pool (distinct frames) | frame | 6 | 0.333 |" in table and "| all | image | 6 | 0.333 [" in table


def test_clean_intervals_are_a_paired_bootstrap_over_clips():
    clips = [f"clip{i}" for i in range(40)]

    def arm(clean_every: int) -> composition.Selected:
        kinds = ["clean" if i % clean_every == 0 else "noise" for i in range(len(clips) * 2)]
        share = kinds.count("clean") / len(kinds)
        return composition.Selected(clips * 2, [f"{c}.jpg" for c in clips * 2], kinds, {"clean": share})

    arms = {"random": arm(2), "tidy": arm(1), "same": arm(2)}
    composition.clean_intervals(arms, clips)
    tidy, same = arms["tidy"].composition, arms["same"].composition
    assert tidy["clean_ci95"] == [1.0, 1.0]  # every patch clean, whatever clips are drawn
    assert tidy["clean_vs_random"]["diff"] == pytest.approx(0.5)
    low, high = tidy["clean_vs_random"]["ci95"]
    assert 0 < low <= 0.5 <= high < 1
    assert same["clean_vs_random"] == {"diff": 0.0, "ci95": [0.0, 0.0]}  # paired: the same clips every draw
    assert "clean_vs_random" not in arms["random"].composition
