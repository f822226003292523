"""The selection's plan on Ray over real pass-1 parts, the driver reading no row of them, for every
selector: patches.parquet labels every row as the plain in-memory reference does, the samples
are the chosen rows in mosaics (or one image each), sources.parquet marks the copy, and pass 2
writes them; with a byte-identical copy of a source, score ties, copied embeddings and crowded
sources."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
from PIL import Image

from optidel.manifests import schema
from optidel.manifests.layout import Output
from optidel.manifests.verify import verify
from optidel.pipeline import config as config_mod, pass2, raydata
from optidel.pipeline.partitions import PartStore
from optidel.pipeline.selection import write
from optidel.pipeline.selection.plan import Plan, pass_two_rows, plan
from optidel.pipeline.selection.ranks import RANKS_DIR, pool_ranks, ranks_from_files
from optidel.stages import columns as C
from optidel.stages.write import shards_table
from selection_reference import plain_ranks, read_pool, reference

N_SOURCES = 40
DIM = 8
WIDTH, HEIGHT = 64, 48


COPY, ORIGINAL = 7, 3  # source 7 repeats source 3's bytes: the selection marks it duplicate


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


def _written(result: Plan, store: PartStore, config, output: Output) -> None:
    """What the runner writes from a plan: pass 2's shards and every manifest."""
    samples, records = pass2.compose_and_write(result, config, output)
    write.sources(output, result.duplicates, store, config)
    write.patches(output, result, store, config)
    output.write_manifest("samples", schema.to_table("samples", samples))
    output.write_manifest("shards", shards_table(records))


def _read_in_the_driver(store, partition, *args, **kwargs):
    raise AssertionError(f"the driver read rows of part {partition}: over the parts, only tasks may")


def _competing(store: PartStore, unit: str) -> dict[str, np.ndarray]:
    """The pool as the reference takes it, read here in one piece: the rows of every ok source
    but the copy (whose patches carry its original's ids), by the engine's names."""
    sources, patches = read_pool(store, with_patches=unit == "patch")
    rows = patches if unit == "patch" else sources
    keep = rows[C.INPUT_INDEX] != COPY
    id_column = C.PATCH_ID if unit == "patch" else C.SOURCE_ID
    return {"id": rows[id_column][keep], "source": rows[C.SOURCE_ID][keep],
            **({"score": rows[C.SCORE][keep], "embedding": rows[C.EMBEDDING][keep]} if C.SCORE in rows else {})}


@pytest.mark.parametrize("selector", ["optidel", "hard", "random", "dedup"])
def test_plan_over_parts_on_ray_is_the_reference(ray_local, tmp_path, monkeypatch, selector):
    store = _store(tmp_path, scored=selector != "random")
    config = config_mod.load(sets=[f"selector={selector}", "select.clusters=4", "select.per_source_cap=2",
                                   "select.trim_top_frac=0.05", "select.near_duplicate_cosine=0.9", "keep=0.3"])
    output = Output(str(tmp_path / "written"))
    with monkeypatch.context() as driver:  # the tasks' processes import PartStore unpatched
        for method in ("read", "source_rows"):
            driver.setattr(PartStore, method, _read_in_the_driver)
        result = plan(store, config)
        _written(result, store, config, output)
    unit = "patch" if selector in ("optidel", "hard") else "image"
    pool = _competing(store, unit)
    n_ok = N_SOURCES - 1
    expected = reference(pool, selector, (config.mosaic if unit == "patch" else 1) * config.budget(n_ok), config.select, config.seed)
    assert result.by_status == {"duplicate": 1, "ok": n_ok}
    # The driver holds fixed-width columns of the chosen rows, no Python object per row.
    assert all(values.dtype.kind in "biufS" for values in (result.patches.ids, result.samples, *result.patches.columns.values()))
    chosen_rows, sources = pass_two_rows(result, config)
    assert len(result.samples) and len(sources[C.STATUS]) == len(set(chosen_rows[C.SOURCE_ID])) < N_SOURCES  # pass 2's only

    rows = output.read_manifest("patches").to_pylist()
    # The copy's patches are out, its original's compete: the same ids, told apart by position.
    copies = [row for row in rows if row["reason"] == schema.DROP_DUPLICATE_SOURCE]
    assert len(rows) == len(pool["id"]) + len(copies) and (len(copies) > 0) == (unit == "patch")
    assert {row["source_id"] for row in copies} <= {result.duplicates.of[0]}
    by_id = {(row["patch_id"] if unit == "patch" else row["source_id"]): row for row in rows if row not in copies}
    assert len(by_id) == len(pool["id"])
    for i, row_id in enumerate(pool["id"].tolist()):
        row = by_id[row_id]
        assert (row["cluster"] if row["cluster"] is not None else -1) == expected["cluster"][i], row_id
        assert row["rank"] == expected["rank"][i], row_id
        if row["reason"] == schema.DROP_INCOMPLETE_GROUP:  # chosen, but its mosaic could not be filled
            assert expected["selected"][i] and unit == "patch"
        else:
            assert (row["reason"] or "") == expected["reason"][i] and row["selected"] == expected["selected"][i], row_id
    assert len(set(expected["reason"].tolist())) > 2 or selector == "random"  # the rules had rows to act on

    # The samples are the chosen rows, each in one sample; pass 2 wrote them all.
    members = [i for sample in result.samples for i in sample]
    assert sorted(members) == sorted(set(members)) and len(result.samples) == config.budget(n_ok)
    assert all(len(sample) == (config.mosaic if unit == "patch" else 1) for sample in result.samples)
    assert sum(row["selected"] for row in rows) == len(members)
    assert verify(output.root).ok
    sources = output.read_manifest("sources").to_pylist()
    assert sources[COPY]["status"] == "duplicate" and sources[COPY]["duplicate_of"] == sources[ORIGINAL]["source_id"]
    accounting = result.accounting
    if "score" in pool:
        assert accounting["pool_mean_entropy_nats"] == pytest.approx(float(np.mean(pool["score"])))
        assert accounting["clusters"] == expected["k"] == 4
    else:
        assert accounting["pool_mean_entropy_nats"] is None and "clusters" not in accounting


class KeyParts:
    """Parts of rows with ids and scores (3 values: runs of ties), some of them empty."""

    def __init__(self, sizes: list[int], seed: int):
        rng = np.random.default_rng(seed)
        n = sum(sizes)
        self.ids = np.array([f"p-{i:05d}" for i in rng.permutation(n)], dtype=object)
        self.scores = rng.choice(np.float32([0.5, 0.75, 1.25]), n)
        self.rows = np.split(rng.permutation(n), np.cumsum(sizes)[:-1])

    def __call__(self, part: int, columns=None) -> dict[str, np.ndarray]:
        return {"id": self.ids[self.rows[part]], "score": self.scores[self.rows[part]]}


@pytest.mark.parametrize("sizes", [[50], [30, 0, 45, 12, 0, 60, 33, 8, 21, 40]])
def test_pool_ranks_on_ray_are_the_pool_order(ray_local, tmp_path, sizes):
    """The sort by ranges as Ray runs it (one group and one range; groups of parts and as many
    ranges): the pieces the group tasks read back from their files give every row its rank in the
    pool's order, by hardness and by the seeded draw; once removed, no file is left."""
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers' KeyParts
    try:
        load = KeyParts(sizes, seed=len(sizes))
        config = config_mod.load(sets=[]).ray
        output = Output(str(tmp_path))
        for by in ("hardness", ("draw", 3)):
            expected = plain_ranks({"id": load.ids, "score": load.scores}, by)
            ranks = pool_ranks(load, list(range(len(sizes))), by, output, config)
            assert len(ranks.paths) == len(ranks.groups) == {1: 1, 10: 4}[len(sizes)]  # ranges, groups of parts
            found = raydata.run_tasks(ranks_from_files, [(len(g), *ranks.of(i)) for i, g in enumerate(ranks.groups)], config)
            out = np.full(sum(sizes), -1, dtype=np.int32)
            for group, of_group in zip(ranks.groups, found):
                for part, rank in zip(group, of_group):
                    out[load.rows[part]] = rank
            assert np.array_equal(out, expected)
            assert all(isinstance(path, str) and output.exists(path) for paths in ranks.paths for path in paths)
            ranks.remove()
            assert not output.exists(RANKS_DIR)
    finally:
        ray_local.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
