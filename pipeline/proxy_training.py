"""The self-trained proxy (score.proxy = self) is trained in one Ray task, not in the driver.

The driver gathers the training crops (pass1.training_crops), hands them to the task and waits.
The task runs with the score stage's resources (raydata.call_on_model_resources): on a GPU
where the score actors get one, else on one node's CPUs with as many torch threads as Ray gave
it. It logs its progress on optidel's log at the driver's level, which Ray forwards to the
driver's console, and writes the checkpoint itself, where the score actors read it: the final
weights and, in the same file, the early ones behind the score_early column
(score.mae.early_fraction), so the one sha256 that run.json records and a resume checks covers
both.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from . import progress, raydata
from .config import Config, ScoreConfig

log = logging.getLogger("optidel")


@dataclass(frozen=True)
class Trained:
    """What the training task reports: what run.json records of the checkpoint (score.proxy_info:
    path, sha256, spec), read back by the task so that the driver need not import torch, and
    the process that trained (a Ray worker's pid; the driver's only if train_and_save was
    called in-process)."""

    info: dict
    pid: int

    @property
    def sha256(self) -> str:
        return self.info["sha256"]


def train(crops: np.ndarray, config: Config, path: str) -> Trained:
    """Train the proxy on `crops` in a Ray task that writes it to `path`; raydata.StageFailure
    if Ray gives up on the task or the training raises."""
    return raydata.call_on_model_resources(
        train_and_save,
        config.ray,
        crops=crops,
        score_config=config.score,
        seed=config.seed,
        path=path,
        log_level=log.getEffectiveLevel(),
    )


def train_and_save(
    crops: np.ndarray, score_config: ScoreConfig, seed: int, path: str, *, cpus: float, device: str, log_level: int
) -> Trained:
    """The task's body: train with max(1, floor(cpus)) torch threads on `device`, save to
    `path`. torch's results change in the last bit with the thread count, so the count is the
    task's CPU count, never torch's own guess; on one machine that is all its CPUs, the count
    the driver trained with before, so the checkpoint keeps its bytes."""
    from ..stages import mae, score

    threads = max(1, math.floor(cpus))
    with progress.logged_to_stderr(log_level), progress.torch_threads(threads):
        log.info("proxy: training on %s, %d torch threads", device, threads)
        steps = progress.StepLog("proxy", score_config.mae.train_steps)
        model = score.train_self_proxy(crops, score_config, seed, progress=steps, device=device)
    mae.save_proxy(model, path)
    return Trained(info=score.proxy_info(path), pid=os.getpid())
