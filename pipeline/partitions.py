"""Pass-1 results persisted per input partition, so that a rerun on the same OUT resumes.

The listing is cut into fixed partitions of `ingest.partition_size` sources in listing order;
partition p's rows (everything pass 1 keeps: source rows, patch rows, scores, embeddings) land
in OUT/work/pass1/part-{p:06d}.parquet, written under a temporary name and renamed, so a part
that exists is whole. A rerun feeds Ray only the partitions with no part.

Ray Data may cut one partition's rows (even one source's rows) across several output batches,
and deliver them in any order, so the driver buffers rows by partition and writes a part only
once every row of it has arrived. It knows how many that is because every source yields one
source row (patch_index -1) that carries ROWS_OF_SOURCE, the number of rows its source
produced, patch rows included. Rows are keyed by (input_index, patch_index): a row that a
retried task delivers twice is kept once.
"""

from __future__ import annotations

import io
import logging
import math
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..manifests import schema
from ..manifests.layout import WORK_DIR, Output
from ..stages import columns as C

log = logging.getLogger("optidel")

PASS1_DIR = f"{WORK_DIR}/pass1"
ROWS_OF_SOURCE = "rows_of_source"  # added by pass 1's wrappers, dropped before a part is written


def part_name(partition: int) -> str:
    return f"{PASS1_DIR}/part-{partition:06d}.parquet"


def part_bytes(table: pa.Table) -> bytes:
    """A part's Parquet file. Fixed writer settings: a part's bytes depend on its rows only."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=65536)
    return buf.getvalue()


class PartStore:
    """The pass-1 parts of one job: which partitions are done, writing one, reading them all."""

    def __init__(self, output: Output, n_sources: int, partition_size: int):
        self.output = output
        self.n_sources = n_sources
        self.size = partition_size
        self.n_partitions = -(-n_sources // partition_size)

    def sources_of(self, partition: int) -> range:
        start = partition * self.size
        return range(start, min(start + self.size, self.n_sources))

    def done(self) -> set[int]:
        """Partitions whose part exists (a part under its final name is whole)."""
        if not self.output.exists(PASS1_DIR):
            return set()
        names = {posixpath.basename(p) for p in self.output.fs.ls(self.output.path(PASS1_DIR), detail=False)}
        return {p for p in range(self.n_partitions) if posixpath.basename(part_name(p)) in names}

    def write(self, partition: int, rows: dict[str, np.ndarray]) -> None:
        table = pa.table({name: _to_arrow(values) for name, values in rows.items()})
        self.output.write_bytes(part_name(partition), part_bytes(table))

    def read(self, partition: int, columns: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """One partition's rows: `columns` (default all) less `skip`, as pass 1 streamed them."""
        with self.output.fs.open(self.output.path(part_name(partition)), "rb") as f:
            part = pq.ParquetFile(f)
            names = [n for n in (columns or part.schema_arrow.names) if n not in skip]
            table = part.read(columns=names)
        return {name: _to_numpy(table.column(name)) for name in names}

    def source_rows(self, partition: int, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The `columns` of one partition's source rows (PATCH_INDEX -1; every row, in a part
        that pass 1 wrote without patches)."""
        with self.output.fs.open(self.output.path(part_name(partition)), "rb") as f:
            part = pq.ParquetFile(f)
            has_patches = C.PATCH_INDEX in part.schema_arrow.names
            table = part.read(columns=[*columns, C.PATCH_INDEX] if has_patches else list(columns))
        rows = {name: _to_numpy(table.column(name)) for name in columns}
        return C.take(rows, _to_numpy(table.column(C.PATCH_INDEX)) < 0) if has_patches else rows

    def clear(self) -> None:
        if self.output.exists(PASS1_DIR):
            self.output.fs.rm(self.output.path(PASS1_DIR), recursive=True)


def part_groups(n_partitions: int) -> list[list[int]]:
    """The partitions in groups of about sqrt(P) consecutive ones, for steps whose tasks each
    read a group: sqrt(P) tasks of sqrt(P) parts, so that a step that also pairs every group
    with every other (a rank, a shuffle) costs P pairs, not P^2."""
    size = max(1, math.isqrt(n_partitions))
    return [list(range(start, min(start + size, n_partitions))) for start in range(0, n_partitions, size)]


class PartitionSink:
    """Receives pass 1's streamed batches and writes each pending partition's part as soon as
    all of its rows are in (see the module docstring)."""

    def __init__(self, store: PartStore, pending: list[int]):
        self.store = store
        self._buffers: dict[int, list[dict[str, np.ndarray]]] = {p: [] for p in pending}
        self._expected: dict[int, dict[int, int]] = {p: {} for p in pending}  # input_index -> rows
        self._seen: dict[int, set[tuple[int, int]]] = {p: set() for p in pending}
        self.written: set[int] = set()

    def unfinished(self) -> list[int]:
        return sorted(self._buffers)

    def add(self, batch: dict[str, np.ndarray]) -> None:
        if len(batch.get(C.INPUT_INDEX, ())) == 0:
            return  # an empty block may come without columns
        index = np.asarray(batch[C.INPUT_INDEX])
        partition = index // self.store.size
        patch = np.asarray(batch[C.PATCH_INDEX]) if C.PATCH_INDEX in batch else np.full(len(index), -1)
        for p in np.unique(partition).tolist():
            if p in self.written:
                continue  # a retried batch's copy of rows already written
            if p not in self._buffers:
                raise RuntimeError(f"pass 1: rows of partition {p}, which was not asked for")
            rows = np.flatnonzero(partition == p)
            self._buffers[p].append(C.take(batch, rows))
            self._seen[p].update(zip(index[rows].tolist(), patch[rows].tolist()))
            is_source = rows[patch[rows] < 0]
            self._expected[p].update(zip(index[is_source].tolist(), batch[ROWS_OF_SOURCE][is_source].tolist()))
            if self._complete(p):
                self._write(p)

    def _complete(self, p: int) -> bool:
        expected = self._expected[p]
        return len(expected) == len(self.store.sources_of(p)) and len(self._seen[p]) == sum(expected.values())

    def _write(self, p: int) -> None:
        parts = self._buffers.pop(p)
        del self._expected[p], self._seen[p]
        rows = C.concat(parts)
        del rows[ROWS_OF_SOURCE]
        index = rows[C.INPUT_INDEX]
        patch = rows[C.PATCH_INDEX] if C.PATCH_INDEX in rows else np.full(len(index), -1)
        order = np.lexsort((patch, index))
        # After sorting, a row equal in key to the one before it is a retried duplicate.
        keep = order[np.r_[True, (np.diff(index[order]) != 0) | (np.diff(patch[order]) != 0)]]
        self.store.write(p, {name: values[keep] for name, values in rows.items()})
        self.written.add(p)
        log.info("pass 1: partition %d of %d done (%d rows)", p + 1, self.store.n_partitions, len(keep))


def _to_arrow(values: np.ndarray) -> pa.Array:
    if values.ndim == 2:  # embeddings, one fixed-size vector per row
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1)), values.shape[1])
    if values.dtype == object or values.dtype.kind == "U":
        return pa.array([str(v) for v in values], type=pa.string())
    return pa.array(values)


def _to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """Back to the dtypes pass 1 streams: strings as object arrays, vectors as 2-D arrays."""
    array = column.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        return array.flatten().to_numpy().reshape(len(array), array.type.list_size)
    if pa.types.is_string(array.type):
        # Through a dictionary, so that equal strings share one Python object: a source's
        # patches all name it, and a task may hold every row of a part.
        encoded = array.dictionary_encode()
        return np.array(encoded.dictionary.to_pylist(), dtype=object)[encoded.indices.to_numpy()]
    return array.to_numpy()


# What patches.parquet's mask_rle needs of a part: each patch's COCO counts and its source's size.
MASK_COLUMNS = (C.INPUT_INDEX, C.HEIGHT, C.WIDTH, C.MASK_RLE)


def patch_masks(part: dict[str, np.ndarray]) -> pa.StructArray:
    """The mask_rle column of a part's patch rows (PATCH_INDEX >= 0, in order), read with
    MASK_COLUMNS: a mask covers its source image, the source row of the same input_index."""
    is_patch = part[C.PATCH_INDEX] >= 0
    sources = ~is_patch
    size_of = dict(zip(part[C.INPUT_INDEX][sources], zip(part[C.HEIGHT][sources], part[C.WIDTH][sources])))
    sizes = [size_of[i] for i in part[C.INPUT_INDEX][is_patch]]
    return schema.mask_rle_array(part[C.MASK_RLE][is_patch], [h for h, _ in sizes], [w for _, w in sizes])
