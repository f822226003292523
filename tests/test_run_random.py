"""The data plane end to end on real Ray, real tars and real Parquet: the `random` selector."""

from __future__ import annotations

import math
import shutil
from functools import partial

import pyarrow.parquet as pq
import pytest
import webdataset as wds
import wids

from optidel.manifests.verify import verify
from optidel.pipeline import config as config_mod
from optidel.pipeline.runner import RunError, run

from hostile import write_hostile_corpus


def _random(**sets):
    return config_mod.load(overrides={"selector": "random", **sets})


def _tree_bytes(out):
    """Every output file but run.json (which holds timings), by relative path."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "run.json"
    }


def test_kvasir_random_keep_5_percent(tmp_path, kvasir, ray_local):
    out = tmp_path / "out"
    info = run([str(kvasir / "images")], str(out), _random(keep=0.05))

    assert info["counts"]["samples"] == 50
    sources = pq.read_table(out / "manifests" / "sources")
    assert sources.num_rows == 1000
    assert set(sources.column("status").to_pylist()) == {"ok"}

    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    read_back = list(wds.WebDataset(shards, shardshuffle=False).decode("pil"))
    assert len(read_back) == 50
    samples = pq.read_table(out / "manifests" / "samples").to_pylist()
    by_key = {s["sample_key"]: s for s in samples}
    for sample in read_back:
        assert sample["jpg"].size == (224, 224)
        lineage = sample["json"]
        assert lineage["sample_key"] == sample["__key__"]
        assert lineage["source_ids"] == by_key[sample["__key__"]]["source_ids"]

    # wids' default decoder, given as the function: its string shortcut ("PIL") is deprecated.
    indexed = wids.ShardListDataset(str(out / "index.json"), transformations=partial(wids.wids.default_decoder, format="PIL"))
    assert len(indexed) == 50
    assert {indexed[i][".json"]["sample_key"] for i in range(len(indexed))} == set(by_key)

    assert ray_local.data.read_webdataset(str(out / "shards"), file_extensions=["tar"]).count() == 50
    assert verify(str(out)).ok


@pytest.fixture()
def subset(kvasir, tmp_path):
    """A list file naming 60 kvasir images, in place."""
    names = sorted(p.name for p in (kvasir / "images").glob("*.jpg"))[:60]
    listing = tmp_path / "subset.txt"
    listing.write_text("".join(f"{kvasir / 'images' / n}\n" for n in names))
    return listing


def test_same_seed_byte_identical_other_seed_differs(tmp_path, subset, ray_local):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run([str(subset)], str(tmp_path / name), _random(keep=0.2, seed=seed))
        runs[name] = _tree_bytes(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert any(p.endswith(".tar") for p in runs["a"])

    def chosen(name):
        table = pq.read_table(tmp_path / name / "manifests" / "samples")
        return {s for ids in table.column("source_ids").to_pylist() for s in ids}

    assert chosen("a") != chosen("c")


def test_bad_inputs_are_recorded_not_fatal(tmp_path, kvasir, ray_local):
    pool = tmp_path / "pool"
    expected = write_hostile_corpus(pool / "hostile")
    good = sorted((kvasir / "images").glob("*.jpg"))[:10]
    for p in good:
        shutil.copy(p, pool / p.name)
    shutil.copy(good[0], pool / "zz-copy-of-first.jpg")  # an exact duplicate

    out = tmp_path / "out"
    info = run([str(pool)], str(out), _random(keep=0.5))

    sources = pq.read_table(out / "manifests" / "sources").to_pylist()
    by_name = {s["uri"].rsplit("/", 1)[-1]: s for s in sources}
    for name, status in expected.items():
        row = by_name[name]
        assert row["status"] == status, (name, row)
        assert (row["error"] is None) == (status == "ok"), (name, row)
    dup = by_name["zz-copy-of-first.jpg"]
    assert dup["status"] == "duplicate"
    assert dup["duplicate_of"] == by_name[good[0].name]["source_id"]

    n_ok = sum(s["status"] == "ok" for s in sources)
    assert info["counts"]["samples"] == math.ceil(0.5 * n_ok)
    ok_ids = {s["source_id"] for s in sources if s["status"] == "ok"}
    used = pq.read_table(out / "manifests" / "samples").column("source_ids").to_pylist()
    assert {s for ids in used for s in ids} <= ok_ids
    assert verify(str(out)).ok


def test_a_run_over_many_parts_has_the_bytes_of_a_run_in_one(tmp_path, kvasir, ray_local):
    """One implementation at every scale: duplicates, selection and manifests by Ray tasks over
    several parts write what a pool held in one part writes, on a pool with bad inputs and a
    byte-identical copy."""
    pool = tmp_path / "pool"
    write_hostile_corpus(pool / "hostile")
    good = sorted((kvasir / "images").glob("*.jpg"))[:12]
    for p in good:
        shutil.copy(p, pool / p.name)
    shutil.copy(good[3], pool / "zz-copy.jpg")
    runs, counts = {}, {}
    for parts, size in (("many", 4), ("one", 1000)):
        config = config_mod.load(overrides={"selector": "random", "keep": 0.5, "ingest.partition_size": size})
        counts[parts] = run([str(pool)], str(tmp_path / parts), config)["counts"]
        runs[parts] = _tree_bytes(tmp_path / parts)
    assert sum(p.startswith("work/pass1/") for p in runs["many"]) >= 4
    assert sum(p.startswith("work/pass1/") for p in runs["one"]) == 1
    written = {name: {p: b for p, b in files.items() if not p.startswith("work/")} for name, files in runs.items()}
    assert written["many"] == written["one"] and any(p.startswith("shards/") for p in written["one"])
    assert counts["many"] == counts["one"] and counts["many"]["by_status"]["duplicate"] == 1


def test_non_empty_output_refused_before_any_work(tmp_path, subset):
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "precious.txt"
    keep.write_text("mine")
    with pytest.raises(RunError, match="not empty"):
        run([str(subset)], str(out), _random())
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert keep.read_text() == "mine"


def test_unwritable_output_refused(tmp_path, subset):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="a-file"):
        run([str(subset)], str(blocker / "out"), _random())
