"""patches.parquet, written by tasks part by part, gets each mask back from its part; whole images
have none."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from optidel.manifests import decode_mask, layout, schema
from optidel.manifests.layout import Output
from optidel.pipeline import config as config_mod
from optidel.pipeline.partitions import PartStore
from optidel.pipeline.selection import plan as selection_plan
from optidel.pipeline.selection import write
from optidel.stages import columns as C
from optidel.stages.keypatch import mask_to_rle

PATCHES_PER_SOURCE = {0: 3, 1: 0, 2: 4, 3: 2, 4: 5}  # input_index -> patches; partitions of 2
DIM = 8


def _size(input_index: int) -> tuple[int, int]:
    """(height, width) of a source: each its own, so a mask given another source's size shows."""
    return 30 + input_index, 40 + 2 * input_index


def _part_rows(indices: list[int], rng) -> dict[str, np.ndarray]:
    """Pass-1 rows of these sources as a part holds them: a source row, then its patches."""
    rows = []
    for i in indices:
        source_id = f"{i:02d}" * 32
        height, width = _size(i)
        rows.append({C.SOURCE_ID: source_id, C.INPUT_INDEX: i, C.PATCH_INDEX: -1, C.STATUS: "ok", C.URI: f"/pool/{i}.jpg", C.WIDTH: width, C.HEIGHT: height})
        for k in range(PATCHES_PER_SOURCE[i]):
            mask = np.zeros((height, width), bool)
            mask[k : k + 5, i : i + 7] = True
            rows.append(
                {
                    C.SOURCE_ID: source_id,
                    C.INPUT_INDEX: i,
                    C.PATCH_INDEX: k,
                    C.PATCH_ID: f"{source_id[:16]}-{k:03d}",
                    "x0": i, "y0": k, "x1": i + 10, "y1": k + 10,
                    "mask_area": 35, "predicted_iou": 0.9, "stability_score": 1.0,
                    C.MASK_RLE: mask_to_rle(mask),
                }
            )
    batch = C.to_batch(rows, C.CANDIDATE_COLUMNS)
    batch[C.SCORE] = rng.uniform(0.5, 1.5, len(rows)).astype(np.float32)
    batch[C.EMBEDDING] = rng.normal(size=(len(rows), DIM)).astype(np.float32)
    return batch


@pytest.fixture
def store(tmp_path):
    store = PartStore(Output(str(tmp_path / "out")), n_sources=len(PATCHES_PER_SOURCE), partition_size=2)
    rng = np.random.default_rng(0)
    for p in range(store.n_partitions):
        store.write(p, _part_rows(list(store.sources_of(p)), rng))
    return store


def _written(store: PartStore) -> dict[str, np.ndarray]:
    parts = [store.read(p) for p in range(store.n_partitions)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def test_patches_manifest_gets_each_mask_back_from_its_part(store, tmp_path, ray_local):
    config = config_mod.load(sets=["select.clusters=2", "keep=1.0"])
    plan = selection_plan.plan(store, config)
    assert len(plan.samples)  # the test means nothing on an empty selection
    output = Output(str(tmp_path / "m"))
    assert write.patches(output, plan, store, config) == sum(PATCHES_PER_SOURCE.values())

    written = _written(store)
    is_patch = written[C.PATCH_INDEX] >= 0
    sizes = [list(_size(i)) for i in written[C.INPUT_INDEX][is_patch]]
    table = output.read_manifest("patches")
    assert table.column("patch_id").to_pylist() == list(written[C.PATCH_ID][is_patch])  # part order
    expected = [{"size": s, "counts": c} for s, c in zip(sizes, written[C.MASK_RLE][is_patch])]
    assert table.column(C.MASK_RLE).to_pylist() == expected
    for row in table.to_pylist():  # each mask decodes on its own, at its source's size
        i, k = int(row["patch_id"][:2]), int(row["patch_id"][-3:])
        expected = np.zeros(_size(i), bool)
        expected[k : k + 5, i : i + 7] = True
        assert np.array_equal(decode_mask(row), expected)


def test_whole_image_plan_writes_no_masks(store, tmp_path, ray_local):
    config = config_mod.load(sets=["selector=random", "keep=1.0"])
    plan = selection_plan.plan(store, config)
    output = Output(str(tmp_path / "m"))
    write.patches(output, plan, store, config)
    rows = output.read_manifest("patches").to_pylist()
    assert len(rows) == len(PATCHES_PER_SOURCE) and all(row["mask_rle"] is None for row in rows)
    with pytest.raises(ValueError, match="no mask"):
        decode_mask(rows[0])


@pytest.mark.parametrize("sizes", [[], [0], [3, 9, 1, 0, 14, 2], [7, 7], [30]])
def test_manifest_written_in_pieces_has_the_bytes_of_one_write(tmp_path, monkeypatch, sizes):
    monkeypatch.setattr(layout, "ROW_GROUP_ROWS", 7)  # small groups, so the pieces cross them
    n = sum(sizes)
    table = schema.to_table(
        "shards",
        {"shard": [f"s{i}.tar" for i in range(n)], "nsamples": np.arange(n), "bytes": np.arange(n) * 10, "sha256": ["ab"] * n},
    )
    pieces, start = [], 0
    for size in sizes:
        pieces.append(table.slice(start, size))
        start += size
    output = Output(str(tmp_path))
    output.write_manifest_pieces("shards", pieces)

    meta = {**(schema.SHARDS.metadata or {}), layout.SCHEMA_VERSION_KEY: schema.SCHEMA_VERSION.encode()}
    reference = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(meta), reference, compression="zstd", row_group_size=7, write_statistics=True)
    path = tmp_path / layout.manifest_relpath("shards")
    assert path.read_bytes() == reference.getvalue().to_pybytes()
    assert pq.ParquetFile(path).num_row_groups == max(1, -(-n // 7))
    assert output.read_manifest("shards").equals(table)


def test_manifest_piece_with_the_wrong_schema_leaves_no_file(tmp_path):
    good = schema.to_table("shards", {"shard": ["a.tar"], "nsamples": [1], "bytes": [2], "sha256": ["ab"]})
    output = Output(str(tmp_path))
    with pytest.raises(ValueError, match="manifest shards: schema differs"):
        output.write_manifest_pieces("shards", [good, good.drop_columns(["sha256"])])
    assert list((tmp_path / "manifests").rglob("*.parquet*")) == []
