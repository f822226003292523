"""A source's pixels read again from its sources.parquet row, the way ingest read them and
checked against the id it recorded: for the lineage view, and for `optidel verify --sources`,
which re-reads a sample of sources and names any that drifted (a file replaced, or a decoder
upgrade that decodes a video's frames differently)."""

from __future__ import annotations

import tarfile

import fsspec
import numpy as np

from optidel.sources import SourceChanged, SourceRead, read_pixels

from . import layout, schema

DEFAULT_SAMPLE = 100  # sources re-read by `verify --sources` unless told otherwise


def source_pixels(src: dict) -> np.ndarray:
    """RGB uint8 of a sources.parquet row; SourceChanged (a ValueError) naming it when its
    pixels are not what pass 1 saw."""
    offset, length = tar_member_range(src["uri"], src["member"]) if src["member"] else (-1, -1)
    frame_time = float("nan") if src.get("frame_time") is None else src["frame_time"]
    read = SourceRead(schema.source_where(src), src["uri"], offset, length, frame_time, src["source_id"])
    # The manifest's size passed ingest's limits already; allowing exactly that many pixels
    # keeps the bomb check without needing the run's config.
    return read_pixels(read, max_pixels=max(1, src["width"] * src["height"]), min_side=1)


def tar_member_range(uri: str, member: str) -> tuple[int, int]:
    """(offset, length) of a member's data in an uncompressed tar, found by walking its headers."""
    with fsspec.open(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:
            if info.name == member:
                return info.offset_data, info.size
    raise SourceChanged(f"{uri}: member {member} not found")


def check_sources(out: str, sample: int = DEFAULT_SAMPLE) -> tuple[int, int, list[str]]:
    """Re-read `sample` of OUT's ok sources (0: all), chosen by their ids (sha256 values, so an
    even spread over the pool, the same on every call). Returns (checked, ok sources, problems)."""
    rows = layout.Output(out).read_manifest("sources", filters=[("status", "=", schema.OK)]).to_pylist()
    rows.sort(key=lambda r: r["source_id"])
    chosen = rows if sample == 0 else rows[:sample]
    chosen.sort(key=lambda r: r["input_index"])  # a video's frames in time order
    problems = []
    for src in chosen:  # one at a time: a changed source is named, and the others still checked
        try:
            source_pixels(src)
        except (OSError, ValueError) as exc:
            problems.append(str(exc))
    return len(chosen), len(rows), problems
