"""`optidel verify`: a fresh output passes; each kind of damage is caught and named."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.compute as pc
import pytest

from optidel.manifests import layout
from optidel.manifests.verify import verify
from output_fixtures import build_output

SHARD0, SHARD1 = "shard-000000.tar", "shard-000001.tar"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, kvasir):
    return build_output(tmp_path_factory.mktemp("pristine") / "out", kvasir, n_samples=5, max_count=3)


@pytest.fixture
def fx(pristine, tmp_path):
    """A fresh copy of the fixture output, free to damage."""
    out = tmp_path / "out"
    shutil.copytree(pristine.out, out)
    return out, pristine.samples


def _rewrite_tar(path: Path, edit) -> None:
    """Rebuild a shard from edit([(name, data), ...]) with the same header conventions."""
    with tarfile.open(path) as tar:
        members = [(i.name, tar.extractfile(i).read()) for i in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in edit(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))


def _problems_mentioning(report, *words: str) -> list[str]:
    return [p for p in report.problems if all(w in p for w in words)]


def test_fresh_output_passes(fx):
    out, samples = fx
    report = verify(str(out))
    assert report.ok, report.problems
    assert report.summary == f"verify OK: {len(samples)} samples in 2 shard(s), manifests and shards agree"


def test_flipped_byte_in_image_member(fx):
    out, samples = fx
    path = out / "shards" / SHARD0
    image = samples[1]["members"][0]
    with tarfile.open(path) as tar:
        offset = tar.getmember(image).offset_data
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    report = verify(str(out))
    assert not report.ok
    assert report.summary == f"verify FAILED: {len(report.problems)} problem(s)"
    assert _problems_mentioning(report, SHARD0, image, "sha256")
    assert _problems_mentioning(report, SHARD0, "shards.parquet")  # the file's own sha256
    assert not _problems_mentioning(report, SHARD1)


def test_deleted_member(fx):
    out, samples = fx
    gone = samples[0]["members"][1]
    _rewrite_tar(out / "shards" / SHARD0, lambda ms: [m for m in ms if m[0] != gone])
    report = verify(str(out))
    assert _problems_mentioning(report, SHARD0, gone, "missing")


def test_extra_member(fx):
    out, samples = fx
    key = samples[4]["sample_key"]  # second shard, index 1

    def add(ms):
        i = [n for n, _ in ms].index(f"{key}.json")
        return ms[: i + 1] + [(f"{key}.txt", b"hello")] + ms[i + 1 :]

    _rewrite_tar(out / "shards" / SHARD1, add)
    report = verify(str(out))
    assert _problems_mentioning(report, SHARD1, f"{key}.txt", "not listed")


def test_members_not_adjacent(fx):
    out, samples = fx
    first = samples[0]["members"][1]  # move sample 0's json after sample 1's members

    def move(ms):
        rest = [m for m in ms if m[0] != first]
        return rest[:3] + [m for m in ms if m[0] == first] + rest[3:]

    _rewrite_tar(out / "shards" / SHARD0, move)
    report = verify(str(out))
    assert _problems_mentioning(report, SHARD0, first, "not adjacent")


def test_json_naming_other_patches(fx):
    out, samples = fx
    name = samples[2]["members"][1]

    def edit(ms):
        return [(n, json.dumps({**json.loads(d), "patch_ids": ["other"]}).encode() if n == name else d) for n, d in ms]

    _rewrite_tar(out / "shards" / SHARD0, edit)
    report = verify(str(out))
    assert _problems_mentioning(report, SHARD0, name, "patch_ids")


def test_missing_shard(fx):
    out, _ = fx
    (out / "shards" / SHARD1).unlink()
    report = verify(str(out))
    assert _problems_mentioning(report, SHARD1, "missing")
    assert not _problems_mentioning(report, SHARD0)


def test_extra_shard(fx):
    out, _ = fx
    shutil.copy(out / "shards" / SHARD0, out / "shards" / "shard-000009.tar")
    report = verify(str(out))
    assert _problems_mentioning(report, "shard-000009.tar", "extra shard")


def test_samples_row_missing(fx):
    out, samples = fx
    output = layout.Output(str(out))
    table = output.read_manifest("samples")
    dropped = samples[3]  # first sample of the second shard
    keep = pc.not_equal(table["sample_key"], dropped["sample_key"])
    output.write_manifest("samples", table.filter(keep))
    report = verify(str(out))
    assert _problems_mentioning(report, dropped["shard"], dropped["sample_key"], "not in samples.parquet")
    assert _problems_mentioning(report, dropped["shard"], "samples.parquet lists 1")


def test_index_disagreeing_with_shards_manifest(fx):
    out, _ = fx
    index_path = out / "index.json"
    index = json.loads(index_path.read_text())
    index["shardlist"][1]["nsamples"] += 1
    index_path.write_text(json.dumps(index))
    report = verify(str(out))
    assert _problems_mentioning(report, "index.json", SHARD1, "nsamples")


def test_stray_file_among_the_shards(fx):
    """OUT/shards/ holds only shards: readers of the whole folder would take anything else for one."""
    out, _ = fx
    (out / "shards" / "index.json").write_text("{}")
    report = verify(str(out))
    assert _problems_mentioning(report, "shards/index.json", "not a shard")


def test_index_url_outside_the_shards_folder(fx):
    out, _ = fx
    index = json.loads((out / "index.json").read_text())
    index["shardlist"][0]["url"] = SHARD0  # as the old layout had it, beside the index
    (out / "index.json").write_text(json.dumps(index))
    report = verify(str(out))
    assert _problems_mentioning(report, "index.json", SHARD0, "not shards/NAME")


def test_leftover_temporary_file(fx):
    out, _ = fx
    (out / "shards" / f"{SHARD1}.tmp").write_bytes(b"partial")
    report = verify(str(out))
    assert _problems_mentioning(report, f"{SHARD1}.tmp", "leftover")


def test_output_of_the_older_flat_layout_is_named(tmp_path):
    """An OUT written before manifests got a folder per table says so, instead of 'not an output'."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "samples.parquet").write_bytes(b"PAR1")
    with pytest.raises(layout.NotAnOutputError, match="older optidel .*--overwrite"):
        layout.require_output(str(tmp_path))
