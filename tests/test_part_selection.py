"""The barrier's selection as Ray tasks over real pass-1 parts (barrier.plan_over_parts), the driver
reading no row of them, gives what the in-memory barrier gives: the samples, the accounting,
and then sources.parquet, patches.parquet, samples.parquet and the shards byte for byte; with a
byte-identical copy of a source, score ties, copied embeddings and crowded sources."""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from optidel.manifests import schema
from optidel.manifests.layout import Output
from optidel.pipeline import barrier, config as config_mod, pass1, pass2, patch_manifest, raydata, source_manifest
from optidel.pipeline.partitions import PartStore
from optidel.pipeline.ranks import pool_ranks
from optidel.stages import columns as C
from optidel.stages import select_parts
from optidel.stages.select import hardness_rank, select_images
from optidel.stages.write import shards_table

N_SOURCES = 40
DIM = 8
WIDTH, HEIGHT = 64, 48


COPY, ORIGINAL = 7, 3  # source 7 repeats source 3's bytes: the barrier marks it duplicate


def _pool(tmp_path) -> list[tuple[str, str]]:
    """The sources' images as files (pass 2 reads them): (uri, source id) by listing position."""
    pool = tmp_path / "pool"
    pool.mkdir()
    found = []
    for i in range(N_SOURCES):
        content = ORIGINAL if i == COPY else i
        pixels = np.random.default_rng(content).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        path = pool / f"{i}.png"
        Image.fromarray(pixels).save(path, format="PNG")
        found.append((str(path), hashlib.sha256(path.read_bytes()).hexdigest()))
    return found


def _source_rows(i: int, uri: str, source_id: str, scored: bool) -> dict[str, np.ndarray]:
    """Source i's pass-1 rows; a byte-identical copy gets its original's rows (ids, boxes,
    scores, embeddings) at its own listing position, as pass 1 gives them."""
    content = ORIGINAL if i == COPY else i
    rng = np.random.default_rng(content)
    rows = [{C.SOURCE_ID: source_id, C.INPUT_INDEX: i, C.PATCH_INDEX: -1, C.STATUS: "ok",
             C.URI: uri, C.WIDTH: WIDTH, C.HEIGHT: HEIGHT}]
    for k in range(int(rng.integers(2, 7)) if scored else 0):
        rows.append({C.SOURCE_ID: source_id, C.INPUT_INDEX: i, C.PATCH_INDEX: k, C.PATCH_ID: f"{source_id[:16]}-{k:03d}",
                     "x0": content, "y0": k, "x1": content + 10, "y1": k + 10, "mask_area": 35, "predicted_iou": 0.9,
                     "stability_score": 1.0, C.MASK_RLE: "x"})
    batch = C.to_batch(rows, C.CANDIDATE_COLUMNS)
    if scored:
        batch[C.SCORE] = rng.choice(np.linspace(0.5, 1.5, 12), len(rows)).astype(np.float32)  # ties across sources
        emb = rng.normal(size=(len(rows), DIM))
        emb[-1] = emb[0]  # copies: near-duplicates at any threshold
        batch[C.EMBEDDING] = emb.astype(np.float32)
    return batch


def _store(tmp_path, scored: bool) -> PartStore:
    pool = _pool(tmp_path)
    store = PartStore(Output(str(tmp_path / "out")), n_sources=N_SOURCES, partition_size=6)
    for p in range(store.n_partitions):
        store.write(p, C.concat([_source_rows(i, *pool[i], scored) for i in store.sources_of(p)]))
    return store


def _written(plan: barrier.Plan, store: PartStore, config, output: Output) -> dict[str, bytes]:
    """What the runner writes from a plan: pass 2's shards and every manifest, file by file."""
    samples, records = pass2.compose_and_write(plan, config, output)
    source_manifest.write(output, plan, store, config)
    patch_manifest.write(output, plan, store)
    output.write_manifest("samples", schema.to_table("samples", samples))
    output.write_manifest("shards", shards_table(records))
    root = output.fs.info(output.root)["name"]
    return {path[len(root):]: output.fs.cat_file(path) for path in sorted(output.fs.find(root))}


def _read_in_the_driver(store, partition, *args, **kwargs):
    raise AssertionError(f"the driver read rows of part {partition}: over the parts, only tasks may")


@pytest.mark.parametrize("selector", ["optidel", "hard", "random"])
def test_selection_over_parts_on_ray_is_the_in_memory_plan(ray_local, tmp_path, monkeypatch, selector):
    scored = selector != "random"
    store = _store(tmp_path, scored)
    config = config_mod.load(sets=[f"selector={selector}", "select.clusters=4", "select.per_source_cap=2",
                                   "select.trim_top_frac=0.05", "select.near_duplicate_cosine=0.9", "keep=0.3"])
    in_memory = barrier.plan(pass1.read_candidates(store, with_patches=scored), config)
    # Over the parts the driver reads no row of the pool: the tasks read the parts.
    written = {"in_memory": _written(in_memory, store, config, Output(str(tmp_path / "in_memory")))}
    with monkeypatch.context() as driver:  # the tasks' processes import PartStore unpatched
        for method in ("read", "source_rows"):
            driver.setattr(PartStore, method, _read_in_the_driver)
        over_parts = barrier.plan_over_parts(store, config)
        written["over_parts"] = _written(over_parts, store, config, Output(str(tmp_path / "over_parts")))
    assert len(over_parts.sources[C.STATUS]) == len(set(over_parts.patches[C.SOURCE_ID])) < N_SOURCES  # pass 2's only

    assert in_memory.samples and in_memory.accounting == over_parts.accounting
    assert in_memory.by_status == over_parts.by_status == {"duplicate": 1, "ok": N_SOURCES - 1}
    # Pass 2 gets the same samples, slot by slot, with the same boxes, scores and sources (json:
    # an unscored image's score is NaN, which equals nothing).
    assert json.dumps(pass2.sample_rows(over_parts)) == json.dumps(pass2.sample_rows(in_memory))
    assert written["over_parts"] == written["in_memory"]
    files = Counter(name.split("/")[1] for name in written["in_memory"])
    assert files["shards"] >= 1 and files["manifests"] == 5, files  # 4 tables and their README
    sources = Output(str(tmp_path / "over_parts")).read_manifest("sources").to_pylist()
    assert sources[COPY]["status"] == "duplicate" and sources[COPY]["duplicate_of"] == sources[ORIGINAL]["source_id"]
    if scored:  # the plan holds the chosen rows only
        assert len(over_parts.patches[C.PATCH_ID]) == in_memory.patches["sample_key"].astype(bool).sum()
        reasons = set(in_memory.patches["reason"].tolist())
        # The duplicate source's patches, and the per-source cap, had rows to act on.
        assert {"duplicate_source", "source_cap"} <= reasons, reasons
        # The copy's patches are out, its original's compete: the same ids, told apart by position.
        twins = in_memory.patches[C.SOURCE_ID] == sources[ORIGINAL]["source_id"]
        original, copy = np.array_split(in_memory.patches["reason"][twins], 2)
        assert set(copy.tolist()) == {"duplicate_source"}
        assert "duplicate_source" not in set(original.tolist())


class KeyParts:
    """Parts of rows with ids and scores (3 values: runs of ties), some of them empty."""

    def __init__(self, sizes: list[int], seed: int):
        rng = np.random.default_rng(seed)
        n = sum(sizes)
        self.ids = np.array([f"p-{i:05d}" for i in rng.permutation(n)], dtype=object)
        self.scores = rng.choice(np.float32([0.5, 0.75, 1.25]), n)
        self.rows = np.split(rng.permutation(n), np.cumsum(sizes)[:-1])

    def __call__(self, part: int, columns=None) -> dict[str, np.ndarray]:
        return {C.PATCH_ID: self.ids[self.rows[part]], C.SCORE: self.scores[self.rows[part]]}


@pytest.mark.parametrize("sizes", [[50], [30, 0, 45, 12, 0, 60, 33, 8, 21, 40]])
def test_pool_ranks_on_ray_are_the_pool_order(ray_local, sizes):
    """The sort by ranges as Ray runs it (one group and one range; groups of parts and as many
    ranges): the pieces the group tasks take give every row its rank in the pool's order, by
    hardness and by the seeded draw."""
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers' KeyParts
    try:
        load = KeyParts(sizes, seed=len(sizes))
        config = config_mod.load(sets=[]).ray
        for by, reference in (("hardness", hardness_rank(load.ids, load.scores)),
                              (("draw", 3), select_images(source_ids=load.ids, scores=None, embeddings=None, budget=1,
                                                          config=config_mod.SelectConfig(), method="random", seed=3).rank)):
            ranks = pool_ranks(load, list(range(len(sizes))), "hard", by, config)
            assert len(ranks.pieces) == len(ranks.groups) == {1: 1, 10: 4}[len(sizes)]  # ranges, groups of parts
            found = raydata.run_tasks(select_parts.part_ranks, [(len(g), *ranks.of(i)) for i, g in enumerate(ranks.groups)], config)
            out = np.full(sum(sizes), -1, dtype=np.int32)
            for group, part_ranks in zip(ranks.groups, found):
                for part, rank in zip(group, part_ranks):
                    out[load.rows[part]] = rank
            assert np.array_equal(out, reference)
    finally:
        ray_local.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
