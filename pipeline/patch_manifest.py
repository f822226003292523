"""patches.parquet, written in pieces: the barrier's plan holds every patch column but the mask,
which is read back from pass 1's parts one partition at a time, so the driver never holds the
whole pool's masks (~650 B a patch as RLE). A part keeps a mask as its COCO counts alone; the
manifest's mask_rle adds its size, the source image's, from the source row in the same part."""

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
        no_masks = pa.nulls(len(plan.patches[C.PATCH_ID]), schema.MASK_RLE)
        output.write_manifest("patches", schema.to_table("patches", {**plan.patches, C.MASK_RLE: no_masks}))
    else:
        output.write_manifest_pieces("patches", _pieces(plan.patches, store))


def _pieces(patches: dict[str, np.ndarray], store: PartStore) -> Iterator[pa.Table]:
    """Per partition, its slice of the plan's rows (the plan keeps the parts' row order) with
    the masks from its part."""
    start = 0
    for p in range(store.n_partitions):
        part = store.read(p, columns=(C.PATCH_INDEX, C.PATCH_ID, C.INPUT_INDEX, C.HEIGHT, C.WIDTH, C.MASK_RLE))
        is_patch = part[C.PATCH_INDEX] >= 0
        ids = part[C.PATCH_ID][is_patch]
        stop = start + len(ids)
        rows = {name: values[start:stop] for name, values in patches.items()}
        if not np.array_equal(rows[C.PATCH_ID], ids):
            raise RuntimeError(f"{part_name(p)}: its patches are not the plan's rows {start} to {stop - 1}")
        # A patch's mask covers its source image: the source row of the same input_index.
        sources = ~is_patch
        size_of = dict(zip(part[C.INPUT_INDEX][sources], zip(part[C.HEIGHT][sources], part[C.WIDTH][sources])))
        heights, widths = zip(*(size_of[i] for i in part[C.INPUT_INDEX][is_patch])) if len(ids) else ((), ())
        masks = schema.mask_rle_array(part[C.MASK_RLE][is_patch], heights, widths)
        yield schema.to_table("patches", {**rows, C.MASK_RLE: masks})
        start = stop
    if start != len(patches[C.PATCH_ID]):
        raise RuntimeError(f"pass-1 parts hold {start} patches, the plan {len(patches[C.PATCH_ID])}")
