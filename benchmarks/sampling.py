"""Peak memory of a process and everything under it (Ray's GCS, raylet, workers, actors),
sampled with psutil while it runs: benchmarks/memory.py and benchmarks/scale.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import psutil

SAMPLE_EVERY_S = 0.2


class Sampler(threading.Thread):
    """Sums RSS and PSS over a process and all its descendants until stopped; keeps peaks."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_rss = self.peak_pss = self.peak_driver_rss = self.peak_driver_uss = 0
        self.peak_processes = 0
        self.peak_pss_by_role: dict[str, int] = {}  # each role's own peak, to see what grows
        self.samples = 0
        self.done = threading.Event()

    def _role(self, process: psutil.Process) -> str:
        if process.pid == self.root.pid:
            return "driver"
        title = " ".join(process.cmdline()) or process.name()
        if "gcs_server" in title:
            return "gcs"
        if "raylet" in title:
            return "raylet"
        if title.startswith("ray::MapWorker"):
            return "actors"
        if title.startswith("ray::"):
            return "task workers"
        return "other"

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(SAMPLE_EVERY_S)

    def sample(self) -> None:
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = pss = 0
        by_role: dict[str, int] = {}
        for process in processes:
            try:
                info = process.memory_full_info()
                role = self._role(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # exited between the listing and the read
            rss += info.rss
            pss += info.pss
            by_role[role] = by_role.get(role, 0) + info.pss
            if process.pid == self.root.pid:
                self.peak_driver_rss = max(self.peak_driver_rss, info.rss)
                self.peak_driver_uss = max(self.peak_driver_uss, info.uss)
        for role, value in by_role.items():
            self.peak_pss_by_role[role] = max(self.peak_pss_by_role.get(role, 0), value)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_processes = max(self.peak_processes, len(processes))
        self.samples += 1


def run_sampled(command: list[str], what: str) -> tuple[str, float, Sampler]:
    """Run `command` in a child process, on a local Ray of its own (RAY_ADDRESS dropped), while
    sampling its memory and its children's: (its stdout, wall seconds, the sampler). Exits
    naming `what` when the child fails."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(process.pid)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.done.set()
    sampler.join()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        sys.exit(f"{what} failed ({process.returncode}):\n{stderr[-4000:]}")
    return stdout, wall, sampler
