"""The driver of a run with a self-trained proxy and the weight-free proposer never imports torch:
the proxy trains in a Ray task and scores in Score actors, so the driver, on a cluster's head
node, would pay seconds of start-up and most of its memory for nothing. Checked on a whole
`optidel run`, in a fresh interpreter with its own local Ray."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow


def test_a_self_trained_run_leaves_torch_out_of_the_driver(kvasir, tmp_path):
    images = sorted(str(p) for p in (kvasir / "images").glob("*.jpg"))[:12]
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import json, sys
        from optidel.pipeline import cli
        code = cli.main(["run", *{images!r}, "-o", {str(out)!r}, "--proposer", "regions", "--keep", "0.5",
                         "--set", "score.mae.train_steps=20", "--set", "score.mae.train_patches=128",
                         "--set", "score.masks_per_patch=2", "--set", "select.clusters=4", "--set", "output.size=64"])
        heavy = sorted(m for m in ("torch", "torchvision", "timm", "segment_anything") if m in sys.modules)
        print(json.dumps({{"code": code, "heavy": heavy}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    run = json.loads((out / "run.json").read_text())
    assert result["code"] == 0 and run["counts"]["samples"] > 0  # the whole run, proxy and scores, happened
    assert run["models"]["proxy"]["spec"]["image_size"] == 64  # recorded without the driver reading the checkpoint
    assert result["heavy"] == []
