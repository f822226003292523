"""One unit of the evaluation: an arm (or the scratch control) and a seed. Pre-train the
encoder on the arm, then the primary metric (a linear probe on the frozen encoder) and, for the
first `finetune_seeds` seeds, the secondary one (a fine-tune on a tenth of the labels), each as
per-image intersection/union counts on the held-out split.

Pre-trained encoders are cached as files keyed by what pre-training depends on, so the test
run reuses the encoders that the validation run trained: the two splits then rank the very
same networks. Units run in worker processes (`jobs`), each with `threads` torch threads (1
unless set): two tiny models on two cores run faster side by side than one model on two threads.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .arms import Arm
from .metrics import miou
from .pretrain import PretrainSettings, initial_model, pretrain
from .probe import ProbeSettings, fit_probe, probe_counts, token_features
from .segmentation import FinetuneSettings, finetune, test_counts

@dataclass(frozen=True)
class Data:
    """The labeled images a unit needs, resized to the eval size."""

    train_x: np.ndarray  # uint8 (N, S, S, 3): the probe's training images
    train_y: np.ndarray  # bool (N, S, S)
    finetune_index: np.ndarray  # rows of train_x that the low-label fine-tune may use
    held_x: np.ndarray  # the held-out split (validation or test)
    held_masks: list  # its masks at native size


@dataclass(frozen=True)
class Job:
    name: str
    arm: Arm | None  # None: the scratch control
    seed: int
    spec: object  # MAESpec
    pre: PretrainSettings
    probe: ProbeSettings
    fine: FinetuneSettings | None  # None: this seed has no fine-tune
    device: str
    encoder_path: Path | None  # where the arm's pre-trained encoder is cached (None for scratch)


def run(job: Job, data: Data) -> dict:
    tick = time.perf_counter()
    mae, stats = _encoder(job)
    features = token_features(mae, data.train_x, job.device)
    probe = fit_probe(features, data.train_y, job.spec.patch_size, job.probe)
    probe_result = probe_counts(probe, token_features(mae, data.held_x, job.device), data.held_masks)
    unit = {
        "arm": job.name,
        "seed": job.seed,
        "miou": miou(probe_result.sum(axis=0)),
        "counts": probe_result.tolist(),
        **stats,
    }
    if job.fine is not None:
        index = data.finetune_index
        # The fine-tune trains the encoder it is given: a copy, so `mae` stays the pre-trained one.
        model = finetune(copy.deepcopy(mae), data.train_x[index], data.train_y[index], job.fine, job.seed, job.device)
        fine_result = test_counts(model, data.held_x, data.held_masks, job.device)
        unit.update(finetune_miou=miou(fine_result.sum(axis=0)), finetune_counts=fine_result.tolist())
    unit["seconds"] = round(time.perf_counter() - tick, 1)
    return unit


def _encoder(job: Job):
    """(the pre-trained MAE in eval mode, pre-training stats), from the cache when it has it."""
    if job.arm is None:
        return initial_model(job.spec, job.seed).to(job.device).eval(), {"images_seen": 0}
    path = job.encoder_path
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        mae = initial_model(job.spec, job.seed)
        mae.load_state_dict(saved["state"])
        return mae.to(job.device).eval(), json.loads(saved["stats"])
    mae, stats = pretrain(job.arm, job.spec, job.pre, job.seed, job.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of this process's own: a validation and a test run may share one cache.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"state": {k: v.cpu() for k, v in mae.state_dict().items()}, "stats": json.dumps(stats)}, tmp)
    tmp.replace(path)
    return mae, stats


# Worker processes receive the labeled data once, at start, not with every unit.
_WORKER_DATA: Data | None = None


def init_worker(data: Data, threads: int) -> None:
    global _WORKER_DATA
    _WORKER_DATA = data
    torch.set_num_threads(threads)


def run_in_worker(job: Job) -> dict:
    return run(job, _WORKER_DATA)
