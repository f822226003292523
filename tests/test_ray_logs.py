"""Ray's log lines in the driver (pipeline/ray_logs.py): all of them in OUT/logs/, on the
console only those at the level optidel's log level implies. Each case runs in a child process,
since routing moves the process's file descriptor 2; it uses Ray's own loggers, and starts no
Ray."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

CHILD = r"""
import logging, os, sys
import ray, ray.data  # Ray's loggers and console handlers, as Ray sets them up on import

level, logs = int(sys.argv[1]), sys.argv[2]
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")  # as the CLI does
logging.getLogger("optidel").setLevel(level)
from optidel.pipeline import ray_logs

ray_logs.route(level, logs)
logging.getLogger("ray").setLevel(min(level, logging.INFO))  # as ray.init(logging_level=...) does
for name in ("ray", "ray.data"):
    for say in ("info", "warning", "error"):
        getattr(logging.getLogger(name), say)("%s says %s", name, say)
logging.getLogger("optidel").info("optidel says info")
logging.getLogger("optidel").warning("optidel says warning")
os.write(2, b"[2026-01-01 00:00:00,000 E 1 1] core_worker.cc:1: native says error\n")  # Ray's C++
print("summary")
"""

RAY_LINES = [f"{name} says {say}" for name in ("ray", "ray.data") for say in ("info", "warning", "error")]
NATIVE = "native says error"


def _run(tmp_path, level: int) -> tuple[str, str, dict[str, str]]:
    logs = tmp_path / "logs"
    done = subprocess.run([sys.executable, "-c", CHILD, str(level), str(logs)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = {p.name: p.read_text() for p in logs.iterdir()} if logs.is_dir() else {}
    return done.stdout, done.stderr, files


@pytest.mark.parametrize(
    ("level", "console"),
    [
        (logging.INFO, ["ray says warning", "ray says error", "ray.data says warning", "ray.data says error",
                        "optidel says info", "optidel says warning"]),
        (logging.WARNING, ["ray says error", "ray.data says error", "optidel says warning"]),  # --quiet
    ],
    ids=["default", "quiet"],
)
def test_ray_lines_go_to_out_logs_and_the_console_gets_its_level(tmp_path, level, console):
    stdout, stderr, files = _run(tmp_path, level)
    said = RAY_LINES + [NATIVE, "optidel says info", "optidel says warning"]
    assert [line for line in said if line in stderr] == console, stderr
    assert stdout == "summary\n"
    assert sorted(files) == ["ray-native.log", "ray.log"]
    assert [line for line in RAY_LINES if line in files["ray.log"]] == RAY_LINES
    assert NATIVE in files["ray-native.log"] and "optidel says" not in files["ray.log"] + files["ray-native.log"]


def test_verbose_shows_everything_on_the_console(tmp_path):
    _, stderr, files = _run(tmp_path, logging.DEBUG)
    assert all(line in stderr for line in RAY_LINES + [NATIVE, "optidel says info"]), stderr
    assert sorted(files) == ["ray.log"]  # file descriptor 2 left alone: native lines on the console
    assert all(line in files["ray.log"] for line in RAY_LINES)


ROUTED_TWICE = r"""
import logging, sys
import ray, ray.data
from optidel.pipeline import ray_logs

for logs in sys.argv[1:]:  # two runs in one process, Ray shut down between them
    ray_logs.route(logging.INFO, logs)
    logging.getLogger("ray.data").warning("said during %s", logs)
"""


def test_a_second_route_moves_the_file_lines_to_the_second_out(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    done = subprocess.run([sys.executable, "-c", ROUTED_TWICE, str(first), str(second)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "said during" not in (first / "ray.log").read_text().replace(f"said during {first}", "")
    assert f"said during {second}" in (second / "ray.log").read_text()


def test_a_last_resort_handler_is_left_to_follow_the_console(tmp_path):
    """logging's last-resort class (some libraries install one) reads sys.stderr at each write
    and has no stream to set: routing must not trip on it, and its lines still reach the console."""
    logs = tmp_path / "logs"
    child = CHILD.replace(
        "from optidel.pipeline import ray_logs\n",
        "from optidel.pipeline import ray_logs\n"
        "logging.getLogger('somelib').addHandler(logging._StderrHandler())\n"
        "logging.getLogger('somelib').propagate = False\n",
    ).replace('print("summary")', 'logging.getLogger("somelib").warning("somelib says warning")\nprint("summary")')
    done = subprocess.run([sys.executable, "-c", child, str(logging.INFO), str(logs)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "somelib says warning" in done.stderr
    assert NATIVE in (logs / "ray-native.log").read_text()
