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
import io
import json
import posixpath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema

SHARDS_DIR = "shards"
MANIFESTS_DIR = "manifests"
WORK_DIR = "work"
INDEX_JSON = "shards/index.json"
RUN_JSON = "run.json"
SCHEMA_VERSION_KEY = b"optidel.schema_version"


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
        expected = schema.SCHEMAS[name]
        if not table.schema.equals(expected):
            raise ValueError(f"manifest {name}: schema differs from manifests.schema.{name.upper()}")
        meta = dict(expected.metadata or {})
        meta[SCHEMA_VERSION_KEY] = schema.SCHEMA_VERSION.encode()
        buf = io.BytesIO()
        pq.write_table(
            table.replace_schema_metadata(meta),
            buf,
            compression="zstd",
            row_group_size=65536,
            write_statistics=True,
        )
        self.write_bytes(f"{MANIFESTS_DIR}/{name}.parquet", buf.getvalue())

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
