"""The self-trained proxy trains in a Ray task (pipeline/proxy_training.py): not in the driver's
process, with the bytes the driver's own training gave, its progress on the driver's console
unless --quiet, and a failure reported as the stage's."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from optidel.pipeline import proxy_training, raydata, runner
from optidel.pipeline.config import Config
from optidel.pipeline.progress import torch_threads
from optidel.stages import mae, score

# The default proxy's shape, a few steps: large enough that the thread count shows in the bytes.
CONFIG = Config.model_validate({"seed": 3, "score": {"mae": {"train_steps": 3, "early_fraction": 0.1}}})
CROPS = np.random.default_rng(0).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)


def _in_driver(threads: int, path) -> str:
    """The checkpoint's sha256 as the driver trained it before the task: in-process, with
    `threads` torch threads (its CPU count, 2 on the test cluster)."""
    with torch_threads(threads):
        model = score.train_self_proxy(CROPS, CONFIG.score, CONFIG.seed)
    return mae.save_proxy(model, str(path))


def test_the_proxy_trains_in_a_ray_task_with_the_bytes_of_in_driver_training(tmp_path, ray_local):
    path = tmp_path / "proxy.pt"
    trained = proxy_training.train(CROPS, CONFIG, str(path))
    assert trained.pid != os.getpid()  # a Ray worker trained it, not this (the driver's) process
    assert trained.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # The test cluster has 2 CPUs: the task trains with 2 threads, as the driver did.
    assert trained.sha256 == _in_driver(2, tmp_path / "driver-2.pt")
    # The comparison can fail: one thread fewer changes the bytes.
    assert trained.sha256 != _in_driver(1, tmp_path / "driver-1.pt")
    # What run.json records, read back in the task: the driver has no torch to read it with.
    assert trained.info == score.proxy_info(str(path))
    # The same file carries the early checkpoint behind score_early, so the one sha256 covers it.
    assert mae.load_proxy(str(path)).early_model() is not None


def test_a_reused_proxy_is_described_from_its_record_as_from_its_checkpoint(tmp_path):
    path = tmp_path / "proxy.pt"
    sha256 = _in_driver(1, path)
    info = score.proxy_info(str(path))
    assert runner._recorded_info(str(path), {"sha256": sha256, "spec": info["spec"], "trained_on_crops": 64}) == info
    # A record written before specs were kept in it: the checkpoint is read for the spec.
    assert runner._recorded_info(str(path), {"sha256": sha256, "trained_on_crops": 64}) == info


@pytest.mark.gpu
def test_with_gpus_per_actor_the_task_trains_on_a_gpu(tmp_path, ray_local):
    on_gpu = CONFIG.model_copy(update={"ray": CONFIG.ray.model_copy(update={"gpus_per_actor": 1.0})})
    path = tmp_path / "proxy.pt"
    trained = proxy_training.train(CROPS, on_gpu, str(path))
    assert trained.pid != os.getpid()
    assert mae.load_proxy(str(path)).spec == score.proxy_spec(CONFIG.score)  # saved from the CPU copy
    assert trained.sha256 != _in_driver(2, tmp_path / "cpu.pt")  # CUDA kernels round differently


def test_a_failed_training_is_a_stage_failure_naming_the_cause(tmp_path, ray_local):
    empty = np.zeros((0, 64, 64, 3), np.uint8)
    with pytest.raises(raydata.StageFailure, match="expected uint8 crops"):
        proxy_training.train(empty, CONFIG, str(tmp_path / "proxy.pt"))
    assert not (tmp_path / "proxy.pt").exists()


# A driver as the CLI's: raydata.connect's own Ray (log_to_driver), optidel's log at INFO, then
# at WARNING (--quiet); a marker line before each training, on stderr, where Ray forwards a
# worker's stderr.
CHILD = """
import logging, sys, time
import numpy as np
from optidel.pipeline import proxy_training, raydata, runner
from optidel.pipeline.config import Config
config = Config.model_validate({"score": {"mae": {"train_steps": 3, "batch_size": 4}}})
crops = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
raydata.connect(config.ray)
for level in (logging.INFO, logging.WARNING):
    logging.getLogger("optidel").setLevel(level)
    print("=== level", logging.getLevelName(level), file=sys.stderr, flush=True)
    proxy_training.train(crops, config, sys.argv[1])
    time.sleep(5)  # Ray's log monitor forwards a worker's lines a moment later
"""


@pytest.mark.slow
def test_progress_reaches_the_drivers_console_and_quiet_silences_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "proxy.pt")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    info, quiet = done.stderr.split("=== level WARNING")
    steps = [line for line in info.splitlines() if "proxy: step" in line]
    assert [line.split("proxy: ")[1].split(",")[0] for line in steps] == ["step 1/3", "step 2/3", "step 3/3"]
    assert all("(train_and_save pid=" in line for line in steps)  # forwarded from the task's worker
    assert "proxy:" not in quiet
