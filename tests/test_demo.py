"""`optidel demo OUT`: a second call on the same OUT resumes or reports the demo complete,
keeping every file the first wrote; it ends with the next three commands."""

from __future__ import annotations

import re
import shlex

import pytest

from optidel.manifests.lineage import lineage
from optidel.pipeline import cli

# A small demo: 2 frames of each photo, a briefly trained proxy.
SMALL = ["--frames", "2", "--keep", "0.2", "--set", "score.mae.train_steps=10", "--set", "score.mae.train_patches=128",
         "--set", "score.masks_per_patch=2", "--set", "select.clusters=4", "--set", "output.size=64"]


def _files(root):
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.slow
def test_second_demo_keeps_the_first_and_prints_the_next_commands(tmp_path, ray_local, capsys, caplog):
    out = tmp_path / "demo"
    assert cli.main(["demo", str(out), *SMALL]) == 0
    first = capsys.readouterr().out
    before = _files(out)
    assert any(name.startswith("distilled/shards/") for name in before)
    assert "proxy: step 10/10, loss" in caplog.text  # the training's progress, on optidel's log
    # and the Ray stages' progress in sources, patches and samples: 7 photos x 2 frames
    assert re.search(r"pass 1: 14/14 sources, \d+ patches, ", caplog.text)
    assert re.search(r"pass 2: (\d+)/\1 samples, ", caplog.text)

    caplog.clear()
    assert cli.main(["demo", str(out), *SMALL]) == 0
    second = capsys.readouterr().out
    assert _files(out) == before  # same bytes, not even rewritten
    assert "complete: nothing to do" in caplog.text and "proxy: step" not in caplog.text
    assert sorted(second.splitlines()) == sorted(first.splitlines())  # run.json keeps timings sorted

    distilled = str(out / "distilled")
    steps = second[second.index("next:"):].splitlines()[1:]
    verify, inspect, report = (shlex.split(line) for line in steps)
    assert verify == ["optidel", "verify", distilled] and report == ["optidel", "report", distilled]
    assert inspect[:3] == ["optidel", "inspect", distilled]
    assert lineage(distilled, inspect[3])["sample"]["sample_key"] == inspect[3]  # a real sample


@pytest.mark.slow
def test_demo_overwrite_replaces_an_earlier_demo(tmp_path, ray_local, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", str(out), *SMALL]) == 0
    (out / "pool" / "stray.jpg").write_bytes(b"not a frame")  # would change the pool's listing
    assert cli.main(["demo", str(out), *SMALL]) == 2  # a different job: refused, nothing lost
    assert (out / "pool" / "stray.jpg").exists()
    assert cli.main(["demo", str(out), *SMALL, "--overwrite"]) == 0
    assert not (out / "pool" / "stray.jpg").exists() and (out / "distilled" / "run.json").exists()
    capsys.readouterr()
