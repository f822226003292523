"""`optidel run --ray-address` against a real two-node Ray cluster on this machine, started
with the `ray start` CLI, gives byte-identical shards and manifests to a local run.

The head node has no CPUs, as on a cluster whose head only coordinates: every pass-1 and pass-2
task and the score actor must run on the second node, while the driver (`optidel run`, in a
subprocess so that it cannot collide with this session's in-process Ray) joins through the
head. Each node has its own temp dir and ports. Nodes are stopped by killing the process groups
this test started, never with `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from optidel.pipeline import config as config_mod
from optidel.pipeline.runner import run
from optidel.stages import mae, score

from test_run_optidel import FAST

POOL_SIZE = 24
KEEP = 0.25
START_TIMEOUT_S = 120
RAY_CLI = str(Path(sys.executable).with_name("ray"))  # the Ray of this interpreter, not PATH's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Explicit free ports for everything a node listens on, so two nodes (and any other Ray
    on this machine) never race for a default port."""
    names = ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent", "metrics-export")
    return [f"--{name}-port={_free_port()}" for name in names]


class LocalCluster:
    """A head and one worker node, each a `ray start --block` process in its own session."""

    def __init__(self, workdir: Path, worker_cpus: int):
        self.workdir = workdir
        self.worker_cpus = worker_cpus
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Token auth with a token of this test's own (none of the machine's token files is read
        # or written); every node and the driver get it through the environment. RAY_ADDRESS is
        # dropped so that no other cluster leaks in.
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
        self.nodes: list[subprocess.Popen] = []
        self.temp_dirs: list[str] = []
        self.logs: list = []
        self.started: set[int] = set()  # every pid seen under our nodes, for the leftover check

    def start(self) -> None:
        self._node("head", ["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false"])
        self._node("worker", [f"--address={self.address}", f"--num-cpus={self.worker_cpus}"])
        self._wait_for_nodes(2)

    def _node(self, name: str, args: list[str]) -> None:
        # Short temp dirs: Ray's unix socket paths must stay under ~107 characters.
        temp_dir = tempfile.mkdtemp(prefix=f"optidel-{name}-", dir="/tmp")
        self.temp_dirs.append(temp_dir)
        log = open(self.workdir / f"{name}.log", "wb")
        self.logs.append(log)
        command = [RAY_CLI, "start", *args, f"--temp-dir={temp_dir}", "--num-gpus=0", "--object-store-memory=200000000", "--disable-usage-stats", *_node_ports(), "--block"]
        self.nodes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True))
        self._wait_for_log(name, "Ray runtime started")

    def _wait_for_log(self, name: str, text: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        log = self.workdir / f"{name}.log"
        while text not in log.read_text(errors="replace"):
            if self.nodes[-1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {name} did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)

    def _probe(self, body: str) -> str:
        """Run `body` in a fresh Python connected to the cluster; its stdout."""
        code = f"import json, sys, time, ray\nray.init(address={self.address!r}, logging_level='ERROR')\n{body}"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=START_TIMEOUT_S + 60)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def _wait_for_nodes(self, count: int) -> None:
        out = self._probe(
            f"deadline = time.monotonic() + {START_TIMEOUT_S}\n"
            f"while sum(n['Alive'] for n in ray.nodes()) < {count} and time.monotonic() < deadline:\n"
            "    time.sleep(0.5)\n"
            "print(json.dumps([sum(n['Alive'] for n in ray.nodes()), ray.cluster_resources().get('CPU', 0)]))\n"
        )
        assert json.loads(out.splitlines()[-1]) == [count, self.worker_cpus], out

    def driver_pids(self) -> set[int]:
        """Process ids of every driver that has joined the cluster (the GCS job table)."""
        out = self._probe("print(json.dumps([job['DriverPid'] for job in ray._private.state.jobs()]))\n")
        return set(json.loads(out.splitlines()[-1]))

    def processes(self) -> set[int]:
        alive = set()
        for node in self.nodes:
            with contextlib.suppress(psutil.NoSuchProcess):
                alive |= {node.pid} | {p.pid for p in psutil.Process(node.pid).children(recursive=True)}
        return alive

    def stop(self) -> None:
        """SIGKILL our nodes' process groups (SIGTERM would first drain for 30 s), then any of
        their descendants that left the group."""
        self.started |= self.processes()
        for node in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)
        for pid in self.started:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        psutil.wait_procs([p for p in map(_process, self.started) if p], timeout=10)
        for log in self.logs:
            log.close()
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def leftovers(self) -> list[int]:
        return sorted(pid for pid in self.started if (p := _process(pid)) and p.status() != psutil.STATUS_ZOMBIE)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _tree_bytes(out: Path) -> dict[str, bytes]:
    """The shards, their index and the manifests, by relative path (run.json holds timings and
    the address; work/ is intermediate state)."""
    files = [out / "index.json", *(out / "shards").rglob("*"), *(out / "manifests").rglob("*")]
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(files) if p.is_file()}


@pytest.fixture()
def job(kvasir, tmp_path):
    """A list file of kvasir images and a fixed random proxy checkpoint: a job whose work is
    all Ray tasks and actors (no proxy training in the driver)."""
    names = sorted((kvasir / "images").glob("*.jpg"))
    pick = np.random.default_rng(11).choice(len(names), POOL_SIZE, replace=False)
    pool = tmp_path / "pool.txt"
    pool.write_text("".join(f"{names[i]}\n" for i in sorted(pick)))
    config = config_mod.load(overrides={"keep": KEEP}, sets=FAST)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = mae.MAE(score.proxy_spec(config.score))
    proxy = tmp_path / "proxy.pt"
    mae.save_proxy(model, str(proxy))
    return pool, proxy


def test_two_node_cluster_matches_local_run(job, tmp_path, ray_local):
    pool, proxy = job
    local = tmp_path / "local"
    run([str(pool)], str(local), config_mod.load(overrides={"keep": KEEP, "score.proxy": str(proxy)}, sets=FAST))

    cluster = LocalCluster(tmp_path, worker_cpus=2)
    try:
        cluster.start()
        remote = tmp_path / "cluster"
        command = [sys.executable, "-m", "optidel.pipeline.cli", "run", str(pool), "-o", str(remote), "--keep", str(KEEP), "--proxy", str(proxy), "--ray-address", cluster.address]
        command += [arg for item in FAST for arg in ("--set", item)]
        driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env)
        try:
            _, stderr = driver.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            driver.kill()
            raise
        drivers = cluster.driver_pids()
    finally:
        cluster.stop()
    assert driver.returncode == 0, stderr[-4000:]
    assert driver.pid in drivers  # it ran on the cluster, not on a Ray of its own
    assert cluster.leftovers() == []

    local_files, cluster_files = _tree_bytes(local), _tree_bytes(remote)
    assert any(name.endswith(".tar") for name in local_files) and "manifests/patches/patches.parquet" in local_files
    assert cluster_files == local_files
