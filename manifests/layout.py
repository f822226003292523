"""Where everything lives under an output directory, and how a file lands there whole.

OUT/shards/shard-000000.tar ...   WebDataset shards
OUT/shards/index.json             wids shard index
OUT/manifests/{sources,patches,samples,shards}.parquet
OUT/run.json                      resolved config, versions, counts, timings, V-information
OUT/work/                         intermediate state (proxy checkpoint, candidates)

OUT may be a local path or an fsspec URL; every file is written under a temporary name and
renamed only when complete, so a final name only ever holds a whole file.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
from typing import Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema

SHARDS_DIR = "shards"
MANIFESTS_DIR = "manifests"
WORK_DIR = "work"
INDEX_JSON = "shards/index.json"
INDEX_KIND = "wids-shard-index-v1"  # index.json's "__kind__"
RUN_JSON = "run.json"
SCHEMA_VERSION_KEY = b"optidel.schema_version"
ROW_GROUP_ROWS = 65536


class Output:
    """An output directory on any fsspec file system."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    @contextlib.contextmanager
    def open_atomic(self, relpath: str):
        """Write to `relpath.tmp`, rename to `relpath` only if the block finishes."""
        final = self.path(relpath)
        tmp = final + ".tmp"
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        try:
            with self.fs.open(tmp, "wb") as f:
                yield f
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(tmp)
            raise
        self.fs.mv(tmp, final)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        with self.open_atomic(relpath) as f:
            f.write(data)

    def write_json(self, relpath: str, obj) -> None:
        self.write_bytes(relpath, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, relpath: str):
        with self.fs.open(self.path(relpath), "rb") as f:
            return json.load(f)

    def write_manifest(self, name: str, table: pa.Table) -> None:
        """Write manifest `name` (a key of schema.SCHEMAS) with its schema version in the
        file metadata. Fixed writer settings keep the bytes reproducible."""
        self.write_manifest_pieces(name, [table])

    def write_manifest_pieces(self, name: str, pieces: Iterable[pa.Table]) -> None:
        """write_manifest for a table that arrives in pieces, never held whole. Row groups are
        cut and written as one write of the whole table would cut them, so the file's bytes do
        not depend on how the rows were split into pieces."""
        expected = schema.SCHEMAS[name]
        meta = dict(expected.metadata or {})
        meta[SCHEMA_VERSION_KEY] = schema.SCHEMA_VERSION.encode()
        settings = {"compression": "zstd", "write_statistics": True}
        with self.open_atomic(f"{MANIFESTS_DIR}/{name}.parquet") as f, pq.ParquetWriter(
            f, expected.with_metadata(meta), **settings
        ) as writer:
            pending: list[pa.Table] = []
            rows = 0
            wrote = False
            for piece in pieces:
                if not piece.schema.equals(expected):
                    raise ValueError(f"manifest {name}: schema differs from manifests.schema.{name.upper()}")
                pending.append(piece)
                rows += piece.num_rows
                while rows >= ROW_GROUP_ROWS:
                    joined = pa.concat_tables(pending)
                    # One chunk per column, as a whole table's slice has: chunk boundaries
                    # would move the writer's page boundaries.
                    writer.write_table(joined.slice(0, ROW_GROUP_ROWS).combine_chunks(), row_group_size=ROW_GROUP_ROWS)
                    pending, rows, wrote = [joined.slice(ROW_GROUP_ROWS)], rows - ROW_GROUP_ROWS, True
            if rows or not wrote:
                rest = pa.concat_tables(pending) if pending else expected.empty_table()
                writer.write_table(rest.combine_chunks(), row_group_size=ROW_GROUP_ROWS)

    def read_manifest(self, name: str) -> pa.Table:
        path = self.path(MANIFESTS_DIR, f"{name}.parquet")
        with self.fs.open(path, "rb") as f:
            table = pq.read_table(f)
        version = (table.schema.metadata or {}).get(SCHEMA_VERSION_KEY, b"?").decode()
        if version != schema.SCHEMA_VERSION:
            raise ValueError(
                f"{path}: manifest schema version {version}, this optidel reads {schema.SCHEMA_VERSION}"
            )
        return table


class NotAnOutputError(ValueError):
    """OUT, given to a command that reads an output (verify, inspect, report), holds none."""


def require_output(url: str) -> Output:
    """OUT as an Output, or NotAnOutputError saying in one line what OUT is instead."""
    output = Output(url)
    fs = output.fs
    if not fs.exists(output.root):
        raise NotAnOutputError(f"{url}: no such directory")
    if not fs.isdir(output.root):
        raise NotAnOutputError(f"{url}: not a directory")
    if output.exists(MANIFESTS_DIR, "samples.parquet"):
        return output
    if output.exists(WORK_DIR, "job.json"):
        raise NotAnOutputError(f"{url}: an unfinished optidel run (no manifests yet); rerun `optidel run` to finish it")
    raise NotAnOutputError(f"{url}: not an optidel output (no {MANIFESTS_DIR}/samples.parquet)")
