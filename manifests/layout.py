"""Where everything lives under an output directory, and how a file lands there whole.

OUT/index.json                    wids shard index (urls relative to OUT)
OUT/shards/shard-000000.tar ...   WebDataset shards, and nothing else
OUT/manifests/NAME/NAME.parquet   one folder per table: sources, patches, samples, shards
OUT/manifests/README.md           what each table holds
OUT/run.json                      resolved config, versions, counts, timings, V-information
OUT/work/                         intermediate state (proxy checkpoint, candidates)

Readers glob folders, so each folder holds one kind of thing: `OUT/shards/` only tars (the
index sits above it), so `ray.data.read_webdataset(OUT/shards/)` or HF datasets'
`data_files=OUT/shards/*` read shards and nothing else; each table has its own folder, so
`OUT/manifests/patches/` or DuckDB's `'OUT/manifests/patches/*.parquet'` is one table. Reading
`OUT/manifests/` whole would union the four tables into nonsense (pyarrow and pandas search
folders recursively): manifests/README.md is not Parquet, so that read fails instead, naming a
file that says what to read.

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
INDEX_JSON = "index.json"
INDEX_KIND = "wids-shard-index-v1"  # index.json's "__kind__"
RUN_JSON = "run.json"
MANIFESTS_README = f"{MANIFESTS_DIR}/README.md"
SCHEMA_VERSION_KEY = b"optidel.schema_version"
ROW_GROUP_ROWS = 65536

_README_TEXT = """\
optidel manifests: one folder per table, each a Parquet dataset of its own.

  sources/   one row per listed source (status, size, where it is)
  patches/   one row per candidate patch (box, mask, score, cluster, rank, selected or why not)
  samples/   one row per output sample (shard, members, sha256, its patches in slot order)
  shards/    one row per shard (nsamples, bytes, sha256)

Read a table by its folder: pandas.read_parquet("manifests/patches/"), DuckDB
'manifests/patches/*.parquet'. This folder as a whole is not one table, and this file is here
so that reading it as one fails instead of mixing the four. Columns: optidel's
manifests/schema.py and its README.
"""


def manifest_relpath(name: str) -> str:
    """Where manifest `name` (a key of schema.SCHEMAS) lives under OUT."""
    return f"{MANIFESTS_DIR}/{name}/{name}.parquet"


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
        if not self.exists(MANIFESTS_README):
            self.write_bytes(MANIFESTS_README, _README_TEXT.encode())
        with self.open_atomic(manifest_relpath(name)) as f, pq.ParquetWriter(
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

    def read_manifest(self, name: str, columns: list[str] | None = None, filters: list | None = None) -> pa.Table:
        """Manifest `name`, or its `columns` and the rows that pass `filters` (pyarrow's filter
        syntax); FileNotFoundError when missing, ValueError when of another schema version."""
        path = self.path(manifest_relpath(name))
        if not self.fs.exists(path):
            raise FileNotFoundError(f"{path}: missing (is {self.url} an optidel output directory?)")
        try:
            table = pq.read_table(path, filesystem=self.fs, columns=columns, filters=filters)
        except (OSError, pa.ArrowInvalid) as exc:
            raise ValueError(f"{path}: cannot read: {exc}") from exc
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
    if output.exists(manifest_relpath("samples")):
        return output
    if output.exists(MANIFESTS_DIR, "samples.parquet"):
        raise NotAnOutputError(
            f"{url}: written by an older optidel (flat manifests/*.parquet); rerun it with `optidel run --overwrite`"
        )
    if output.exists(WORK_DIR, "job.json"):
        raise NotAnOutputError(f"{url}: an unfinished optidel run (no manifests yet); rerun `optidel run` to finish it")
    raise NotAnOutputError(f"{url}: not an optidel output (no {manifest_relpath('samples')})")


def shard_urls(out: str) -> list[str]:
    """OUT's shards in index order, as `out` joined with each index url: what webdataset,
    ray.data and HF datasets take (`optidel.shards(OUT)`)."""
    index = Output(out).read_json(INDEX_JSON)
    return [posixpath.join(out.rstrip("/"), entry["url"]) for entry in index["shardlist"]]
