"""The shard writer: reproducible bytes, adjacent members, rollover, no empty shards, and tars
that the webdataset and wids readers both read back."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import wids

import optidel
from optidel.manifests import layout
from optidel.stages import write
from output_fixtures import build_output


def _samples(n: int, size: int = 700) -> list[tuple[str, list[tuple[str, bytes]]]]:
    rng = np.random.default_rng(7)
    samples = []
    for i in range(n):
        key = f"s{i:03d}"
        meta = write.sample_json({"sample_key": key, "patch_ids": [str(i)]})
        samples.append((key, [("jpg", rng.bytes(size + 37 * i)), ("json", meta)]))
    return samples


def _write(out: Path, samples, max_count: int = 1000, max_bytes: int = 1 << 30):
    writer = write.ShardWriter(layout.Output(str(out)), max_count, max_bytes)
    locations = [writer.write(key, members) for key, members in samples]
    return locations, writer.close()


def _tars(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("*.tar"))


def test_two_runs_give_byte_identical_outputs(tmp_path, kvasir):
    build_output(tmp_path / "a", kvasir, n_samples=3, max_count=2)
    build_output(tmp_path / "b", kvasir, n_samples=3, max_count=2)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    assert len([f for f in files_a if f.suffix == ".tar"]) == 2
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_members_adjacent_named_and_headers_fixed(tmp_path):
    samples = _samples(4)
    locations, records = _write(tmp_path, samples)
    with tarfile.open(_tars(tmp_path)[0]) as tar:
        infos = tar.getmembers()
        payload = {i.name: tar.extractfile(i).read() for i in infos}
    assert [i.name for i in infos] == [f"{key}.{ext}" for key, members in samples for ext, _ in members]
    for key, members in samples:
        for ext, data in members:
            assert payload[f"{key}.{ext}"] == data
    for info in infos:
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o644)
        assert info.isreg()
        assert not info.pax_headers
    assert [loc.index_in_shard for loc in locations] == [0, 1, 2, 3]
    assert locations[2].members == ["s002.jpg", "s002.json"]
    data = _tars(tmp_path)[0].read_bytes()
    assert records == [write.ShardRecord("shard-000000.tar", 4, len(data), hashlib.sha256(data).hexdigest())]
    assert not list((tmp_path / "shards").glob("*.tmp"))


def test_rollover_by_count_leaves_no_empty_shard(tmp_path):
    locations, records = _write(tmp_path, _samples(6), max_count=3)
    assert [r.nsamples for r in records] == [3, 3]  # exactly full: no third, empty shard
    assert [p.name for p in _tars(tmp_path)] == ["shard-000000.tar", "shard-000001.tar"]
    where = [(loc.shard, loc.index_in_shard) for loc in locations]
    assert where[2:4] == [("shard-000000.tar", 2), ("shard-000001.tar", 0)]
    index = json.loads((tmp_path / "index.json").read_text())
    assert [(e["url"], e["nsamples"]) for e in index["shardlist"]] == [("shards/shard-000000.tar", 3), ("shards/shard-000001.tar", 3)]


def test_rollover_by_bytes_and_oversized_sample(tmp_path):
    samples = _samples(5, size=1537)
    # One sample occupies 512 + ceil(data/512)*512 per member; allow two small ones per shard.
    budget = 2 * (512 + 4 * 512 + 512 + 512) + 1024 + 511
    big = ("huge", [("jpg", b"x" * (3 * budget)), ("json", b"{}")])
    locations, records = _write(tmp_path, samples[:3] + [big] + samples[3:], max_bytes=budget)
    assert [r.nsamples for r in records] == [2, 1, 1, 2]
    assert locations[3].shard == "shard-000002.tar" and locations[3].index_in_shard == 0
    sizes = {p.name: p.stat().st_size for p in _tars(tmp_path)}
    assert [sizes[r.shard] for r in records] == [r.bytes for r in records]
    assert all(size <= budget for name, size in sizes.items() if name != "shard-000002.tar")
    assert sizes["shard-000002.tar"] > budget


def test_empty_run_writes_no_tar(tmp_path):
    records = write.ShardWriter(layout.Output(str(tmp_path)), 10, 1 << 20).close()
    assert records == []
    assert _tars(tmp_path) == []
    index = json.loads((tmp_path / "index.json").read_text())
    assert index == {"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": []}
    assert write.shards_table(records).num_rows == 0


@pytest.mark.parametrize("key", ["a.b", "", "dir/x", "x" * 100])
def test_bad_keys_rejected(tmp_path, key):
    writer = write.ShardWriter(layout.Output(str(tmp_path)), 10, 1 << 20)
    with pytest.raises(ValueError, match="sample key|longer than"):
        writer.write(key, [("jpg", b"1")])


def test_error_inside_block_removes_partial_shard(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with write.ShardWriter(layout.Output(str(tmp_path)), 2, 1 << 20) as writer:
            for key, members in _samples(3):
                writer.write(key, members)
            raise RuntimeError("boom")
    assert [p.name for p in _tars(tmp_path)] == ["shard-000000.tar"]  # the finished one stays
    assert not list((tmp_path / "shards").glob("*.tmp"))
    assert not (tmp_path / "index.json").exists()


def test_webdataset_and_wids_read_every_sample(tmp_path, kvasir):
    fixture = build_output(tmp_path / "out", kvasir, n_samples=5, max_count=2)
    # Move the whole directory: index urls are relative, so it must still resolve.
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "out", moved)
    expected = {r["sample_key"]: r for r in fixture.samples}

    urls = optidel.shards(str(moved))  # from the index, whose urls are relative
    assert urls == [str(p) for p in _tars(moved)]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        assert meta["sample_key"] == sample["__key__"]
        assert hashlib.sha256(sample["jpg"]).hexdigest() == expected[sample["__key__"]]["image_sha256"]
        seen[sample["__key__"]] = meta["patch_ids"]
    assert seen == {k: r["patch_ids"] for k, r in expected.items()}

    dataset = wids.ShardListDataset(
        str(moved / "index.json"), cache_dir=str(tmp_path / "wids-cache"), transformations=[]
    )
    assert len(dataset) == len(fixture.samples)
    for i, row in enumerate(fixture.samples):  # samples were written in this order
        sample = dataset[i]
        assert sample["__key__"] == row["sample_key"]
        assert json.loads(sample[".json"].read())["patch_ids"] == row["patch_ids"]
        assert hashlib.sha256(sample[".jpg"].read()).hexdigest() == row["image_sha256"]
    dataset.close()
