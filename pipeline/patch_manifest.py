"""patches.parquet, written in pieces. When the selection ran over the parts, Ray tasks label each
part's rows (pipeline/part_selection.py, image_selection.py) and the driver writes one piece at a
time, read from the spool (spool.py). Otherwise the barrier's plan holds every patch column but
the mask, which is read back from pass 1's parts one partition at a time, so the driver never
holds the whole pool's masks (~650 B a patch as RLE). A part keeps a mask as its COCO counts
alone; partitions.patch_masks adds its size, the source image's, from the source row in the same
part."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from ..manifests import schema
from ..manifests.layout import Output
from ..stages import columns as C
from .barrier import Plan
from .partitions import MASK_COLUMNS, PartStore, part_name, patch_masks


def write(output: Output, plan: Plan, store: PartStore) -> int:
    """Write patches.parquet; returns its rows (the candidate patches)."""
    if plan.labels is not None:
        pieces = _counted(plan.labels.manifest_pieces(store))
    elif C.MASK_RLE in plan.patches:  # a whole-image plan: its rows are images, with no mask
        no_masks = pa.nulls(len(plan.patches[C.PATCH_ID]), schema.MASK_RLE)
        pieces = _counted([schema.to_table("patches", {**plan.patches, C.MASK_RLE: no_masks})])
    else:
        pieces = _counted(_pieces(plan.patches, store))
    output.write_manifest_pieces("patches", pieces)
    return pieces.rows


class _counted:
    """The pieces, passed through, counting their rows."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.rows = 0

    def __iter__(self):
        for piece in self.pieces:
            self.rows += piece.num_rows
            yield piece


def _pieces(patches: dict[str, np.ndarray], store: PartStore) -> Iterator[pa.Table]:
    """Per partition, its slice of the plan's rows (the plan keeps the parts' row order) with
    the masks from its part."""
    start = 0
    for p in range(store.n_partitions):
        part = store.read(p, columns=(C.PATCH_INDEX, C.PATCH_ID, *MASK_COLUMNS))
        is_patch = part[C.PATCH_INDEX] >= 0
        ids = part[C.PATCH_ID][is_patch]
        stop = start + len(ids)
        rows = {name: values[start:stop] for name, values in patches.items()}
        if not np.array_equal(rows[C.PATCH_ID], ids):
            raise RuntimeError(f"{part_name(p)}: its patches are not the plan's rows {start} to {stop - 1}")
        yield schema.to_table("patches", {**rows, C.MASK_RLE: patch_masks(part)})
        start = stop
    if start != len(patches[C.PATCH_ID]):
        raise RuntimeError(f"pass-1 parts hold {start} patches, the plan {len(patches[C.PATCH_ID])}")
