"""Exact duplicates by the hash-partitioned step (pipeline/selection/duplicates.py) against a plain
in-memory reference (mark_duplicates, below): on random pools with copies within a part and across
parts, several copies of one id (the first in the listing wins, whichever map's piece reaches
the reduce first), and rows that are not ok sharing an id with ok rows; any cut into parts,
groups and buckets. On real Ray, over real parts: the same duplicates and counts, and
sources.parquet written in pieces with the bytes of the one-shot write."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest

from optidel.manifests import layout, schema
from optidel.manifests.layout import Output
from optidel.pipeline import config as config_mod
from optidel.pipeline.selection import duplicates, rows, write
from optidel.pipeline.selection.duplicates import bucketed, first_occurrences, joined, marked
from optidel.pipeline.selection.selectors import selector
from optidel.pipeline.partitions import PartStore
from optidel.stages import columns as C
from selection_reference import read_pool

NOT_OK = (schema.CORRUPT, schema.TOO_SMALL, schema.FAILED)


def mark_duplicates(sources: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Byte-identical ok sources after the first (in listing order) become `duplicate`."""
    status = sources[C.STATUS].copy()
    duplicate_of = np.full(len(status), "", dtype=object)
    first = set()
    for i, (sid, st) in enumerate(zip(sources[C.SOURCE_ID], status)):
        if st == schema.OK and sid in first:
            status[i], duplicate_of[i] = schema.DUPLICATE, sid
        elif st == schema.OK:
            first.add(sid)
    return {**sources, C.STATUS: status, "duplicate_of": duplicate_of}


def random_sources(seed: int, n: int = 300) -> dict[str, np.ndarray]:
    """A listing's source rows: ids from a short list (many copies, near and far apart in the
    listing), a share not ok (some of them sharing an ok row's id, some with no id at all)."""
    rng = np.random.default_rng(seed)
    names = np.array([f"{k:064x}" for k in rng.integers(0, 2**62, n // 2)], dtype=object)
    ids = names[rng.integers(0, len(names), n)]
    status = np.where(rng.random(n) < 0.2, rng.choice(NOT_OK, n), schema.OK).astype(object)
    ids[(status != schema.OK) & (rng.random(n) < 0.3)] = ""
    return {C.INPUT_INDEX: np.arange(n, dtype=np.int64), C.SOURCE_ID: ids, C.STATUS: status}


def _cuts(rng, n: int, pieces: int) -> list[np.ndarray]:
    return np.split(np.arange(n), np.sort(rng.integers(0, n + 1, pieces - 1)))  # some may be empty


def hash_partitioned(sources: dict[str, np.ndarray], seed: int, groups: int, buckets: int):
    """duplicates.find's steps, here: maps over contiguous groups of the listing, each bucket's
    pieces reaching its reduce in a shuffled order."""
    rng = np.random.default_rng(seed)
    maps = [bucketed(C.take(sources, rows), buckets) for rows in _cuts(rng, len(sources[C.STATUS]), groups)]
    found = [first_occurrences(*(maps[m][b] for m in rng.permutation(len(maps)))) for b in range(buckets)]
    return joined(found)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("groups,buckets", [(1, 1), (3, 2), (5, 7), (9, 4)])
def test_hash_partitioned_duplicates_are_mark_duplicates(seed, groups, buckets):
    sources = random_sources(seed)
    reference = mark_duplicates(sources)
    found = hash_partitioned(sources, seed, groups, buckets)
    assert len(found.positions) > 10  # the pool had copies to find
    ours = marked(sources, found)
    assert ours[C.STATUS].tolist() == reference[C.STATUS].tolist()
    assert ours["duplicate_of"].tolist() == reference["duplicate_of"].tolist()
    # The pool put that to the test: rows that are not ok (never a first, never a duplicate)
    # share ids with ok rows.
    shared = set(sources[C.SOURCE_ID][sources[C.STATUS] != schema.OK]) & set(sources[C.SOURCE_ID][sources[C.STATUS] == schema.OK])
    assert shared - {""}


def test_duplicates_of_a_span_and_lookup():
    sources = random_sources(0)
    found = hash_partitioned(sources, 0, 4, 3)
    span = range(100, 200)
    within = found.within(span)
    assert within.positions.tolist() == [p for p in found.positions.tolist() if p in span]
    at = found.at(sources[C.INPUT_INDEX])
    assert np.flatnonzero(at >= 0).tolist() == found.positions.tolist()
    assert marked(C.take(sources, slice(100, 200)), within)[C.STATUS].tolist() == marked(sources, found)[C.STATUS][100:200].tolist()


def test_a_bucket_without_rows():
    empty = {C.INPUT_INDEX: np.zeros(0, np.int64), C.SOURCE_ID: np.zeros(0, object), C.STATUS: np.zeros(0, object)}
    pieces = bucketed(empty, 3)
    assert len(pieces) == 3 and not len(first_occurrences(*pieces).positions)


def _store(tmp_path, sources: dict[str, np.ndarray], with_patches: bool) -> PartStore:
    """sources as pass-1 parts of 16 sources: their source rows and, `with_patches`, a patch
    row after each ok source (a patch row's status is a sentinel: its source row tells)."""
    n = len(sources[C.STATUS])
    store = PartStore(Output(str(tmp_path / "out")), n_sources=n, partition_size=16)
    for p in range(store.n_partitions):
        rows = []
        for i in store.sources_of(p):
            source_id, status = sources[C.SOURCE_ID][i], sources[C.STATUS][i]
            rows.append({C.INPUT_INDEX: i, C.SOURCE_ID: source_id, C.STATUS: status, C.URI: f"/pool/{i}.jpg", C.WIDTH: 40, C.HEIGHT: 30})
            if with_patches and status == schema.OK:
                rows.append({C.INPUT_INDEX: i, C.SOURCE_ID: source_id, C.PATCH_INDEX: 0, C.PATCH_ID: f"{source_id[:16]}-000"})
        store.write(p, C.to_batch(rows, C.CANDIDATE_COLUMNS if with_patches else C.SOURCE_COLUMNS))
    return store


@pytest.mark.parametrize("with_patches", [False, True])
def test_on_ray_over_parts(ray_local, tmp_path, monkeypatch, with_patches):
    monkeypatch.setattr(layout, "ROW_GROUP_ROWS", 7)  # small row groups, which the parts' pieces cross
    sources = random_sources(11, n=200)
    store = _store(tmp_path, sources, with_patches)
    config = config_mod.load(sets=[])
    found, by_status = duplicates.find(store, config)
    reference = mark_duplicates(sources)
    assert marked(sources, found)["duplicate_of"].tolist() == reference["duplicate_of"].tolist()
    assert by_status == dict(sorted(Counter(reference[C.STATUS].tolist()).items()))

    # sources.parquet in pieces from the parts: the bytes of one write of the reference's rows.
    in_memory = mark_duplicates(read_pool(store, with_patches=False)[0])
    Output(str(tmp_path / "in_memory")).write_manifest("sources", schema.to_table("sources", in_memory))
    write.sources(Output(str(tmp_path / "over_parts")), found, store, config)
    written = (tmp_path / "in_memory" / layout.manifest_relpath("sources")).read_bytes()
    assert (tmp_path / "over_parts" / layout.manifest_relpath("sources")).read_bytes() == written


@pytest.mark.parametrize("unit", ["Patches", "Images"])
def test_the_unit_every_task_is_handed_carries_the_duplicates_positions_alone(tmp_path, unit):
    """The selection hands its unit (the loader) to every task over the parts: of the duplicates
    it needs their listing positions, not the ids they repeat, which sources.parquet alone takes."""
    found = duplicates.Duplicates(np.array([3, 7], dtype=np.int64), np.array(["a" * 64, "b" * 64], dtype=object))
    store = PartStore(Output(str(tmp_path)), n_sources=8, partition_size=4)
    loader = getattr(rows, unit)(store, found, selector("dedup"), 1.0)
    pickled = pickle.dumps(loader)
    assert b"a" * 64 not in pickled and b"b" * 64 not in pickled
    assert np.array_equal(loader.duplicate_positions, found.positions)
