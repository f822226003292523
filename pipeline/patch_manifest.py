"""patches.parquet, written in pieces: the barrier's plan holds every patch column but the mask,
which is read back from pass 1's parts one partition at a time, so the driver never holds the
whole pool's masks (~650 B a patch as RLE)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from ..manifests import schema
from ..manifests.layout import Output
from ..stages import columns as C
from .barrier import Plan
from .partitions import PartStore, part_name


def write(output: Output, plan: Plan, store: PartStore) -> None:
    if C.MASK_RLE in plan.patches:  # a whole-image plan: its rows are images, with no mask
        output.write_manifest("patches", schema.to_table("patches", plan.patches))
    else:
        output.write_manifest_pieces("patches", _pieces(plan.patches, store))


def _pieces(patches: dict[str, np.ndarray], store: PartStore) -> Iterator[pa.Table]:
    """Per partition, its slice of the plan's rows (the plan keeps the parts' row order) with
    the masks from its part."""
    start = 0
    for p in range(store.n_partitions):
        part = store.read(p, columns=(C.PATCH_INDEX, C.PATCH_ID, C.MASK_RLE))
        is_patch = part[C.PATCH_INDEX] >= 0
        ids = part[C.PATCH_ID][is_patch]
        stop = start + len(ids)
        rows = {name: values[start:stop] for name, values in patches.items()}
        if not np.array_equal(rows[C.PATCH_ID], ids):
            raise RuntimeError(f"{part_name(p)}: its patches are not the plan's rows {start} to {stop - 1}")
        yield schema.to_table("patches", {**rows, C.MASK_RLE: part[C.MASK_RLE][is_patch]})
        start = stop
    if start != len(patches[C.PATCH_ID]):
        raise RuntimeError(f"pass-1 parts hold {start} patches, the plan {len(patches[C.PATCH_ID])}")
