"""The WebDataset shard writer: a driver-side sink that turns encoded samples into tar shards
with byte-reproducible headers, plus the wids shard index.

Why not Ray's `write_webdataset` or webdataset's `ShardWriter`: the first stamps the current
time on every member and rejects dotted keys, the second leaves an empty tar behind on an
empty run. Here every header is fixed (mtime 0, uid/gid 0, no user/group names, mode 0o644,
USTAR format, so no PAX records and no timestamps anywhere), members of one sample are
adjacent in the order given, and a shard is opened only when its first sample arrives.

The archive is written header by header (`TarInfo.tobuf`) rather than through `TarFile`, so
it ends with exactly the two zero blocks POSIX asks for, not `TarFile`'s padding to a 10 KiB
record: a shard's size is then the sum of its samples' sizes plus 1024 bytes, which is what
the `max_bytes` budget counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import tarfile
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from ..manifests import layout, schema

BLOCK = tarfile.BLOCKSIZE
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
TAR_FORMAT = tarfile.USTAR_FORMAT
USTAR_NAME_MAX = 100  # bytes; keys carry no "/", so the USTAR prefix field cannot help


@dataclass(frozen=True)
class SampleLocation:
    shard: str  # file name under OUT/shards/
    index_in_shard: int
    members: list[str]  # tar member names, in archive order


@dataclass(frozen=True)
class ShardRecord:
    shard: str
    nsamples: int
    bytes: int
    sha256: str


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def sample_json(fields: dict) -> bytes:
    """The json member: canonical JSON (sorted keys, no spaces, no NaN) so its bytes are
    reproducible. `optidel verify` expects `sample_key` and `patch_ids` in it."""
    missing = {"sample_key", "patch_ids"} - fields.keys()
    if missing:
        raise ValueError(f"sample json: missing fields {sorted(missing)}")
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(TAR_FORMAT, encoding="utf-8", errors="strict")


def _encode_sample(key: str, members: Sequence[tuple[str, bytes]]) -> tuple[list[str], bytes]:
    """Validate a sample and return its member names and its tar bytes (headers + padded data)."""
    if not key or "." in key or "/" in key or "\\" in key:
        raise ValueError(f"sample key {key!r}: must be non-empty with no '.', '/' or '\\'")
    if not members:
        raise ValueError(f"sample {key}: no members")
    names: list[str] = []
    parts: list[bytes] = []
    for ext, data in members:
        if not ext or ext.startswith(".") or "/" in ext:
            raise ValueError(f"sample {key}: bad member extension {ext!r}")
        name = f"{key}.{ext}"
        if name in names:
            raise ValueError(f"sample {key}: member {name} given twice")
        if len(name.encode()) > USTAR_NAME_MAX:
            raise ValueError(f"sample {key}: member name {name} longer than {USTAR_NAME_MAX} bytes")
        data = bytes(data)
        names.append(name)
        parts.append(_member_header(name, len(data)))
        parts.append(data)
        parts.append(b"\0" * (math.ceil(len(data) / BLOCK) * BLOCK - len(data)))
    return names, b"".join(parts)


class _Aborted(Exception):
    pass


class ShardWriter:
    """Writes samples into OUT/shards/shard-NNNNNN.tar; `close()` finishes the last shard and
    writes OUT/index.json. Use as a context manager so an error removes the partial
    shard's temporary file instead of leaving it behind."""

    def __init__(self, output: layout.Output, max_count: int, max_bytes: int):
        if max_count < 1 or max_bytes < 1:
            raise ValueError(f"max_count ({max_count}) and max_bytes ({max_bytes}) must be >= 1")
        self.output = output
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.records: list[ShardRecord] = []
        self._stack: contextlib.ExitStack | None = None
        self._file = None
        self._hash = None
        self._count = 0
        self._bytes = 0
        self._closed = False

    def write(self, key: str, members: Sequence[tuple[str, bytes]]) -> SampleLocation:
        """Append one sample; members are (extension, data) pairs written as `{key}.{ext}`."""
        if self._closed:
            raise RuntimeError("ShardWriter: write() after close()")
        names, blob = _encode_sample(key, members)
        if self._file is not None and (
            self._count + 1 > self.max_count or self._bytes + len(blob) + len(END_OF_ARCHIVE) > self.max_bytes
        ):
            self._finish_shard()
        if self._file is None:
            self._open_shard()
        self._put(blob)
        location = SampleLocation(self._current_name(), self._count, names)
        self._count += 1
        return location

    def close(self) -> list[ShardRecord]:
        """Finish the open shard (if any) and write the wids index; returns one record per shard."""
        if not self._closed:
            if self._file is not None:
                self._finish_shard()
            self.output.write_json(layout.INDEX_JSON, index_json(self.records))
            self._closed = True
        return list(self.records)

    def abort(self) -> None:
        """Drop the open shard's temporary file; finished shards stay."""
        if self._stack is not None:
            stack, self._stack, self._file = self._stack, None, None
            # open_atomic removes the temporary file when the block ends in an exception.
            with contextlib.suppress(_Aborted):
                stack.__exit__(_Aborted, _Aborted(), None)
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _current_name(self) -> str:
        return shard_name(len(self.records))

    def _open_shard(self) -> None:
        self._stack = contextlib.ExitStack()
        self._file = self._stack.enter_context(
            self.output.open_atomic(f"{layout.SHARDS_DIR}/{self._current_name()}")
        )
        self._hash = hashlib.sha256()
        self._count = 0
        self._bytes = 0

    def _put(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._bytes += len(data)

    def _finish_shard(self) -> None:
        self._put(END_OF_ARCHIVE)
        record = ShardRecord(self._current_name(), self._count, self._bytes, self._hash.hexdigest())
        stack, self._stack, self._file = self._stack, None, None
        stack.close()  # renames <name>.tmp to <name>
        self.records.append(record)


def index_json(records: Sequence[ShardRecord]) -> dict:
    """The wids shard index (what `wids.ShardListDataset` reads); urls are relative to the
    index file, which sits at OUT's top (not among the shards, which readers glob), so the
    output directory can move."""
    return {
        "__kind__": layout.INDEX_KIND,
        "wids_version": 1,
        "shardlist": [
            {"url": f"{layout.SHARDS_DIR}/{r.shard}", "nsamples": r.nsamples, "filesize": r.bytes} for r in records
        ],
    }


def shards_table(records: Sequence[ShardRecord]) -> pa.Table:
    """shards.parquet from the writer's records."""
    return schema.to_table(
        "shards",
        {
            "shard": [r.shard for r in records],
            "nsamples": [r.nsamples for r in records],
            "bytes": [r.bytes for r in records],
            "sha256": [r.sha256 for r in records],
        },
    )
