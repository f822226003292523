"""`optidel --quiet`, as a user runs it: a child process that starts its own local Ray and
prints the summary and nothing else; Ray's log lines land in OUT/logs/."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from test_demo import SMALL

# The CLI, with every DeprecationWarning that our own modules trigger shown (Python hides them
# by default outside __main__): Ray's, for one, are attributed to the caller of its API.
CLI = (
    "import sys, warnings; "
    "warnings.filterwarnings('always', category=DeprecationWarning, module='optidel'); "
    "from optidel.pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
)
RAY_PYTHON_LINE = re.compile(r"\b(DEBUG|INFO|WARNING)\b \S+\.py:\d+ -- ")  # Ray's own format
NATIVE_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\]", re.MULTILINE)  # Ray's C++ logs


@pytest.mark.slow
def test_quiet_demo_prints_the_summary_and_leaves_rays_lines_in_out_logs(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-c", CLI, "--quiet", "demo", str(out), *SMALL], capture_output=True,
                          text=True, timeout=880)
    assert done.returncode == 0, done.stderr
    assert not RAY_PYTHON_LINE.search(done.stderr) and not NATIVE_LINE.search(done.stderr), done.stderr
    assert "Warning" not in done.stderr and "deprecated" not in done.stderr, done.stderr
    assert done.stderr == ""  # nothing else either: no progress (INFO), no bars
    assert re.search(r"^samples +\d+ of \d+$", done.stdout, re.MULTILINE) and "\nnext:\n" in done.stdout

    logs = out / "distilled" / "logs"
    ray_log = (logs / "ray.log").read_text()
    assert "Execution plan of Dataset" in ray_log  # Ray Data's INFO lines, once on the console
    assert "deprecated" not in ray_log  # e.g. map_batches' `concurrency` (Ray 2.51), logged by Ray Data
    assert (logs / "ray-native.log").is_file()  # the driver's C++ core worker's lines
