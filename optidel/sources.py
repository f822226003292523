"""A source's pixels read again after pass 1, exactly as ingest read them, and checked against
the id pass 1 recorded: for pass 2's tiles, the lineage view and `verify --sources`. An image is
its bytes (id: their sha256); a video frame is the frame on screen at its recorded time (id:
optidel.video.frame_id of its pixels)."""

from __future__ import annotations

import math

import numpy as np

from . import imageio, video

# A frame is one target: the batch limit on decoding it is generous.
FRAME_TIME_LIMIT_S = 600.0


class SourceChanged(ValueError):
    """A source whose pixels are not what pass 1 saw, or that no longer decodes; the message
    names it and the reason."""


def read_pixels(
    where: str, uri: str, offset: int, length: int, frame_time: float, source_id: str, *, max_pixels: int, min_side: int
) -> np.ndarray:
    """RGB uint8 (H, W, 3) of the source at uri (offset/length: a tar member's data, else -1),
    the video frame at `frame_time` seconds when that is not NaN; SourceChanged unless its id is
    `source_id`. `where` names the source in errors."""
    if frame_time is not None and not math.isnan(frame_time):
        return _frame(where, uri, offset, length, frame_time, source_id, max_pixels, min_side)
    try:
        data = imageio.read_bytes(uri, offset, length, max_bytes=max(length, imageio.DEFAULT_MAX_BYTES))
    except imageio.SourceReadError as exc:
        raise SourceChanged(f"{where}: cannot read: {exc.reason}") from None
    digest = imageio.sha256_hex(data)
    if digest != source_id:
        raise SourceChanged(f"{where}: content sha256 {digest} is not the source_id {source_id} recorded in pass 1")
    decoded = imageio.decode(data, max_pixels=max_pixels, min_side=min_side)
    if decoded.image is None:
        raise SourceChanged(f"{where}: cannot decode ({decoded.status}: {decoded.error})")
    return decoded.image


def _frame(where, uri, offset, length, seconds, source_id, max_pixels, min_side) -> np.ndarray:
    try:
        _, (frame,) = video.decode_at(
            uri, offset, length, lambda stream: [video.pts_of(stream, seconds)],
            time_limit_s=FRAME_TIME_LIMIT_S, max_pixels=max_pixels, min_side=min_side,
        )
    except video.VideoError as exc:
        raise SourceChanged(f"{where}: cannot decode ({exc.status}: {exc.reason})") from None
    if frame.image is None:
        raise SourceChanged(f"{where}: cannot decode the frame at {seconds:.6f} s ({frame.error})")
    digest = video.frame_id(frame.image)
    if digest != source_id:
        raise SourceChanged(
            f"{where}: the frame at {seconds:.6f} s decodes to {digest}, not the source_id {source_id} "
            "recorded in pass 1 (the file, or the decoder, changed)"
        )
    return frame.image
