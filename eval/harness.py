"""The evaluation: for every arm and seed, pre-train (pretrain.py), then a linear probe on the
frozen encoder (probe.py, the primary metric) and a low-label fine-tune (segmentation.py, the
secondary one) on the held-out split; then per-arm means, paired differences against the
random, full and scratch arms with bootstrap intervals (stats.py), NormDEL, and the report.

Settings are chosen on the validation split (the default); `split="test"` is run once at the
end. The positive control is full against scratch: until the full pool's encoder beats random
weights with an interval above zero, the table says that no ranking of arms is meaningful.

Each (arm, seed) unit is saved as OUT/units/ARM-seedS.json under a key made of everything it
depends on (settings, device, the arm's shard digests, the split's files); a rerun reuses
units whose key matches, so an interrupted table resumes and adding an arm or a seed costs
only the new units. Pre-trained encoders are cached apart (units.py), shared by both splits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from optidel import __version__, imageio
from . import labeled as labeled_mod
from . import composition, report, units as units_mod
from .arms import Arm, check_no_held_out_images, open_arm
from .labeled import EvalError
from .metrics import del_score, normdel
from .pretrain import PretrainSettings, model_spec
from .probe import ProbeSettings
from .segmentation import FinetuneSettings
from .settings import EvalConfig
from .stats import paired_difference

log = logging.getLogger("optidel")

SCRATCH = "scratch"  # the control: the same probe and fine-tune on random weights
BASELINES = ("random", "full", SCRATCH)  # every arm is compared with these, when present
UNITS_DIR = "units"
ENCODERS_DIR = "encoders"
_ARM_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
R_DEFINITION = "counts.samples / counts.by_status.ok of the arm's run.json (output images over usable pool images)"


def evaluate(
    arm_specs: list[tuple[str, str]],
    labeled: str,
    out: str,
    config: EvalConfig,
    test_only: str | None = None,
    encoders: str | None = None,
    scored: str | None = None,
) -> dict:
    """Run every unit not already in OUT, write results.json, results.md and results.png under
    OUT; returns results.json's content. `encoders` (default OUT/encoders) caches pre-trained
    encoders, so a test run pointed at the validation run's cache trains nothing again. Arms
    drawn from one dirty pool also get their composition (composition.py; `scored` as there)."""
    before = torch.get_num_threads()
    if config.threads:
        # On a shared CPU, fewer threads than torch's default avoids OpenMP threads spinning
        # against each other (a tiny MAE on 2 busy cores ran 20x slower at 2 threads than at 1).
        torch.set_num_threads(config.threads)
    try:
        return _evaluate(arm_specs, labeled, out, config, test_only, encoders, scored)
    finally:
        torch.set_num_threads(before)


def _evaluate(
    arm_specs: list[tuple[str, str]],
    labeled: str,
    out: str,
    config: EvalConfig,
    test_only: str | None,
    encoders: str | None,
    scored: str | None,
) -> dict:
    started = time.perf_counter()
    device = _device(config.device)
    spec = model_spec(config.model, config.size)
    arms = _open_arms(arm_specs)
    split = labeled_mod.split(labeled, config.test_fraction, config.validation_fraction, test_only)
    held_out = split.held_out(config.split)
    for arm in arms:
        check_no_held_out_images(arm, split.validation + split.test)
    log.info(
        "labeled: %d train, %d %s; loading at %d px", len(split.train), len(held_out), config.split, config.size
    )
    train_x, train_y, _ = labeled_mod.load_resized(split.train, config.size)
    held_x, _, held_masks = labeled_mod.load_resized(held_out, config.size)
    data = units_mod.Data(train_x, train_y, np.arange(0, len(train_x), config.finetune_every), held_x, held_masks)

    pre = PretrainSettings(config.steps, config.batch_size, config.lr, config.mask_ratio)
    probe = ProbeSettings(config.probe_iterations, config.probe_l2)
    fine = FinetuneSettings(config.finetune_steps, config.finetune_batch_size, config.finetune_lr)
    units_dir = Path(out) / UNITS_DIR
    units_dir.mkdir(parents=True, exist_ok=True)
    encoders_dir = Path(encoders) if encoders else Path(out) / ENCODERS_DIR
    common = {
        **asdict(config),
        "device": device,
        "train": _files(split.train),
        "held_out": _files(held_out),
    }
    for drop in ("seeds", "alpha", "scratch", "threads", "jobs", "pool", "test_fraction", "validation_fraction"):
        common.pop(drop)  # none changes what one unit computes (the split's files are in the key)
    pretrain_fields = {k: common[k] for k in ("size", "model", "steps", "batch_size", "lr", "mask_ratio", "device")}

    names = [arm.name for arm in arms] + ([SCRATCH] if config.scratch else [])
    by_name = {arm.name: arm for arm in arms}
    units: dict[str, list[dict | None]] = {name: [None] * config.seeds for name in names}
    pending: list[tuple[Path, str, units_mod.Job]] = []
    for name in names:
        arm = by_name.get(name)
        for seed in range(config.seeds):
            key = _key({**common, "seed": seed, "arm": arm.fingerprint if arm else SCRATCH})
            path = units_dir / f"{name}-seed{seed}.json"
            units[name][seed] = _load_unit(path, key)
            if units[name][seed] is not None:
                continue
            encoder = None
            if arm is not None:
                ekey = _key({**pretrain_fields, "seed": seed, "arm": arm.fingerprint})[:20]
                encoder = encoders_dir / f"{name}-seed{seed}-{ekey}.pt"
            job = units_mod.Job(
                name, arm, seed, spec, pre, probe, fine if seed < config.finetune_seeds else None, device, encoder
            )
            pending.append((path, key, job))
    log.info("%d units to run, %d reused", len(pending), len(names) * config.seeds - len(pending))
    finished = _run_all([job for _, _, job in pending], data, config)
    for done, (index, unit) in enumerate(finished):
        path, key, job = pending[index]
        log.info(
            "unit %d/%d, %s seed %d: probe mIoU %.4f in %.0f s",
            done + 1, len(pending), job.name, job.seed, unit["miou"], unit["seconds"],
        )
        unit = {"key": key, **unit}
        _write_json(path, unit)
        units[job.name][job.seed] = unit

    summaries = {name: _summary(by_name.get(name), units[name], config.alpha) for name in names}
    pool_composition = composition.add_to(summaries, arms, scored)
    _compare(summaries, units, "counts", "")
    _compare(summaries, units, "finetune_counts", "finetune_")
    results = {
        "optidel_version": __version__,
        "split": config.split,
        "pool": config.pool or ", ".join(sorted({f"{a.pool_ok} images" for a in arms})),
        "config": asdict(config),
        "model_spec": asdict(spec),
        "device": device,
        "labeled": {
            "dir": str(labeled),
            "test_only": None if test_only is None else str(test_only),
            "train": len(split.train),
            "validation": len(split.validation),
            "test": len(split.test),
            "held_out": len(held_out),
            "split": (
                "sorted by file name; the last ceil(test_fraction * n) pairs test"
                + (" (or all of test_only)" if test_only is not None else "")
                + ", the last ceil(validation_fraction * rest) of the others validate, the rest train"
            ),
            "finetune_subset": (
                f"every {config.finetune_every}-th train pair by sorted name, from the first "
                f"({len(data.finetune_index)} pairs)"
            ),
            "first_held_out": held_out[0].name,
        },
        "alpha": config.alpha,
        "retained_fraction_definition": R_DEFINITION,
        "positive_control": _positive_control(summaries),
        "headroom": _headroom(summaries),
        "arms": summaries,
        **({"pool_composition": pool_composition} if pool_composition else {}),
        "seconds": round(time.perf_counter() - started, 1),
    }
    report.write(out, results)
    return results


def _run_all(jobs: list[units_mod.Job], data: units_mod.Data, config: EvalConfig):
    """(index into jobs, unit) as each unit finishes; in `config.jobs` worker processes when
    more than one, so a unit is saved as soon as it is done, whatever the others do."""
    if config.jobs <= 1 or len(jobs) <= 1:
        for index, job in enumerate(jobs):
            yield index, units_mod.run(job, data)
        return
    # spawn, not fork: a forked child of a process that has used torch's thread pool can hang.
    context = multiprocessing.get_context("spawn")
    threads = config.threads or 1
    with ProcessPoolExecutor(
        config.jobs, mp_context=context, initializer=units_mod.init_worker, initargs=(data, threads)
    ) as pool:
        futures = {pool.submit(units_mod.run_in_worker, job): index for index, job in enumerate(jobs)}
        for future in as_completed(futures):
            yield futures[future], future.result()


def _compare(summaries: dict, units: dict, counts_field: str, prefix: str) -> None:
    """Add `{prefix}vs_{baseline}` = paired difference with a bootstrap 95% interval to every
    arm, for each baseline present (not an arm against itself), over the seeds both ran."""
    for name, row in summaries.items():
        for baseline in BASELINES:
            if baseline == name or baseline not in units:
                continue
            pairs = [
                (a[counts_field], b[counts_field])
                for a, b in zip(units[name], units[baseline])
                if counts_field in a and counts_field in b
            ]
            if pairs:
                a_counts, b_counts = zip(*pairs)
                row[f"{prefix}vs_{baseline}"] = paired_difference(np.array(a_counts), np.array(b_counts))


def _positive_control(summaries: dict) -> dict:
    """Does pre-training on the full pool beat random weights (interval above zero)?"""
    return _full_beats(summaries, "scratch", "needs a 'full' arm and the scratch control")


def _headroom(summaries: dict) -> dict:
    """Does the whole pool pre-train better than a random subset (interval above zero)? Only
    then is pre-training limited by data at this compute, and can a selector beat random by
    choosing more informative images (arXiv 2206.14486); otherwise it can only match random, or
    lose by shifting the images away from what the downstream task sees."""
    return _full_beats(summaries, "random", "needs a 'full' and a 'random' arm")


def _full_beats(summaries: dict, baseline: str, missing: str) -> dict:
    """The full arm's paired difference against `baseline`, and whether its interval is above zero."""
    comparison = f"full vs {baseline}"
    versus = summaries.get("full", {}).get(f"vs_{baseline}")
    if versus is None:
        return {"comparison": comparison, "holds": None, "note": missing}
    return {"comparison": comparison, **versus, "holds": versus["ci95"][0] > 0}


def _summary(arm: Arm | None, units: list[dict], alpha: float) -> dict:
    """One arm's row: per-seed values, mean and sample standard deviation (None for one seed)
    of the probe's mIoU (the primary metric) and of the fine-tune's (the seeds that ran it)."""
    mious = [u["miou"] for u in units]
    finetune = [u["finetune_miou"] for u in units if "finetune_miou" in u]
    row = {
        "out": arm.out if arm else None,
        "retained_fraction": arm.retained if arm else None,
        "pool_images": arm.pool_ok if arm else None,
        "samples": arm.samples if arm else None,
        "images_seen": units[0]["images_seen"],
        "seeds": [u["seed"] for u in units],
        "miou": mious,
        **_mean_std("miou", mious),
        "finetune_miou": finetune,
        **(_mean_std("finetune_miou", finetune) if finetune else {"finetune_miou_mean": None, "finetune_miou_std": None}),
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
    """What a unit's key records of a split: each pair's name and the sha256 of its image and
    mask, so an edited file invalidates the units that used it while a copied, moved or
    re-mounted dataset (new paths, new mtimes) does not."""
    return [[p.name, imageio.sha256_hex(p.image.read_bytes()), imageio.sha256_hex(p.mask.read_bytes())] for p in pairs]


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
