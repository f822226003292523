"""The pool's listing, on disk: every source reference in listing order, in a Parquet file the
driver writes as the inputs are enumerated (inputs.iter_sources) and reads back a row group at
a time. A list file of 10^8 lines never becomes 10^8 Python objects (about 20 GB): the driver
holds one row group (ROWS_PER_GROUP references) whatever the pool's size.

A source's listing position is its row number; partitions (pipeline/partitions.py) are spans
of positions. The file lives in a scratch folder under the temp folder (`TMPDIR`) for the
run's length: only the driver reads it (pass 1 hands Ray a wave of listing rows at a time,
pipeline/pass1.py).
"""

from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import dataclass
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from optidel import seeding

from ..stages import columns as C
from .inputs import SourceRef

ROWS_PER_GROUP = 65536  # references per row group: a few MB, the most the driver holds at once
SCHEMA = pa.schema(
    [(C.URI, pa.string()), (C.MEMBER, pa.string()), (C.OFFSET, pa.int64()), (C.LENGTH, pa.int64()), (C.VIDEO_SAMPLE, pa.int64())]
)


@dataclass(frozen=True)
class Listing:
    """A written listing: its file, how many sources it holds, and the sha256 that identifies
    it in a job record (one JSON line per reference, in order; pipeline/resume.py)."""

    path: str
    count: int
    sha256: str

    def __len__(self) -> int:
        return self.count

    @classmethod
    def write(cls, refs: Iterable[SourceRef], path: str) -> Listing:
        """Stream `refs` into a Parquet file at `path` (a local path), a row group at a time."""
        digest = hashlib.sha256()
        count = 0
        with pq.ParquetWriter(path, SCHEMA) as writer:
            for group in batched(refs, ROWS_PER_GROUP):
                for ref in group:
                    digest.update(_record(ref))
                columns = [pa.array(values, type=field.type) for values, field in zip(zip(*group), SCHEMA)]
                writer.write_table(pa.Table.from_arrays(columns, schema=SCHEMA), row_group_size=ROWS_PER_GROUP)
                count += len(group)
        return cls(path, count, digest.hexdigest())

    def all_rows(self) -> Iterator[dict]:
        return self.rows([range(self.count)])

    def rows(self, spans: Iterable[range]) -> Iterator[dict]:
        """Listing rows (INPUT_INDEX, URI, MEMBER, OFFSET, LENGTH) of the positions in `spans`
        (ascending, not overlapping), one dict each, reading each row group once at most."""
        parquet = pq.ParquetFile(self.path)
        group, columns = -1, None
        for span in spans:
            for position in span:
                if position // ROWS_PER_GROUP != group:
                    group = position // ROWS_PER_GROUP
                    columns = parquet.read_row_group(group).to_pydict()
                at = position - group * ROWS_PER_GROUP
                yield {C.INPUT_INDEX: position, **{name: columns[name][at] for name in SCHEMA.names}}

    def ref(self, position: int) -> SourceRef:
        row = next(self.rows([range(position, position + 1)]))
        return SourceRef(*(row[name] for name in SCHEMA.names))

    def sample(self, seed: int, n: int) -> list[int]:
        """The n positions with the smallest seeded hashes (seed, "train-source", position), in
        listing order: the proxy's training sources. A streaming top-n, so O(n) held."""
        keyed = ((seeding.derive(seed, "train-source", i), i) for i in range(self.count))
        return sorted(i for _, i in heapq.nsmallest(n, keyed))


def _record(ref: SourceRef) -> bytes:
    """A reference's line in the listing's digest. An image's has its four location fields
    only, as before videos were read, so a job recorded then still resumes."""
    fields = list(ref) if ref.video_sample >= 0 else list(ref)[:4]
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` consecutive items (the last one shorter), as a stream."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
