"""The barrier's selection as Ray tasks over real pass-1 parts (pipeline/part_selection.py) gives
what the in-memory barrier gives: pass 2's samples, the accounting, and patches.parquet byte for
byte; with a duplicate source, score ties, copied embeddings and crowded sources."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optidel.manifests import layout
from optidel.manifests.layout import Output
from optidel.pipeline import barrier, config as config_mod, pass1, pass2, patch_manifest
from optidel.pipeline.partitions import PartStore
from optidel.stages import columns as C

N_SOURCES = 40
DIM = 8


COPY, ORIGINAL = 7, 3  # source 7 repeats source 3's bytes: the barrier marks it duplicate


def _source_rows(i: int, scored: bool) -> dict[str, np.ndarray]:
    """Source i's pass-1 rows; a byte-identical copy gets its original's rows (ids, boxes,
    scores, embeddings) at its own listing position, as pass 1 gives them."""
    content = ORIGINAL if i == COPY else i
    rng = np.random.default_rng(content)
    source_id = f"{content:02d}" * 32
    rows = [{C.SOURCE_ID: source_id, C.INPUT_INDEX: i, C.PATCH_INDEX: -1, C.STATUS: "ok",
             C.URI: f"/pool/{i}.jpg", C.WIDTH: 40, C.HEIGHT: 30}]
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


def _part_rows(indices, scored: bool) -> dict[str, np.ndarray]:
    return C.concat([_source_rows(i, scored) for i in indices])


def _store(tmp_path, scored: bool) -> PartStore:
    store = PartStore(Output(str(tmp_path / "out")), n_sources=N_SOURCES, partition_size=6)
    for p in range(store.n_partitions):
        store.write(p, _part_rows(list(store.sources_of(p)), scored))
    return store


@pytest.mark.parametrize("selector", ["optidel", "hard", "random"])
def test_selection_over_parts_on_ray_is_the_in_memory_plan(ray_local, tmp_path, selector):
    scored = selector != "random"
    store = _store(tmp_path, scored)
    config = config_mod.load(sets=[f"selector={selector}", "select.clusters=4", "select.per_source_cap=2",
                                   "select.trim_top_frac=0.05", "select.near_duplicate_cosine=0.9", "keep=0.3"])
    in_memory = barrier.plan(pass1.read_candidates(store, with_patches=scored), config)
    # Over the parts the driver reads the sources only: the tasks read the patches from the parts.
    sources_only = pass1.read_candidates(store, with_patches=False, embeddings=False)
    assert np.all(sources_only.sources[C.PATCH_INDEX] < 0) if scored else not sources_only.patches
    over_parts = barrier.plan(sources_only, config, store)

    assert in_memory.samples and in_memory.accounting == over_parts.accounting
    # Pass 2 gets the same samples, slot by slot, with the same boxes, scores and sources (json:
    # an unscored image's score is NaN, which equals nothing).
    assert json.dumps(pass2.sample_rows(over_parts)) == json.dumps(pass2.sample_rows(in_memory))
    rows = {}
    for name, plan in (("in_memory", in_memory), ("over_parts", over_parts)):
        output = Output(str(tmp_path / name))
        rows[name] = patch_manifest.write(output, plan, store)
    assert rows["in_memory"] == rows["over_parts"] == len(in_memory.patches[C.PATCH_ID])
    written = (tmp_path / "in_memory" / layout.manifest_relpath("patches")).read_bytes()
    assert (tmp_path / "over_parts" / layout.manifest_relpath("patches")).read_bytes() == written
    if scored:  # the plan holds the chosen rows only
        assert len(over_parts.patches[C.PATCH_ID]) == in_memory.patches["sample_key"].astype(bool).sum()
        reasons = set(in_memory.patches["reason"].tolist())
        # The duplicate source's patches, and the per-source cap, had rows to act on.
        assert {"duplicate_source", "source_cap"} <= reasons, reasons
        # The copy's patches are out, its original's compete: the same ids, told apart by position.
        twins = in_memory.patches[C.SOURCE_ID] == f"{ORIGINAL:02d}" * 32
        original, copy = np.array_split(in_memory.patches["reason"][twins], 2)
        assert set(copy.tolist()) == {"duplicate_source"}
        assert "duplicate_source" not in set(original.tolist())
