"""INPUT arguments -> source references (where each source's bytes are), deterministically.

An input is a directory tree, an image or video file, an uncompressed WebDataset tar, a brace
pattern of those (`pool-{000..009}.tar`), or a list file (.parquet, .csv, .txt) naming images,
videos or tars. Local paths and fsspec URLs (`file://`, `memory://`, object stores) are
accepted alike.

Order: inputs in argument order; within an input, files sorted by path and tar members in
archive order; a video's frames in time order. Tar members are located by (offset, length)
and read in place: nothing is ever extracted, so member names such as `../x.jpg` or `/abs.jpg`
are recorded as they are.

A video is one source per sampled frame: its header is read here (optidel.video.probe) for
its duration, and frame k is the one on screen at start + k / fps (`VideoSampling`). A video
that cannot be probed is listed as one source, which ingest records with the reason.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import tarfile
from typing import Iterator, NamedTuple, Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from braceexpand import braceexpand
from fsspec.implementations.local import LocalFileSystem

from optidel import video

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
SOURCE_EXTENSIONS = IMAGE_EXTENSIONS | video.VIDEO_EXTENSIONS
TAR_EXTENSION = ".tar"
LIST_EXTENSIONS = (".parquet", ".csv", ".txt")
COMPRESSED_TAR_EXTENSIONS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
LIST_COLUMNS = ("uri", "path")  # the column a list file names its sources in, by preference
LIST_BATCH_ROWS = 65536  # a Parquet list file's entries are read this many at a time


class InputError(ValueError):
    """An INPUT argument (or a list entry) that cannot be enumerated; names it and the reason."""

    def __init__(self, item: str, reason: str):
        super().__init__(f"input {item}: {reason}")
        self.item = item
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.item, self.reason)


class SourceRef(NamedTuple):
    uri: str  # the file, or the tar holding the member
    member: str  # tar member name; "" for plain files
    offset: int  # first byte of the member's data; -1 for plain files
    length: int  # the member's size; -1 for plain files
    video_sample: int = -1  # k: the video's frame on screen at start + k / fps; -1 for images


class VideoSampling(NamedTuple):
    """Which frames of a video are sources (ingest.video_fps, ingest.video_max_frames)."""

    fps: float = 1.0
    max_frames: int | None = None


DEFAULT_SAMPLING = VideoSampling()


def iter_sources(inputs: Sequence[str], sampling: VideoSampling = DEFAULT_SAMPLING) -> Iterator[SourceRef]:
    """Every source named by `inputs`, one at a time: a list file of 10^8 lines is read as it
    is listed, never held (pipeline/listing.py writes the stream to disk). Every input is
    checked to exist before any is listed, so a typo fails at once; a list file's missing
    entries are kept (ingest reports them)."""
    located = [(item, _locate(item)) for item in inputs]
    for item, locations in located:
        for fs, path in locations:
            for ref in _list_input(item, fs, path):
                yield from _frames(ref, sampling) if video.is_video(ref.member or ref.uri) else (ref,)


def list_sources(inputs: Sequence[str], sampling: VideoSampling = DEFAULT_SAMPLING) -> list[SourceRef]:
    """iter_sources as a list, for small pools (tests, benchmarks)."""
    return list(iter_sources(inputs, sampling))


def _frames(ref: SourceRef, sampling: VideoSampling) -> Iterator[SourceRef]:
    """A video's sampled frames, one reference each; the video itself, once, when it cannot be
    probed (ingest then records why, as for any bad source)."""
    try:
        stream = video.probe(ref.uri, ref.offset, ref.length)
    except video.VideoError:
        yield ref
        return
    for k in range(stream.sample_count(sampling.fps, sampling.max_frames)):
        yield ref._replace(video_sample=k)


def _locate(item: str) -> list[tuple[fsspec.AbstractFileSystem, str]]:
    """The existing file(s) or directory an input names; a brace pattern may name several."""
    if not item.strip():
        raise InputError(repr(item), "empty input")
    fs, path = _url_to_fs(item, item)
    if fs.exists(path):
        return [(fs, path)]
    if "{" not in item:
        raise InputError(item, "does not exist")
    expanded = sorted(braceexpand(item))
    if expanded == [item]:
        raise InputError(item, "does not exist (and its braces expand to nothing else)")
    locations = []
    for name in expanded:
        fs, path = _url_to_fs(name, item)
        if not fs.exists(path):
            raise InputError(item, f"pattern names {name}, which does not exist")
        locations.append((fs, path))
    return locations


def _list_input(item: str, fs, path: str) -> Iterator[SourceRef]:
    if fs.isdir(path):
        for found in sorted(fs.find(path)):
            if _extension(found) in SOURCE_EXTENSIONS:
                yield _plain(fs, found)
            elif _extension(found) == TAR_EXTENSION:
                yield from _list_tar(fs, found, strict=False)
        return
    lowered = path.lower()
    if _extension(path) in SOURCE_EXTENSIONS:
        yield _plain(fs, path)
    elif lowered.endswith(COMPRESSED_TAR_EXTENSIONS):
        raise InputError(item, "compressed tars cannot be read by offset; decompress it to a .tar")
    elif _extension(path) == TAR_EXTENSION:
        yield from _list_tar(fs, path, strict=True)
    elif lowered.endswith(LIST_EXTENSIONS):
        yield from _list_file(item, fs, path)
    else:
        kinds = ", ".join(sorted(SOURCE_EXTENSIONS))
        raise InputError(item, f"not a directory, image or video ({kinds}), .tar or list file")


def _list_tar(fs, path: str, strict: bool) -> Iterator[SourceRef]:
    """Regular-file image and video members in archive order. Headers are read by seeking past each
    member's data; a truncated tar yields the members whose headers are whole (a cut member's
    data then reads short and decodes as corrupt).

    A file that is not a tar at all is an InputError when it was named as an input (`strict`),
    but only one bad source when it was found in a directory or a list file: one stray file
    must not stop a pool of millions. It is then listed as a plain file, which ingest records
    as corrupt, with the reason."""
    uri = _uri(fs, path)
    with fs.open(path, "rb") as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except tarfile.ReadError as exc:
            if not strict:
                yield _plain(fs, path)
                return
            raise InputError(uri, f"not an uncompressed tar file ({exc})") from None
        with tar:
            try:
                for info in tar:
                    if info.isreg() and _extension(info.name) in SOURCE_EXTENSIONS:
                        yield SourceRef(uri, info.name, info.offset_data, info.size)
            except tarfile.ReadError:
                pass  # truncated after the members listed so far


def _list_file(item: str, fs, path: str) -> Iterator[SourceRef]:
    """Entries of a list file; relative entries resolve against the list file's directory. An
    entry ending in .tar that exists is listed member by member; any other entry is one source,
    whether or not it exists (ingest records a missing one)."""
    local = isinstance(fs, LocalFileSystem)
    base = os.path.dirname(path) if local else posixpath.dirname(path)
    for entry in _entries(item, fs, path):
        if "://" in entry:
            entry_fs, entry_path = _url_to_fs(entry, item)
        elif local:
            entry_fs, entry_path = fs, os.path.normpath(os.path.join(base, entry))
        else:
            entry_fs, entry_path = fs, posixpath.normpath(posixpath.join(base, entry))
        if _extension(entry_path) == TAR_EXTENSION and entry_fs.isfile(entry_path):
            yield from _list_tar(entry_fs, entry_path, strict=False)
        else:
            yield _plain(entry_fs, entry_path)


def _entries(item: str, fs, path: str) -> Iterator[str]:
    """_read_entries, with a read failure (even one half-way through) as this input's error."""
    try:
        yield from _read_entries(fs, path)
    except (OSError, ValueError, pa.ArrowException, csv.Error) as exc:
        raise InputError(item, f"cannot read list file: {exc}") from None


def _read_entries(fs, path: str) -> Iterator[str]:
    """Non-empty entries of a list file, in file order, read as a stream. Parquet: column
    `uri`, else `path`, else the first string column. CSV: the first row is a header; column
    `uri`, else `path`, else the first column. Text: one entry per line; blank lines and `#`
    comments skipped."""
    with fs.open(path, "rb") as f:
        if path.lower().endswith(".parquet"):
            parquet = pq.ParquetFile(f)
            column = _pick_column(parquet.schema_arrow)
            for batch in parquet.iter_batches(columns=[column], batch_size=LIST_BATCH_ROWS):
                yield from (v.strip() for v in batch.column(0).to_pylist() if v is not None and v.strip())
            return
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        if path.lower().endswith(".csv"):
            rows = csv.reader(text)
            header = [cell.strip().lower() for cell in next(rows, [])]
            index = next((header.index(name) for name in LIST_COLUMNS if name in header), 0)
            yield from (row[index].strip() for row in rows if len(row) > index and row[index].strip())
            return
        lines = (line.strip() for line in text)
        yield from (line for line in lines if line and not line.startswith("#"))


def _pick_column(schema: pa.Schema) -> str:
    for name in LIST_COLUMNS:
        if name in schema.names:
            return name
    for field in schema:
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            return field.name
    raise ValueError(f"no 'uri' or 'path' column and no string column among {schema.names}")


def _plain(fs, path: str) -> SourceRef:
    return SourceRef(_uri(fs, path), "", -1, -1)


def _uri(fs, path: str) -> str:
    """Local files as absolute paths without a protocol; anything else as its URL."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _url_to_fs(url: str, item: str):
    try:
        return fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise InputError(item, f"cannot open {url}: {exc}") from None


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def check_inputs(inputs: Sequence[str]) -> None:
    """InputError for the first input that does not exist, without listing any: the CLI's
    check before it creates OUT or imports torch."""
    for item in inputs:
        _locate(item)
