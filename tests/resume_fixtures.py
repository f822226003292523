"""What the crash and fault tests share: a small kvasir pool, fast settings cut into several
partitions, and one uninterrupted reference run that every recovered run must equal byte for
byte (every file but run.json)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from optidel.manifests.verify import verify
from optidel.pipeline import config as config_mod
from optidel.pipeline.runner import run

IMAGES = 12
# tests/test_run_optidel.py's FAST, a smaller proxy, and partitions of 3 sources. The proxy's
# sample of sources (twice the 96 crops' worth, at 17 rows a source) is the whole pool: an
# uninterrupted run scores the sample's proposals, a rerun with a reused proxy proposes again.
SETS = [
    "score.mae.train_steps=20",
    "score.mae.train_patches=96",
    "score.masks_per_patch=2",
    "select.clusters=4",
    "output.size=128",
    "output.format=png",
    "ingest.partition_size=3",
    "keep=0.5",
    "output.shard_max_count=2",
]
# Killed runs: small model batches, so partitions finish one after another, not all at once.
# A Ray setting, so not part of the job: the rerun and the reference use the default.
SMALL_BATCHES = ["ray.model_batch_size=2"]

_references: dict[str, tuple[Path, Path, dict]] = {}


def config(*extra: str):
    return config_mod.load(sets=[*SETS, *extra])


def pool(kvasir: Path, tmp: Path) -> Path:
    """A list file naming a seeded sample of IMAGES kvasir images, read in place."""
    names = sorted(p.name for p in (kvasir / "images").glob("*.jpg"))
    pick = sorted(np.random.default_rng(11).choice(len(names), IMAGES, replace=False))
    listing = tmp / "pool.txt"
    listing.write_text("".join(f"{kvasir / 'images' / names[i]}\n" for i in pick))
    return listing


def reference(kvasir: Path, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(pool, OUT, run.json) of the uninterrupted run, made once per test session."""
    if "run" not in _references:
        tmp = tmp_path_factory.mktemp("reference")
        listing = pool(kvasir, tmp)
        info = run([str(listing)], str(tmp / "out"), config())
        _references["run"] = (listing, tmp / "out", info)
    return _references["run"]


def trained(reference_out: Path, out: Path) -> None:
    """Start OUT where a run of the reference's job killed right after training its proxy
    would leave it: the job record and the proxy, nothing of pass 1."""
    (out / "work").mkdir(parents=True)
    for name in ("job.json", "proxy.pt", "proxy.json"):
        shutil.copy(reference_out / "work" / name, out / "work" / name)


def tree(out: Path) -> dict[str, bytes]:
    """Every file under OUT but run.json (which holds timings) and logs/ (Ray's log lines, there
    when the run started Ray itself: a child process, not this one's Ray), by relative path."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "run.json" and p.relative_to(out).parts[0] != "logs"
    }


def assert_same_as_reference(out: Path, reference_out: Path) -> None:
    got, want = tree(out), tree(reference_out)
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []
    keys = pq.read_table(out / "manifests" / "samples").column("sample_key").to_pylist()
    assert keys and len(keys) == len(set(keys))
    report = verify(str(out))
    assert report.ok, report.problems
