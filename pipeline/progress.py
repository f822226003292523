"""Progress of long work in the driver (the proxy's training), on optidel's log: INFO lines
that --quiet silences, beside Ray's own progress bars."""

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
        elapsed = time.perf_counter() - self.start
        left = elapsed / step * (self.steps - step)
        log.info("%s: step %d/%d, loss %.4f, %s elapsed, ETA %s", self.what, step, self.steps, loss,
                 _duration(elapsed), _duration(left))


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
