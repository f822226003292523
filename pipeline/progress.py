"""Progress of long work (the proxy's training, in a Ray task), on optidel's log: INFO lines
that --quiet silences, beside Ray's own progress bars."""

from __future__ import annotations

import logging
import sys
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


@contextmanager
def logged_to_stderr(level: int):
    """optidel's log at `level` (the driver's: --quiet, --log-level) on this process's stderr
    for the block, in the CLI's format. In a Ray worker that is how a line reaches the user:
    Ray forwards a worker's stderr to the driver's console, prefixed with the task's name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    before = log.level, log.propagate
    log.setLevel(level)
    log.propagate = False  # a handler the process already has would print each line twice
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(before[0])
        log.propagate = before[1]


@contextmanager
def torch_threads(threads: int):
    """torch's intra-op threads set to `threads` for the block, then restored: a task's
    training sized by the CPUs Ray gave it, rather than by torch's own guess."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
