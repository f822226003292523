"""The barrier's selection as Ray tasks over real pass-1 parts (pipeline/part_selection.py) gives
the plan of the in-memory barrier: every patch column, every sample, the accounting; with a
duplicate source, score ties, copied embeddings and crowded sources."""

from __future__ import annotations

import numpy as np
import pytest

from optidel.manifests.layout import Output
from optidel.pipeline import barrier, config as config_mod, pass1
from optidel.pipeline.partitions import PartStore
from optidel.stages import columns as C

N_SOURCES = 40
DIM = 8


def _part_rows(indices, rng, scored: bool) -> dict[str, np.ndarray]:
    rows = []
    for i in indices:
        # Source 7 repeats source 3's bytes: the barrier marks it duplicate.
        source_id = f"{3 if i == 7 else i:02d}" * 32
        rows.append({C.SOURCE_ID: source_id, C.INPUT_INDEX: i, C.PATCH_INDEX: -1, C.STATUS: "ok",
                     C.URI: f"/pool/{i}.jpg", C.WIDTH: 40, C.HEIGHT: 30})
        for k in range(int(rng.integers(0, 7)) if scored else 0):
            rows.append({C.SOURCE_ID: source_id, C.INPUT_INDEX: i, C.PATCH_INDEX: k, C.PATCH_ID: f"{source_id[:16]}-{i:03d}{k:03d}",
                         "x0": i, "y0": k, "x1": i + 10, "y1": k + 10, "mask_area": 35, "predicted_iou": 0.9,
                         "stability_score": 1.0, C.MASK_RLE: "x"})
    batch = C.to_batch(rows, C.CANDIDATE_COLUMNS)
    if scored:
        batch[C.SCORE] = rng.choice(np.linspace(0.5, 1.5, 12), len(rows)).astype(np.float32)  # ties
        emb = rng.normal(size=(len(rows), DIM))
        emb[1::5] = emb[0]  # copies: near-duplicates at any threshold
        batch[C.EMBEDDING] = emb.astype(np.float32)
    return batch


def _store(tmp_path, scored: bool) -> PartStore:
    store = PartStore(Output(str(tmp_path / "out")), n_sources=N_SOURCES, partition_size=6)
    rng = np.random.default_rng(0)
    for p in range(store.n_partitions):
        store.write(p, _part_rows(list(store.sources_of(p)), rng, scored))
    return store


@pytest.mark.parametrize("selector", ["optidel", "hard", "random"])
def test_selection_over_parts_on_ray_is_the_in_memory_plan(ray_local, tmp_path, selector):
    scored = selector != "random"
    store = _store(tmp_path, scored)
    config = config_mod.load(sets=[f"selector={selector}", "select.clusters=4", "select.per_source_cap=2",
                                   "select.trim_top_frac=0.05", "select.near_duplicate_cosine=0.9", "keep=0.3"])
    candidates = pass1.read_candidates(store, with_patches=scored)
    in_memory = barrier.plan(candidates, config)
    # Over the parts, the driver needs no embeddings: the tasks read them from the parts.
    candidates = pass1.read_candidates(store, with_patches=scored, embeddings=False)
    assert C.EMBEDDING not in candidates.sources and C.EMBEDDING not in candidates.patches
    over_parts = barrier.plan(candidates, config, store)

    assert in_memory.samples and over_parts.samples == in_memory.samples
    assert in_memory.accounting == over_parts.accounting
    assert list(over_parts.patches) == list(in_memory.patches)
    for name, values in in_memory.patches.items():
        assert np.array_equal(over_parts.patches[name], values, equal_nan=values.dtype.kind == "f"), name
    reasons = set(in_memory.patches["reason"].tolist())
    if scored:  # the duplicate source's patches, and the per-source cap, had rows to act on
        assert {"duplicate_source", "source_cap"} <= reasons, reasons
