"""Sources' pixels read again after pass 1, exactly as ingest read them, and checked against
the id pass 1 recorded: for pass 2's tiles, the lineage view and `verify --sources`. An image is
its bytes (id: their sha256); a video frame is the frame on screen at its recorded time (id:
optidel.video.frame_id of its pixels), and the frames asked of one video are decoded in one
pass, in time order, as ingest decoded them."""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import numpy as np

from . import imageio, video

# The frames asked of one video at once: a generous bound on decoding them.
FRAMES_TIME_LIMIT_S = 600.0


class SourceChanged(ValueError):
    """A source whose pixels are not what pass 1 saw, or that no longer decodes; the message
    names it and the reason."""


class SourceRead(NamedTuple):
    """Where a source is (offset/length: a tar member's data, else -1; frame_time: a video
    frame's time in seconds, else NaN), the id it must have, and its name in errors."""

    where: str
    uri: str
    offset: int
    length: int
    frame_time: float
    source_id: str


def read_pixels(read: SourceRead, *, max_pixels: int, min_side: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) of one source; SourceChanged unless its id is read.source_id."""
    return next(read_all([read], max_pixels=max_pixels, min_side=min_side))[1]


def read_all(reads: list[SourceRead], *, max_pixels: int, min_side: int) -> Iterator[tuple[int, np.ndarray]]:
    """(position in `reads`, RGB pixels) for every read, one at a time: images in order, then
    each video's frames in one decoding pass. SourceChanged at the first source that is not as
    pass 1 saw it."""
    videos: dict[tuple[str, int, int], list[int]] = {}
    for i, read in enumerate(reads):
        if math.isnan(read.frame_time):
            yield i, _image(read, max_pixels, min_side)
        else:
            videos.setdefault((read.uri, read.offset, read.length), []).append(i)
    for positions in videos.values():
        yield from _frames(reads, sorted(positions, key=lambda i: reads[i].frame_time), max_pixels, min_side)


def _image(read: SourceRead, max_pixels: int, min_side: int) -> np.ndarray:
    try:
        data = imageio.read_bytes(read.uri, read.offset, read.length, max_bytes=max(read.length, imageio.DEFAULT_MAX_BYTES))
    except imageio.SourceReadError as exc:
        raise SourceChanged(f"{read.where}: cannot read: {exc.reason}") from None
    digest = imageio.sha256_hex(data)
    if digest != read.source_id:
        raise SourceChanged(f"{read.where}: content sha256 {digest} is not the source_id {read.source_id} recorded in pass 1")
    decoded = imageio.decode(data, max_pixels=max_pixels, min_side=min_side)
    if decoded.image is None:
        raise SourceChanged(f"{read.where}: cannot decode ({decoded.status}: {decoded.error})")
    return decoded.image


def _frames(reads: list[SourceRead], positions: list[int], max_pixels: int, min_side: int) -> Iterator[tuple[int, np.ndarray]]:
    """The frames at `positions` of `reads` (one video's, in time order), decoded in one pass."""
    first = reads[positions[0]]
    frames = video.decode_frames(
        first.uri, first.offset, first.length, lambda stream: [video.pts_of(stream, reads[i].frame_time) for i in positions],
        time_limit_s=FRAMES_TIME_LIMIT_S, max_pixels=max_pixels, min_side=min_side,
    )
    try:
        next(frames)  # the stream
    except video.VideoError as exc:
        raise SourceChanged(f"{first.where}: cannot decode ({exc.status}: {exc.reason})") from None
    for i, frame in zip(positions, frames):
        read = reads[i]
        if frame.image is None:
            raise SourceChanged(f"{read.where}: cannot decode the frame at {read.frame_time:.6f} s ({frame.error})")
        digest = video.frame_id(frame.image)
        if digest != read.source_id:
            raise SourceChanged(
                f"{read.where}: the frame at {read.frame_time:.6f} s decodes to {digest}, not the source_id "
                f"{read.source_id} recorded in pass 1 (the file, or the decoder, changed)"
            )
        yield i, frame.image
