"""The evaluation: for every arm and seed, pre-train (pretrain.py), fine-tune and test
(segmentation.py); then mean and spread per arm, NormDEL, and the report (report.py).

Each (arm, seed) unit is saved as OUT/units/ARM-seedS.json under a key made of everything it
depends on (settings, device, the arm's shard digests, the split's files); a rerun reuses
units whose key matches, so an interrupted table resumes and adding an arm or a seed costs
only the new units.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from optidel import __version__
from . import labeled as labeled_mod
from . import report
from .arms import Arm, check_no_test_images, open_arm
from .labeled import EvalError
from .metrics import DEFAULT_ALPHA, class_iou, del_score, miou, normdel
from .pretrain import PretrainSettings, initial_model, model_spec, pretrain
from .segmentation import FinetuneSettings, finetune, test_counts

log = logging.getLogger("optidel")

SCRATCH = "scratch"  # the optional control: the same fine-tune from random weights
UNITS_DIR = "units"
_ARM_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
R_DEFINITION = "counts.samples / counts.by_status.ok of the arm's run.json (output images over usable pool images)"


@dataclass(frozen=True)
class EvalConfig:
    size: int = 64
    model: str = "tiny"
    steps: int = 200  # pre-training optimizer steps, the same for every arm
    batch_size: int = 64
    lr: float = 1.5e-3
    mask_ratio: float = 0.75
    finetune_steps: int = 300
    finetune_batch_size: int = 32
    finetune_lr: float = 5e-4
    seeds: int = 3
    alpha: float = DEFAULT_ALPHA
    test_fraction: float = 0.2
    scratch: bool = False
    device: str = "auto"
    threads: int = 0  # torch CPU threads while evaluating; 0 keeps torch's default


def evaluate(
    arm_specs: list[tuple[str, str]], labeled: str, out: str, config: EvalConfig, test_only: str | None = None
) -> dict:
    """Run every unit not already in OUT, write results.json, results.md and results.png under
    OUT; returns results.json's content."""
    before = torch.get_num_threads()
    if config.threads:
        # On a shared CPU, fewer threads than torch's default avoids OpenMP threads spinning
        # against each other (a tiny MAE on 2 busy cores ran 20x slower at 2 threads than at 1).
        torch.set_num_threads(config.threads)
    try:
        return _evaluate(arm_specs, labeled, out, config, test_only)
    finally:
        torch.set_num_threads(before)


def _evaluate(
    arm_specs: list[tuple[str, str]], labeled: str, out: str, config: EvalConfig, test_only: str | None
) -> dict:
    started = time.perf_counter()
    device = _device(config.device)
    spec = model_spec(config.model, config.size)
    arms = _open_arms(arm_specs)
    split = labeled_mod.split(labeled, config.test_fraction, test_only)
    for arm in arms:
        check_no_test_images(arm, split.test)
    log.info("labeled: %d train, %d test; loading at %d px", len(split.train), len(split.test), config.size)
    train_x, train_y, _ = labeled_mod.load_resized(split.train, config.size)
    test_x, _, test_masks = labeled_mod.load_resized(split.test, config.size)

    pre = PretrainSettings(config.steps, config.batch_size, config.lr, config.mask_ratio)
    fine = FinetuneSettings(config.finetune_steps, config.finetune_batch_size, config.finetune_lr)
    units_dir = Path(out) / UNITS_DIR
    units_dir.mkdir(parents=True, exist_ok=True)
    common = {**asdict(config), "device": device, "train": _files(split.train), "test": _files(split.test)}
    for drop in ("seeds", "alpha", "scratch", "threads"):  # none changes what one unit computes
        common.pop(drop)

    names = [arm.name for arm in arms] + ([SCRATCH] if config.scratch else [])
    by_name = {arm.name: arm for arm in arms}
    units: dict[str, list[dict]] = {name: [] for name in names}
    for name in names:
        arm = by_name.get(name)
        for seed in range(config.seeds):
            key = _key({**common, "seed": seed, "arm": arm.fingerprint if arm else SCRATCH})
            path = units_dir / f"{name}-seed{seed}.json"
            unit = _load_unit(path, key)
            if unit is None:
                unit = {
                    "key": key,
                    **_run_unit(name, arm, seed, spec, pre, fine, device, (train_x, train_y), (test_x, test_masks)),
                }
                _write_json(path, unit)
            units[name].append(unit)

    results = {
        "optidel_version": __version__,
        "config": asdict(config),
        "model_spec": asdict(spec),
        "device": device,
        "labeled": {
            "dir": str(labeled),
            "test_only": None if test_only is None else str(test_only),
            "train": len(split.train),
            "test": len(split.test),
            "split": (
                "train on all of dir, test on all of test_only"
                if test_only is not None
                else f"sorted by file name; the last ceil({config.test_fraction} * n) pairs test, the rest train"
            ),
            "first_test": split.test[0].name,
        },
        "alpha": config.alpha,
        "retained_fraction_definition": R_DEFINITION,
        "arms": {name: _summary(by_name.get(name), units[name], config.alpha) for name in names},
        "seconds": round(time.perf_counter() - started, 1),
    }
    report.write(out, results)
    return results


def _run_unit(
    name: str,
    arm: Arm | None,
    seed: int,
    spec,
    pre: PretrainSettings,
    fine: FinetuneSettings,
    device: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, list[np.ndarray]],
) -> dict:
    """Pre-train on the arm (random weights for the scratch control), fine-tune, test."""
    log.info("unit %s seed %d ...", name, seed)
    tick = time.perf_counter()
    if arm is None:
        mae, stats = initial_model(spec, seed).to(device), {"images_seen": 0}
    else:
        mae, stats = pretrain(arm, spec, pre, seed, device)
    model = finetune(mae, *train, fine, seed, device)
    counts = test_counts(model, *test, device)
    background, foreground = class_iou(counts).tolist()
    seconds = round(time.perf_counter() - tick, 1)
    log.info("unit %s seed %d: mIoU %.4f in %.0f s", name, seed, miou(counts), seconds)
    return {
        "arm": name,
        "seed": seed,
        "miou": miou(counts),
        "iou_background": background,
        "iou_foreground": foreground,
        **stats,
        "seconds": seconds,
    }


def _summary(arm: Arm | None, units: list[dict], alpha: float) -> dict:
    """One arm's row: per-seed values, mean and sample standard deviation (None for one seed)."""
    mious = [u["miou"] for u in units]
    row = {
        "out": arm.out if arm else None,
        "retained_fraction": arm.retained if arm else None,
        "pool_images": arm.pool_ok if arm else None,
        "samples": arm.samples if arm else None,
        "images_seen": units[0]["images_seen"],
        "seeds": [u["seed"] for u in units],
        "miou": mious,
        **_mean_std("miou", mious),
        "iou_foreground": [u["iou_foreground"] for u in units],
        "pretrain_loss_last": [u.get("loss_last") for u in units],
        "seconds": [u["seconds"] for u in units],
    }
    if arm is None:  # no pre-training data: NormDEL does not apply
        row.update(normdel=None, normdel_mean=None, normdel_std=None, del_mean=None)
    else:
        scores = [normdel(m, arm.retained, alpha) for m in mious]
        row.update(
            normdel=scores,
            **_mean_std("normdel", scores),
            del_mean=float(np.mean([del_score(m, arm.retained, alpha) for m in mious])),
        )
    return row


def _mean_std(name: str, values: list[float]) -> dict:
    return {
        f"{name}_mean": float(np.mean(values)),
        f"{name}_std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
    }


def _open_arms(arm_specs: list[tuple[str, str]]) -> list[Arm]:
    if not arm_specs:
        raise EvalError("no arms: pass --arm NAME=OUT at least once")
    seen = set()
    for name, _ in arm_specs:
        if not _ARM_NAME.match(name) or name == SCRATCH:
            raise EvalError(
                f"arm name {name!r}: use letters, digits, '_', '-', '.' (and not {SCRATCH!r}, the control's name)"
            )
        if name in seen:
            raise EvalError(f"arm name {name!r} given twice")
        seen.add(name)
    return [open_arm(name, out) for name, out in arm_specs]


def _device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda: no CUDA device visible to torch")
    return choice


def _files(pairs: list[labeled_mod.Pair]) -> list[list]:
    """What a unit's key records of a split: every file with its size and mtime, so an edited
    mask or image invalidates the units that used it."""
    return [[str(path), path.stat().st_size, path.stat().st_mtime_ns] for p in pairs for path in (p.image, p.mask)]


def _key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _load_unit(path: Path, key: str) -> dict | None:
    if not path.exists():
        return None
    try:
        unit = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: run the unit again
    return unit if unit.get("key") == key else None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
