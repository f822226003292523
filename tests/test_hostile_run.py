"""Whole `optidel run`s over a hostile pool: every bad source is recorded with a reason, none
crashes the run, outputs come only from ok sources, and nothing is written outside OUT.

The pool mixes every kind in tests/hostile.py (a directory of hostile files, a tar with
`../` and absolute member names and a truncated last member), a list file naming missing
paths, and a few real kvasir images in place. It goes through the default optidel selector
(FAST settings, self-trained proxy) and the random selector. Pickled-code checkpoints are
refused by the real command line before any work."""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from optidel.manifests import schema
from optidel.manifests.verify import verify
from optidel.pipeline import config as config_mod
from optidel.pipeline.inputs import list_sources
from optidel.pipeline.runner import run

from hostile import write_hostile_corpus, write_hostile_tar
from test_run_optidel import FAST

# End to end: every test here runs `optidel run` (in this process or a child).
pytestmark = pytest.mark.slow

KVASIR_IN_POOL = 12
MISSING = ("gone/never-written.jpg", "/nonexistent-optidel-dir/absent.png")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pool(kvasir, tmp_path_factory):
    """(inputs, {(uri, member): expected status}, pool dir, snapshot of the pool's bytes)."""
    root = tmp_path_factory.mktemp("hostile-run") / "pool"
    files = write_hostile_corpus(root / "files")
    members = write_hostile_tar(root / "shard.tar")
    good = sorted((kvasir / "images").glob("*.jpg"))[:KVASIR_IN_POOL]
    (root / "list.txt").write_text("".join(f"{line}\n" for line in (*MISSING, *map(str, good))))

    expected = {(str(root / "files" / name), ""): status for name, status in files.items()}
    expected.update({(str(root / "shard.tar"), member): status for member, status in members.items()})
    expected[(str(root / MISSING[0]), "")] = schema.MISSING
    expected[(MISSING[1], "")] = schema.MISSING
    expected.update({(str(p), ""): schema.OK for p in good})
    inputs = [str(root / "files"), str(root / "shard.tar"), str(root / "list.txt")]
    return inputs, expected, root, _snapshot(root)


@pytest.fixture(scope="module")
def runs(pool, tmp_path_factory, ray_local):
    """Both selectors over the same hostile pool: {selector: (OUT, run.json)}."""
    inputs, _, _, _ = pool
    tmp = tmp_path_factory.mktemp("hostile-out")
    configs = {
        "optidel": config_mod.load(overrides={"keep": 0.25}, sets=FAST),
        "random": config_mod.load(overrides={"selector": "random", "keep": 0.5}),
    }
    return {name: (tmp / name, run(inputs, str(tmp / name), config)) for name, config in configs.items()}


@pytest.mark.parametrize("selector", ["optidel", "random"])
def test_one_status_and_reason_per_source(pool, runs, selector):
    inputs, expected, _, _ = pool
    out, info = runs[selector]
    assert info["status"] == "complete"
    rows = pq.read_table(out / "manifests" / "sources").to_pylist()
    assert len(rows) == len(list_sources(inputs)) == len(expected)
    got = {(r["uri"], r["member"] or ""): r for r in rows}
    assert len(got) == len(rows)  # one row per listed source
    assert {key: r["status"] for key, r in got.items()} == expected
    for key, row in got.items():
        assert (row["status"] == schema.OK) == (row["error"] is None), (key, row)
    assert sum(info["counts"]["by_status"].values()) == len(rows)


def test_hostile_kinds_are_recorded_faithfully(runs):
    out, _ = runs["optidel"]
    rows = pq.read_table(out / "manifests" / "sources").to_pylist()
    by_name = {r["uri"].rsplit("/", 1)[-1]: r for r in rows if not r["member"]}
    by_member = {r["member"]: r for r in rows if r["member"]}

    assert "30000x30000" in by_name["bomb_30000x30000.png"]["error"]
    assert (by_name["bomb_12000x10000.png"]["width"], by_name["bomb_12000x10000.png"]["height"]) == (12000, 10000)
    assert by_name["empty.jpg"]["error"] == "empty file"
    # Stored 64x40 with EXIF orientation 6: recorded as displayed, 40 wide and 64 high.
    assert (by_name["exif_rotated.jpg"]["width"], by_name["exif_rotated.jpg"]["height"]) == (40, 64)
    # Animated files: first frame used, the frame count recorded in the mode.
    for name in ("animated.gif", "animated.webp"):
        assert by_name[name]["mode"].endswith(";frames=3"), by_name[name]
    assert (by_name["strip_20000x200.png"]["width"], by_name["strip_20000x200.png"]["height"]) == (20000, 200)
    assert "min_side" in by_name["tiny_1x1.png"]["error"]
    assert "no such file" in by_name["never-written.jpg"]["error"]
    assert by_member["last-truncated.png"]["status"] == schema.CORRUPT
    assert by_member["../evil.jpg"]["status"] == by_member["/abs.jpg"]["status"] == schema.OK


@pytest.mark.parametrize("selector", ["optidel", "random"])
def test_outputs_come_only_from_ok_sources(runs, selector):
    out, info = runs[selector]
    sources = pq.read_table(out / "manifests" / "sources").to_pylist()
    ok_ids = {s["source_id"] for s in sources if s["status"] == schema.OK}
    n_ok = len(ok_ids)
    assert info["counts"]["samples"] == math.ceil((0.25 if selector == "optidel" else 0.5) * n_ok)
    samples = pq.read_table(out / "manifests" / "samples").to_pylist()
    used = {sid for s in samples for sid in s["source_ids"]}
    assert used and used <= ok_ids
    patches = pq.read_table(out / "manifests" / "patches").to_pylist()
    assert {p["source_id"] for p in patches} <= ok_ids
    if selector == "optidel":
        assert len(patches) > n_ok  # regions were proposed, not only whole images
    report = verify(str(out))
    assert report.ok, report.problems


def test_nothing_written_outside_out(pool, runs):
    _, _, root, before = pool
    assert _snapshot(root) == before  # the pool is read, never written
    for out, _ in runs.values():
        for path in out.rglob("*"):
            assert not path.is_symlink() and path.resolve().is_relative_to(out.resolve())
        names = {p.name for p in out.rglob("*")}
        assert not names & {"evil.jpg", "abs.jpg"}
        top = {p.name for p in out.iterdir()}
        assert top <= {"shards", "index.json", "manifests", "run.json", "work"}
    assert not (root.parent / "evil.jpg").exists() and not (root / "evil.jpg").exists()
    assert not Path("/abs.jpg").exists()


class _TouchOnLoad:
    """Unpickling this would create `marker`: proof that code in a checkpoint ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "optidel.pipeline.cli", "--quiet", "run", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )


@pytest.mark.parametrize("kind", ["sam", "proxy"])
def test_pickled_code_checkpoint_refused_by_the_cli(pool, tmp_path, kind):
    inputs, _, _, _ = pool
    marker = tmp_path / "code-ran"
    evil = tmp_path / f"evil-{kind}.pt"
    if kind == "sam":
        torch.save({"image_encoder.pos_embed": _TouchOnLoad(marker)}, evil)
        flags = ["--proposer", "sam", "--sam-model", "vit_tiny", "--sam-checkpoint", str(evil)]
    else:
        torch.save({"model": {"pos_embed": torch.zeros(1)}, "hook": _TouchOnLoad(marker)}, evil)
        flags = ["--proxy", str(evil)]
    out = tmp_path / "out"
    result = _cli(*inputs, "-o", str(out), *flags)
    assert result.returncode == 2, result.stderr
    assert f"{evil}: refused" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not out.exists()  # refused before OUT was touched
