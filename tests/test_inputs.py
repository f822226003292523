"""pipeline.inputs: INPUT arguments -> SourceRefs, in a deterministic order."""

from __future__ import annotations

import io
import tarfile
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from optidel import imageio
from optidel.pipeline.config import IngestConfig
from optidel.pipeline.inputs import InputError, SourceRef, list_sources
from optidel.stages import columns as C
from optidel.stages.ingest import Ingest

import hostile
from test_ingest import listing_batch


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def plain(path) -> SourceRef:
    return SourceRef(str(path), "", -1, -1)


def test_directory_is_recursive_sorted_and_filtered(tmp_path):
    for name in ["b/z.png", "a.JPG", "b/a/y.webp", "c.jpeg", "notes.txt", "b/meta.json", "d.tif", "e.Gif"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    refs = list_sources([str(tmp_path)])
    expected = ["a.JPG", "b/a/y.webp", "b/z.png", "c.jpeg", "d.tif", "e.Gif"]
    assert refs == [plain(tmp_path / name) for name in expected]


def test_relative_input_becomes_absolute(tmp_path, monkeypatch):
    (tmp_path / "img.png").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert list_sources(["img.png"]) == [plain(tmp_path / "img.png")]
    assert list_sources([(tmp_path / "img.png").as_uri()]) == [plain(tmp_path / "img.png")]


def test_tar_members_read_back_by_offset(tmp_path):
    members = {"s0.jpg": b"first-image", "s0.json": b"{}", "dir/s1.PNG": b"second" * 100, "s2.webp": b""}
    write_tar(tmp_path / "shard.tar", members)
    refs = list_sources([str(tmp_path / "shard.tar")])
    assert [r.member for r in refs] == ["s0.jpg", "dir/s1.PNG", "s2.webp"]  # archive order, images only
    for ref in refs:
        assert ref.uri == str(tmp_path / "shard.tar")
        assert ref.length == len(members[ref.member])
        assert imageio.read_bytes(ref.uri, ref.offset, ref.length) == members[ref.member]


def test_hostile_tar_names_kept_and_truncation_tolerated(tmp_path):
    expected = hostile.write_hostile_tar(tmp_path / "hostile.tar")
    refs = list_sources([str(tmp_path / "hostile.tar")])
    assert [r.member for r in refs] == list(expected)
    assert {"../evil.jpg", "/abs.jpg"} <= {r.member for r in refs}
    last = refs[-1]
    data = imageio.read_bytes(last.uri, last.offset, last.length)
    assert 0 < len(data) < last.length  # the cut member reads short ...
    assert imageio.decode(data, max_pixels=10**6, min_side=1).status == "corrupt"  # ... and is corrupt
    assert not (tmp_path.parent / "evil.jpg").exists()  # nothing extracted


def test_directory_lists_tars_in_place(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    write_tar(tmp_path / "b.tar", {"m1.jpg": b"1", "m2.jpg": b"2"})
    (tmp_path / "c.png").write_bytes(b"x")
    refs = list_sources([str(tmp_path)])
    assert [(r.uri.rsplit("/", 1)[1], r.member) for r in refs] == [
        ("a.png", ""), ("b.tar", "m1.jpg"), ("b.tar", "m2.jpg"), ("c.png", "")
    ]


def test_not_a_tar_is_an_input_error(tmp_path):
    (tmp_path / "fake.tar").write_bytes(b"<html>not a tar</html>" * 40)
    with pytest.raises(InputError, match="fake.tar.*not an uncompressed tar"):
        list_sources([str(tmp_path / "fake.tar")])
    (tmp_path / "pool.tar.gz").write_bytes(b"gz")
    with pytest.raises(InputError, match="pool.tar.gz.*compressed"):
        list_sources([str(tmp_path / "pool.tar.gz")])


def test_a_stray_non_tar_in_a_directory_or_list_is_one_bad_source(tmp_path):
    Image.new("RGB", (80, 60), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "fake.tar").write_bytes(b"<html>not a tar</html>" * 40)
    (tmp_path / "pool.txt").write_text("a.png\nfake.tar\n")
    for source in (tmp_path, tmp_path / "pool.txt"):
        refs = list_sources([str(source)])
        assert [(r.uri.rsplit("/", 1)[1], r.member) for r in refs] == [("a.png", ""), ("fake.tar", "")]
        out = Ingest(IngestConfig())(listing_batch(refs))
        assert out[C.STATUS].tolist() == ["ok", "corrupt"]
        assert out["error"][1]


def test_brace_pattern_expands_in_order(tmp_path):
    for i in (2, 0, 1):
        write_tar(tmp_path / f"pool-{i:03d}.tar", {f"k{i}.jpg": bytes([i])})
    refs = list_sources([str(tmp_path / "pool-{000..002}.tar")])
    assert [r.member for r in refs] == ["k0.jpg", "k1.jpg", "k2.jpg"]
    with pytest.raises(InputError, match=r"pool-003\.tar, which does not exist"):
        list_sources([str(tmp_path / "pool-{000..003}.tar")])


def test_list_files_resolve_relative_paths(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.png"):
        (images / name).write_bytes(b"x")
    write_tar(images / "c.tar", {"m.jpg": b"m"})
    lists = tmp_path / "lists"
    lists.mkdir()
    absolute = str(images / "b.png")
    expected = [plain(images / "a.jpg"), plain(absolute), SourceRef(str(images / "c.tar"), "m.jpg", 512, 1)]

    (lists / "pool.txt").write_text(f"# a comment\n../images/a.jpg\n\n  {absolute}  \n../images/c.tar\n")
    assert list_sources([str(lists / "pool.txt")]) == expected

    (lists / "pool.csv").write_text(f"label,path\n1,../images/a.jpg\n2,{absolute}\n3,../images/c.tar\n")
    assert list_sources([str(lists / "pool.csv")]) == expected

    (lists / "first.csv").write_text(f"file\n../images/a.jpg\n{absolute}\n../images/c.tar\n")
    assert list_sources([str(lists / "first.csv")]) == expected

    entries = ["../images/a.jpg", absolute, "../images/c.tar"]
    pq.write_table(pa.table({"label": [1, 2, 3], "uri": entries}), lists / "pool.parquet")
    assert list_sources([str(lists / "pool.parquet")]) == expected
    pq.write_table(pa.table({"n": [1, 2, 3], "file": entries}), lists / "first_string.parquet")
    assert list_sources([str(lists / "first_string.parquet")]) == expected


def test_list_file_keeps_missing_entries_but_rejects_unreadable_lists(tmp_path):
    (tmp_path / "pool.txt").write_text("gone.jpg\n")
    assert list_sources([str(tmp_path / "pool.txt")]) == [plain(tmp_path / "gone.jpg")]
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="broken.parquet: cannot read list file"):
        list_sources([str(tmp_path / "broken.parquet")])
    pq.write_table(pa.table({"n": [1]}), tmp_path / "numbers.parquet")
    with pytest.raises(InputError, match="numbers.parquet.*no 'uri' or 'path' column"):
        list_sources([str(tmp_path / "numbers.parquet")])


def test_inputs_keep_argument_order(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"x")
    assert list_sources([str(tmp_path / "b.png"), str(tmp_path / "a.png")]) == [
        plain(tmp_path / "b.png"), plain(tmp_path / "a.png")
    ]


def test_missing_input_fails_before_any_listing(tmp_path):
    write_tar(tmp_path / "ok.tar", {"a.jpg": b"a"})
    missing = str(tmp_path / "no-such-dir")
    with pytest.raises(InputError, match=f"input {missing}: does not exist"):
        list_sources([str(tmp_path / "ok.tar"), missing])
    with pytest.raises(InputError, match="empty input"):
        list_sources([""])
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(InputError, match="notes.md: not a directory, image"):
        list_sources([str(tmp_path / "notes.md")])


def test_memory_urls(tmp_path):
    root = f"inputs-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("m.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    fs.pipe(f"/{root}/pool/x/b.png", b"b")
    fs.pipe(f"/{root}/pool/a.jpg", b"a")
    fs.pipe(f"/{root}/pool/s.tar", buffer.getvalue())
    fs.pipe(f"/{root}/list.txt", b"pool/a.jpg\nmemory://" + root.encode() + b"/pool/x/b.png\n")
    try:
        refs = list_sources([f"memory://{root}/pool", f"memory://{root}/list.txt"])
        prefix = f"memory:///{root}/pool"
        assert refs == [
            SourceRef(f"{prefix}/a.jpg", "", -1, -1),
            SourceRef(f"{prefix}/s.tar", "m.jpg", 512, 3),
            SourceRef(f"{prefix}/x/b.png", "", -1, -1),
            SourceRef(f"{prefix}/a.jpg", "", -1, -1),
            SourceRef(f"{prefix}/x/b.png", "", -1, -1),
        ]
        assert imageio.read_bytes(refs[1].uri, refs[1].offset, refs[1].length) == b"abc"
        assert imageio.read_bytes(refs[2].uri) == b"b"
        with pytest.raises(InputError, match="does not exist"):
            list_sources([f"memory://{root}/nothing"])
    finally:
        fs.rm(f"/{root}", recursive=True)
