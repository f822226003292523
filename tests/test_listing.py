"""pipeline.listing: the pool's listing streamed to disk, and pass 1 fed from it in waves."""

from __future__ import annotations

import gc
import hashlib
import json
import tracemalloc

import pytest

from optidel import seeding
from optidel.pipeline import config as config_mod, listing as listing_mod, pass1
from optidel.pipeline.inputs import InputError, SourceRef, iter_sources, list_sources
from optidel.pipeline.listing import Listing
from optidel.pipeline.runner import run

from test_run_random import _tree_bytes


def _refs(n: int) -> list[SourceRef]:
    return [SourceRef(f"/pool/{i:07d}.jpg", "", -1, -1) if i % 3 else SourceRef("/pool/s.tar", f"m{i}.png", 512 * i, i) for i in range(n)]


def _old_digest(refs) -> str:
    """The job record's listing sha256 as runs before the on-disk listing wrote it: OUTs
    written then must still resume."""
    h = hashlib.sha256()
    for ref in refs:  # four location fields: images' references had no video_sample then
        h.update(json.dumps(list(ref)[:4], separators=(",", ":")).encode() + b"\n")
    return h.hexdigest()


def test_rows_refs_and_digest_round_trip_across_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(listing_mod, "ROWS_PER_GROUP", 7)  # 50 refs: 8 row groups
    refs = _refs(50)
    listing = Listing.write(iter(refs), str(tmp_path / "l.parquet"))
    assert (len(listing), listing.sha256) == (50, _old_digest(refs))
    assert [listing.ref(i) for i in range(50)] == refs
    rows = list(listing.rows([range(3, 9), range(13, 14), range(40, 50)]))
    positions = [*range(3, 9), 13, *range(40, 50)]
    assert [r["input_index"] for r in rows] == positions
    assert [SourceRef(r["uri"], r["member"], r["offset"], r["length"]) for r in rows] == [refs[i] for i in positions]
    assert Listing.write(iter([]), str(tmp_path / "empty.parquet")).count == 0


@pytest.mark.parametrize("n", [5, 300])
def test_training_sample_is_the_smallest_hashes_in_listing_order(tmp_path, n):
    listing = Listing.write(iter(_refs(n)), str(tmp_path / "l.parquet"))
    expected = sorted(sorted(range(n), key=lambda i: seeding.derive(9, "train-source", i))[:20])
    assert listing.sample(9, 20) == expected


def _peak_mib(fn) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_a_200k_line_list_file_streams_through_the_driver(tmp_path, monkeypatch):
    """Listing, the proxy's sample and pass 1's feed of a 200k-line list file: what the driver
    allocates at its peak stays bounded, where the list of references alone is tens of MB."""
    n = 200_000
    list_file = tmp_path / "pool.txt"
    list_file.write_text("".join(f"frames/{i // 1000:04d}/{i:09d}.jpg\n" for i in range(n)))
    store_partition = 32  # ingest.partition_size's default
    # Row groups and waves far smaller than the pool, so that what grows with them shows.
    monkeypatch.setattr(listing_mod, "ROWS_PER_GROUP", 8192)
    monkeypatch.setattr(pass1, "WAVE_SOURCES", 8192)

    whole_list = _peak_mib(lambda: list_sources([str(list_file)]))
    held = {}
    write_peak = _peak_mib(lambda: held.setdefault("listing", Listing.write(iter_sources([str(list_file)]), str(tmp_path / "l.parquet"))))
    listing = held["listing"]
    assert len(listing) == n

    def feed():  # what pass 1 hands Ray: one wave of listing rows at a time
        spans = [range(start, min(start + store_partition, n)) for start in range(0, n, store_partition)]
        seen = 0
        for wave in listing_mod.batched(listing.rows(spans), pass1.WAVE_SOURCES):
            seen += len(wave)
        assert seen == n

    feed_peak = _peak_mib(feed)
    sample_peak = _peak_mib(lambda: listing.sample(0, 242))
    print(f"peak MiB: list {whole_list:.1f}, write {write_peak:.1f}, feed {feed_peak:.1f}, sample {sample_peak:.2f}")
    assert whole_list > 30, whole_list  # the Python list of references this replaces
    # Writing holds a row group of references; the feed, a wave of row dicts (and the row
    # group it reads from); the sample, its 242 positions.
    assert write_peak < 8, write_peak
    assert feed_peak < 16, feed_peak  # two waves: the one handed over and the next
    assert sample_peak < 1, sample_peak


def test_pass1_in_several_waves_writes_the_same_bytes(tmp_path, kvasir, ray_local, monkeypatch):
    """Waves smaller than a partition and not aligned with one: the parts, manifests and
    shards are those of a single wave."""
    names = sorted(p.name for p in (kvasir / "images").glob("*.jpg"))[:20]
    list_file = tmp_path / "pool.txt"
    list_file.write_text("".join(f"{kvasir / 'images' / name}\n" for name in names))
    config = config_mod.load(overrides={"selector": "random", "keep": 0.25}, sets=["ingest.partition_size=6"])
    run([str(list_file)], str(tmp_path / "one"), config)
    monkeypatch.setattr(pass1, "WAVE_SOURCES", 4)
    run([str(list_file)], str(tmp_path / "waves"), config)
    one, waves = _tree_bytes(tmp_path / "one"), _tree_bytes(tmp_path / "waves")
    assert sum(name.startswith("work/pass1/part-") for name in one) == 4
    assert sorted(one) == sorted(waves)
    assert [name for name in one if one[name] != waves[name]] == []


def test_a_list_file_unreadable_half_way_is_an_input_error_naming_it(tmp_path):
    """Read as a stream, a list file can fail after some entries were listed: still one error,
    naming the file, before any OUT exists (the run lists before it creates OUT)."""
    list_file = tmp_path / "pool.txt"
    list_file.write_bytes(b"a.jpg\nb.jpg\n" + b"c\xff\xfe.jpg\n")
    with pytest.raises(InputError, match=r"pool\.txt: cannot read list file"):
        Listing.write(iter_sources([str(list_file)]), str(tmp_path / "l.parquet"))
