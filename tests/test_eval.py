"""`optidel eval`: the metrics on hand-made masks, the labeled split, the shard stream, and the
whole harness end to end on real `optidel run` outputs (real Ray, real tars) with a tiny MAE."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from optidel.eval import harness, labeled, report
from optidel.eval.labeled import EvalError
from optidel.eval.metrics import class_iou, iou_counts, miou, normdel
from optidel import imageio
from optidel.eval.arms import check_no_held_out_images, derived_from, open_arm, stream
from optidel.eval.pools import POOL_RECORD, clip_length, write_video_pool
from optidel.eval.pretrain import PretrainSettings, model_spec, pretrain
from optidel.pipeline import cli
from optidel.pipeline import config as config_mod
from optidel.pipeline.runner import run

# --- metrics ------------------------------------------------------------------------------


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows])


def test_miou_on_hand_made_masks():
    target = _mask(["....", ".##.", ".##.", "...."])  # 4 foreground pixels
    pred = _mask(["....", ".###", ".###", "...."])  # 6, covering the 4
    counts = iou_counts(pred, target)
    # foreground 4/6; background: 10 pixels in both, 12 in either
    assert counts.tolist() == [[10, 12], [4, 6]]
    assert miou(counts) == pytest.approx((4 / 6 + 10 / 12) / 2)

    # Summed over the split, not averaged per image: an all-background image adds 16/16 to
    # the background and nothing to the foreground.
    empty = np.zeros((4, 4), bool)
    both = counts + iou_counts(empty, empty)
    assert class_iou(both).tolist() == pytest.approx([26 / 28, 4 / 6])

    assert miou(iou_counts(target, target)) == 1.0
    assert class_iou(iou_counts(~target, target))[1] == 0.0  # disjoint foreground
    assert miou(iou_counts(empty, empty)) == 1.0  # no foreground anywhere: nothing wrong
    with pytest.raises(ValueError, match="shape"):
        iou_counts(pred, target[:3])


def test_normdel_formula():
    m, r = 0.8, 0.05
    assert normdel(m, r, alpha=1.0) == pytest.approx(1 / (1 + math.exp(-m * math.exp(-r))))
    assert normdel(m, 1.0, alpha=math.log(2)) == pytest.approx(1 / (1 + math.exp(-m / 2)))
    assert normdel(m, r, alpha=0.0) == pytest.approx(1 / (1 + math.exp(-m)))
    # Same mIoU, less data -> higher; same data, higher mIoU -> higher.
    assert normdel(m, 0.05) > normdel(m, 1.0)
    assert normdel(0.9, 0.05) > normdel(0.8, 0.05)
    assert 0.5 <= normdel(0.0, 1.0) and normdel(1.0, 0.0) <= 1 / (1 + math.exp(-1))


# --- labeled sets -------------------------------------------------------------------------


def _labeled_copy(kvasir, dest, names):
    for kind in ("images", "masks"):
        (dest / kind).mkdir(parents=True)
        for name in names:
            shutil.copy(kvasir / kind / name, dest / kind / name)
    return dest


@pytest.fixture(scope="module")
def kvasir_names(kvasir):
    return sorted(p.name for p in (kvasir / "images").glob("*.jpg"))


def test_split_is_by_sorted_name_and_pool_list_is_train_only(kvasir, kvasir_names, tmp_path):
    root = _labeled_copy(kvasir, tmp_path / "set", kvasir_names[:12])
    split = labeled.split(root, 0.25, 0.2)
    # ceil(0.25 * 12) = 3 test; ceil(0.2 * 9) = 2 validation, the 2 before the test split
    assert [p.image.name for p in split.train] == kvasir_names[:7]
    assert [p.image.name for p in split.validation] == kvasir_names[7:9]
    assert [p.image.name for p in split.test] == kvasir_names[9:12]
    assert split.held_out("validation") == split.validation and split.held_out("test") == split.test
    with pytest.raises(EvalError, match="split 'train'"):
        split.held_out("train")
    with pytest.raises(EvalError, match="validation split is empty"):
        labeled.split(root, 0.25).held_out("validation")

    listing = tmp_path / "pool.txt"
    assert labeled.write_pool_list(split, listing) == 7
    pool = {line.rsplit("/", 1)[1] for line in listing.read_text().splitlines()}
    assert pool == set(kvasir_names[:7])
    held_out = {p.image.name for p in split.validation + split.test}
    assert not pool & held_out and not {p.image.name for p in split.validation} & {p.image.name for p in split.test}

    images, masks, native = labeled.load_resized(split.test, 32)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert masks.shape == (3, 32, 32) and masks.dtype == bool
    source = np.asarray(Image.open(kvasir / "masks" / kvasir_names[9]).convert("L"))
    assert np.array_equal(native[0], source >= 128)

    other = _labeled_copy(kvasir, tmp_path / "other", kvasir_names[20:24])
    with_other = labeled.split(root, 0.25, 0.25, test_only=other)
    assert [p.image.name for p in with_other.test] == kvasir_names[20:24]
    assert [p.image.name for p in with_other.validation] == kvasir_names[9:12]  # ceil(0.25 * 12)


def test_video_pool_is_train_images_only_and_seeded(kvasir, kvasir_names, tmp_path):
    root = _labeled_copy(kvasir, tmp_path / "set", kvasir_names[:8])
    split = labeled.split(root, 0.25, 0.2)
    n = write_video_pool(split.train, tmp_path / "a", frame_size=48, max_clip=6, seed=0)
    frames = sorted((tmp_path / "a").glob("*.jpg"))
    assert n == len(frames) == sum(clip_length(0, p.name, 6) for p in split.train)
    assert {f.name.rsplit("-", 1)[0] for f in frames} == {p.name for p in split.train}
    with Image.open(frames[0]) as first:
        assert first.size == (48, 48)
    write_video_pool(split.train, tmp_path / "b", frame_size=48, max_clip=6, seed=0)
    assert [f.read_bytes() for f in frames] == [f.read_bytes() for f in sorted((tmp_path / "b").glob("*.jpg"))]
    record = json.loads((tmp_path / "a" / POOL_RECORD).read_text())
    assert [e["image"] for e in record["derived_from"]] == [p.image.name for p in split.train]
    assert derived_from([str(frames[0])]) == {imageio.sha256_hex(p.image.read_bytes()) for p in split.train}
    assert derived_from([str(split.train[0].image)]) == set()  # a folder without a record
    lengths = [clip_length(0, str(i), 16) for i in range(2000)]
    assert min(lengths) == 1 and max(lengths) == 16
    assert np.mean(np.array(lengths) <= 4) > 0.5  # log-uniform: most clips short, a few long


def test_labeled_set_problems_name_the_file(kvasir, kvasir_names, tmp_path):
    root = _labeled_copy(kvasir, tmp_path / "set", kvasir_names[:4])
    (root / "masks" / kvasir_names[2]).unlink()
    with pytest.raises(EvalError, match=f"no mask for 1 image.*{kvasir_names[2]}"):
        labeled.pairs(root)
    (tmp_path / "no-masks" / "images").mkdir(parents=True)
    with pytest.raises(EvalError, match="no-masks: a labeled set needs a folder masks/"):
        labeled.pairs(tmp_path / "no-masks")

    shutil.copy(kvasir / "masks" / kvasir_names[2], root / "masks" / kvasir_names[2])
    Image.open(root / "masks" / kvasir_names[0]).resize((20, 20)).save(root / "masks" / kvasir_names[0])
    with pytest.raises(EvalError, match=f"{kvasir_names[0]}: mask is 20x20"):
        labeled.load_resized(labeled.pairs(root), 32)
    (root / "images" / kvasir_names[1]).write_bytes(b"not a jpeg")
    with pytest.raises(EvalError, match=f"{kvasir_names[1]}: cannot use this image"):
        labeled.load_resized(labeled.pairs(root)[1:2], 32)


# --- arms, pre-training and the harness on real `optidel run` outputs ---------------------


@pytest.fixture(scope="module")
def arms(kvasir, kvasir_names, tmp_path_factory, ray_local):
    """Two arms from one 16-image pool: every image (R = 1) and a random quarter (R = 0.25)."""
    tmp = tmp_path_factory.mktemp("eval-arms")
    pool = tmp / "pool.txt"
    pool.write_text("".join(f"{kvasir / 'images' / n}\n" for n in kvasir_names[:16]))
    outs = {}
    for name, keep in (("full", 1.0), ("quarter", 0.25)):
        outs[name] = tmp / name
        run(
            [str(pool)],
            str(outs[name]),
            config_mod.load(overrides={"selector": "random", "keep": keep}, sets=["output.size=64"]),
        )
    return outs


def test_stream_cycles_every_sample_once_per_epoch(arms):
    arm = open_arm("quarter", str(arms["quarter"]))
    assert (arm.samples, arm.pool_ok, arm.retained) == (4, 16, 0.25)
    first = [img.tobytes() for _, img in zip(range(12), stream(arm, seed=0, shuffle_buffer=2))]
    epochs = [first[i : i + 4] for i in range(0, 12, 4)]
    assert all(len(set(e)) == 4 and set(e) == set(epochs[0]) for e in epochs)
    again = [img.tobytes() for _, img in zip(range(12), stream(arm, seed=0, shuffle_buffer=2))]
    assert again == first
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # reshuffled between epochs


@pytest.fixture()
def one_thread():
    """A tiny model gains nothing from more threads, and shared CPUs make them spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pretraining_is_seeded(arms, one_thread):
    arm = open_arm("quarter", str(arms["quarter"]))
    spec = model_spec("tiny", 32)
    settings = PretrainSettings(steps=3, batch_size=4, lr=1e-3)
    a, stats = pretrain(arm, spec, settings, seed=5, device="cpu")
    b, _ = pretrain(arm, spec, settings, seed=5, device="cpu")
    c, _ = pretrain(arm, spec, settings, seed=6, device="cpu")
    assert stats["images_seen"] == 12
    same = [torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict()]
    assert all(same)
    assert not torch.equal(a.state_dict()["blocks.0.attn.qkv.weight"], c.state_dict()["blocks.0.attn.qkv.weight"])


TINY = [
    "--threads",
    "1",
    "--size",
    "32",
    "--steps",
    "10",
    "--batch-size",
    "8",
    "--probe-iterations",
    "5",
    "--finetune-steps",
    "10",
    "--finetune-batch-size",
    "4",
    "--finetune-seeds",
    "1",
]


def test_eval_end_to_end(arms, kvasir, kvasir_names, tmp_path, capsys):
    lab = _labeled_copy(kvasir, tmp_path / "labeled", kvasir_names[100:112])  # disjoint from the pool
    out, encoders = tmp_path / "results", tmp_path / "encoders"
    argv = [
        "eval",
        "--arm",
        f"full={arms['full']}",
        "--arm",
        f"quarter={arms['quarter']}",
        "--labeled",
        str(lab),
        "--out",
        str(out),
        "--encoders",
        str(encoders),
        "--seeds",
        "2",
        "--test-fraction",
        "0.25",
        "--validation-fraction",
        "0.25",
        "--pool",
        "16 kvasir images",
        *TINY,
    ]
    assert cli.main(argv) == 0

    results = json.loads((out / "results.json").read_text())
    assert (results["split"], results["pool"]) == ("validation", "16 kvasir images")
    assert list(results["arms"]) == ["full", "quarter", "scratch"]  # the scratch control is on by default
    labels = results["labeled"]
    assert (labels["train"], labels["validation"], labels["test"], labels["held_out"]) == (6, 3, 3, 3)
    full, quarter, scratch = (results["arms"][k] for k in ("full", "quarter", "scratch"))
    assert (full["retained_fraction"], quarter["retained_fraction"]) == (1.0, 0.25)
    assert full["images_seen"] == quarter["images_seen"] == 10 * 8  # equal compute
    assert scratch["images_seen"] == 0 and scratch["normdel"] is None
    for arm in (full, quarter, scratch):
        assert arm["seeds"] == [0, 1]
        assert all(0.0 <= m <= 1.0 for m in arm["miou"])
        assert arm["miou_mean"] == pytest.approx(np.mean(arm["miou"]))
        assert arm["miou_std"] == pytest.approx(np.std(arm["miou"], ddof=1))
        assert len(arm["finetune_miou"]) == 1 and arm["finetune_miou_std"] is None  # --finetune-seeds 1
    # Paired comparisons against every baseline present, never an arm against itself.
    assert "vs_full" not in full and "vs_random" not in full and "vs_scratch" not in scratch
    versus = quarter["vs_full"]
    assert versus["diff"] == pytest.approx(np.mean(np.subtract(quarter["miou"], full["miou"])))
    assert versus["ci95"][0] <= versus["ci95"][1]
    assert full["vs_scratch"]["diff"] == pytest.approx(-scratch["vs_full"]["diff"])
    control = results["positive_control"]
    assert control["diff"] == full["vs_scratch"]["diff"] and control["holds"] == (control["ci95"][0] > 0)
    assert results["headroom"]["holds"] is None  # no random arm to measure it against
    assert "pool_composition" not in results and "composition" not in full  # a pool without truth.csv
    for arm in (full, quarter):
        assert arm["normdel"] == pytest.approx(
            [normdel(m, arm["retained_fraction"], results["alpha"]) for m in arm["miou"]]
        )
    # Different pre-training data, same seeds and probe: different encoders, different scores.
    assert full["miou"] != quarter["miou"] and full["pretrain_loss_last"] != quarter["pretrain_loss_last"]

    table = (out / "results.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"arm", "full", "quarter", "scratch"}
    assert f"{full['miou_mean']:.4f} ± {full['miou_std']:.4f}" in rows["full"]
    low, high = versus["ci95"]
    assert f"{versus['diff']:+.4f} [{low:+.4f}, {high:+.4f}]" in rows["quarter"]
    assert "| 0.250 |" in rows["quarter"] and "n/a" in rows["scratch"]
    assert "validation split" in table and "Positive control" in table and "Headroom not measured" in table
    with Image.open(out / "results.png") as png:
        assert png.format == "PNG" and png.width > 300
    assert "quarter" in capsys.readouterr().out

    # A rerun reuses every unit, even on a copy of the labeled data (new paths, new mtimes): same
    # numbers, unit files untouched.
    units = {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")}
    assert len(units) == 6
    copied = shutil.copytree(lab, tmp_path / "labeled-copy", copy_function=shutil.copy)
    assert cli.main([str(copied) if a == str(lab) else a for a in argv]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("*.json")} == units
    assert json.loads((out / "results.json").read_text())["arms"] == results["arms"]

    # The test split reuses the validation run's encoders: nothing is pre-trained again.
    cached = {p.name: p.stat().st_mtime_ns for p in encoders.iterdir()}
    assert len(cached) == 4  # 2 arms x 2 seeds; scratch has no pre-training
    test_out = tmp_path / "test-results"
    assert cli.main([*argv[: argv.index("--out")], "--out", str(test_out), *argv[argv.index("--out") + 2 :],
                     "--split", "test"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in encoders.iterdir()} == cached
    tested = json.loads((test_out / "results.json").read_text())
    assert tested["split"] == "test" and tested["labeled"]["first_held_out"] == kvasir_names[109].rsplit(".", 1)[0]
    assert tested["arms"]["full"]["pretrain_loss_last"] == full["pretrain_loss_last"]


def test_eval_refuses_test_images_in_the_pool_and_bad_arms(arms, kvasir, kvasir_names, tmp_path, capsys):
    leaky = _labeled_copy(kvasir, tmp_path / "leaky", kvasir_names[:8])  # held-out splits inside the pool
    out = tmp_path / "results"
    assert cli.main(["eval", "--arm", f"full={arms['full']}", "--labeled", str(leaky), "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    # ceil(0.2 * 8) = 2 test and ceil(0.125 * 6) = 1 validation image, all in the 16-image pool
    assert "arm full" in err and "contains 3 validation or test image(s)" in err and "--write-pool-list" in err

    assert cli.main(["eval", "--arm", f"x={tmp_path}", "--labeled", str(leaky), "--out", str(out)]) == 2
    assert "run.json not found" in capsys.readouterr().err
    assert cli.main(["eval", "--arm", "no-equals-sign", "--labeled", str(leaky), "--out", str(out)]) == 2
    assert "expected NAME=OUT" in capsys.readouterr().err
    assert not (out / "results.json").exists()


def test_eval_refuses_a_video_pool_made_from_held_out_images(kvasir, kvasir_names, tmp_path, ray_local):
    lab = _labeled_copy(kvasir, tmp_path / "labeled", kvasir_names[:6])
    split = labeled.split(lab, 0.2, 0.2)  # 2 test, 1 validation, 3 train
    frames = tmp_path / "frames"
    write_video_pool(split.train + split.test[:1], frames, frame_size=48, max_clip=2, seed=0)  # one test image leaks
    out = tmp_path / "arm"
    run([str(frames)], str(out), config_mod.load(overrides={"selector": "random", "keep": 1.0}, sets=["output.size=32"]))
    arm = open_arm("leaky", str(out))
    check_no_held_out_images(arm, split.validation)  # frames are new bytes: only the record can tell
    with pytest.raises(EvalError, match="contains 1 validation or test image.*or frames made from them"):
        check_no_held_out_images(arm, split.validation + split.test)



@pytest.mark.parametrize("low, holds, says", [(0.004, True, "data limits pre-training"), (-0.002, False, "No headroom")])
def test_headroom_is_full_against_random(low, holds, says):
    versus = {"diff": 0.01, "ci95": [low, 0.02]}
    headroom = harness._headroom({"full": {"vs_random": versus}, "random": {}})
    assert headroom == {"comparison": "full vs random", **versus, "holds": holds}
    assert says in report._headroom_verdict(headroom)
