"""Progress of long work, on optidel's log: INFO lines that --quiet silences. The proxy's
training logs its steps; the Ray stages log what they have done in the pool's units (sources,
patches, samples), where Ray Data's own bars, turned off (pipeline/raydata.py), count rows."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager

log = logging.getLogger("optidel")

REPORTS = 10  # progress lines per task, besides the last


class StepLog:
    """Logs "what: step i/n, loss x, ETA" about every tenth of n steps and at the last one."""

    def __init__(self, what: str, steps: int):
        self.what = what
        self.steps = steps
        self.every = max(1, steps // REPORTS)
        self.start = time.perf_counter()

    def __call__(self, step: int, loss: float) -> None:
        """Called after step `step` (1-based) with its loss."""
        if step % self.every and step != self.steps:
            return
        log.info("%s: step %d/%d, loss %.4f, %s", self.what, step, self.steps, loss, _timing(self.start, step, self.steps))


class StageProgress:
    """Logs "what: i/n unit[, counts], elapsed, ETA" as a stage's results come back, about every
    tenth of n and at the last one; `counts` are running totals of other units (patches)."""

    def __init__(self, what: str, total: int, unit: str):
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0
        self.counts: dict[str, int] = {}
        self.every = max(1, total // REPORTS)
        self.next_report = min(self.every, total)
        self.start = time.perf_counter()

    def add(self, done: int, **counts: int) -> None:
        """`done` more of the unit finished, with `counts` more of the others."""
        self.done += done
        for name, n in counts.items():
            self.counts[name] = self.counts.get(name, 0) + n
        if self.done < self.next_report:
            return
        # The next tenth past what is done (a batch may cross several), then the last; after it, none.
        finished = self.done >= self.total
        self.next_report = self.total + 1 if finished else min((self.done // self.every + 1) * self.every, self.total)
        others = "".join(f", {n} {name}" for name, n in self.counts.items())
        log.info("%s: %d/%d %s%s, %s", self.what, self.done, self.total, self.unit, others,
                 _timing(self.start, self.done, self.total))


def _timing(start: float, done: int, total: int) -> str:
    """The "Xs elapsed, ETA Ys" of a line, after `done` of `total` at the pace so far."""
    elapsed = time.perf_counter() - start
    left = elapsed / done * (total - done) if done else 0.0
    return f"{_duration(elapsed)} elapsed, ETA {_duration(left)}"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def driver_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def torch_threads(threads: int):
    """torch's intra-op threads set to `threads` for the block, then restored: the driver's
    training beside Ray workers, sized explicitly rather than by torch's own guess."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
