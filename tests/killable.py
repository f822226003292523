"""`optidel run` in a process of its own, killed with SIGKILL at a chosen moment: the driver of
the crash tests (tests/test_resume.py, tests/test_faults.py, benchmarks/reliability.py).

The child starts its own local Ray (`--ray-address local`, never the test session's). Ray's
workers leave the child's process group, so every process of the run carries a marker in its
environment; after the kill, whatever still has the marker is ended by pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MARKER = "OPTIDEL_TEST_RUN_ID"
POLL_S = 0.005


@dataclass
class Outcome:
    killed: bool  # the condition held and the run was killed
    returncode: int
    seconds: float
    files_at_kill: list[str]  # OUT's files (relative) right after the kill
    log: str


def optidel_run(inputs: list[str], out: Path, sets: list[str], *, env: dict | None = None,
                kill_when: Callable[[Path], bool] | None = None, timeout: float = 600,
                score_exits_once: Path | None = None) -> Outcome:
    """Run `optidel run INPUTS -o OUT --set ...`; with kill_when, SIGKILL its whole run (driver,
    local Ray, workers) as soon as kill_when(OUT) holds. With score_exits_once, the first Score
    call that finds no file there creates it and kills its worker (tests/score_exits_once.py)."""
    run_id = uuid.uuid4().hex
    child_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    child_env.update(env or {}, **{MARKER: run_id, "PYTHONUNBUFFERED": "1"})
    program = ["-m", "optidel.pipeline.cli"]
    if score_exits_once is not None:
        program = [str(Path(__file__).with_name("score_exits_once.py")), str(score_exits_once)]
    args = [sys.executable, *program, "--log-level", "INFO", "run", *inputs, "-o", str(out), "--ray-address", "local"]
    for item in sets:
        args += ["--set", item]
    log_path = out.parent / f"{out.name}-{run_id[:8]}.log"
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
        killed = False
        try:
            while proc.poll() is None:
                if kill_when is not None and kill_when(out):
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                    break
                if time.monotonic() - start > timeout:
                    os.killpg(proc.pid, signal.SIGKILL)
                    raise TimeoutError(f"optidel run did not finish in {timeout} s; log: {log_path}")
                time.sleep(POLL_S)
            proc.wait()
        finally:
            end_marked_processes(run_id)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) if out.exists() else []
    return Outcome(killed, proc.returncode, time.monotonic() - start, files, log_path.read_text(errors="replace"))


def end_marked_processes(run_id: str, wait_s: float = 30) -> None:
    """SIGKILL every process whose environment carries this run's marker, and wait until none is
    left (a Ray worker may still be starting when its raylet dies)."""
    needle = f"{MARKER}={run_id}".encode()
    deadline = time.monotonic() + wait_s
    while True:
        pids = [pid for pid in _pids() if needle in _environ(pid)]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of run {run_id} survive SIGKILL: {pids}")
        time.sleep(0.1)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or not ours to read
        return b""
