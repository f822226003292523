"""Ingest: the first pass-1 stage. Reads each listed source's bytes, hashes them and decodes
them through `optidel.imageio` (which owns every safety limit), one row per source. A video
frame is decoded through `optidel.video`: the frames of one video that arrive together are
decoded in one pass from one seek, so a worker never decodes a video from its start to reach
its range, and handed over one at a time (`Ingest.each`).

Byte-identical sources are not marked here: which copy is "first" is decided at the barrier,
where the whole listing is known.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from optidel import imageio, video

from ..manifests import schema
from . import columns
from .execution import TASK


class Ingest:
    """LISTING_COLUMNS -> SOURCE_COLUMNS + IMAGE.

    source_id is the sha256 of the bytes whenever they were read (corrupt ones included), ""
    when they were not. A read failure is status missing; a file over max_bytes is refused
    unread as unsupported (its byte_size still reported)."""

    execution = TASK

    def __init__(self, config):
        # An IngestConfig (min_side, max_pixels, max_bytes); taken as is, so stages stay free of
        # the pipeline package.
        self.config = config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return as_batch(list(self.each(batch)))

    def each(self, batch: dict[str, np.ndarray]) -> Iterator[tuple[dict, np.ndarray]]:
        """(source row, image) for each listing row of `batch`, in order, one at a time: a
        caller that lets each go before the next holds one decoded image, whatever the batch."""
        listed = [
            {
                columns.INPUT_INDEX: int(batch[columns.INPUT_INDEX][i]),
                columns.URI: str(batch[columns.URI][i]),
                columns.MEMBER: str(batch[columns.MEMBER][i]),
                columns.OFFSET: int(batch[columns.OFFSET][i]),
                columns.LENGTH: int(batch[columns.LENGTH][i]),
                columns.VIDEO_SAMPLE: int(batch[columns.VIDEO_SAMPLE][i]),
            }
            for i in range(len(batch[columns.URI]))
        ]
        for run in _runs_of_one_file(listed):
            if _is_video(run[0]):
                yield from self._ingest_frames(run)
            else:
                yield from (self._ingest(row) for row in run)

    def _ingest(self, listing: dict) -> tuple[dict, np.ndarray]:
        row = dict(listing)
        try:
            data = imageio.read_bytes(listing["uri"], listing["offset"], listing["length"], self.config.max_bytes)
        except imageio.SourceTooLarge as exc:
            row.update(byte_size=exc.size, status=schema.UNSUPPORTED, error=exc.reason)
            return row, _no_image()
        except imageio.SourceReadError as exc:
            row.update(status=schema.MISSING, error=exc.reason)
            return row, _no_image()
        decoded = imageio.decode(data, max_pixels=self.config.max_pixels, min_side=self.config.min_side)
        row.update(
            source_id=imageio.sha256_hex(data),
            byte_size=len(data),
            width=decoded.width,
            height=decoded.height,
            mode=decoded.mode,
            format=decoded.format,
            status=decoded.status,
            error=decoded.error,
        )
        return row, decoded.image if decoded.image is not None else _no_image()

    def _ingest_frames(self, run: list[dict]) -> Iterator[tuple[dict, np.ndarray]]:
        """Consecutive listing rows of one video, decoded in one pass, yielded frame by frame. A
        row with no frame (VIDEO_SAMPLE -1) stands for a video the listing could not probe: it
        gets the reason."""
        first = run[0]
        where = (first[columns.URI], first[columns.OFFSET], first[columns.LENGTH])
        if first[columns.VIDEO_SAMPLE] < 0:
            yield from _failed(run, _probe_failure(*where))
            return
        fps = self.config.video_fps
        frames = video.decode_frames(
            *where, lambda stream: [stream.sample_pts(row[columns.VIDEO_SAMPLE], fps) for row in run],
            time_limit_s=self.config.video_time_limit_s, max_pixels=self.config.max_pixels, min_side=self.config.min_side,
        )
        try:
            stream = next(frames)
        except video.VideoError as exc:
            yield from _failed(run, exc)
            return
        for row, frame in zip(run, frames):
            row = dict(row, mode=stream.pix_fmt, format=stream.codec, status=frame.status, error=frame.error)
            if frame.image is not None:
                height, width = frame.image.shape[:2]
                row.update(
                    source_id=video.frame_id(frame.image), byte_size=frame.image.nbytes, width=width, height=height,
                    frame_index=frame.index, frame_time=frame.time,
                )
            yield row, frame.image if frame.image is not None else _no_image()


def _failed(run: list[dict], exc: video.VideoError) -> Iterator[tuple[dict, np.ndarray]]:
    return ((dict(row, status=exc.status, error=exc.reason), _no_image()) for row in run)


def _probe_failure(uri: str, offset: int, length: int) -> video.VideoError:
    """Why the listing could not probe this video: the same probe, again."""
    try:
        video.probe(uri, offset, length)
    except video.VideoError as exc:
        return exc
    return video.VideoError(schema.CORRUPT, "could not be probed when the pool was listed")


def as_batch(ingested: list[tuple[dict, np.ndarray]]) -> dict[str, np.ndarray]:
    """Ingest's output batch: SOURCE_COLUMNS + IMAGE from (source row, image) pairs."""
    out = columns.to_batch([row for row, _ in ingested], columns.SOURCE_COLUMNS)
    # Filled one by one: np.array(list_of_images) would stack equal shapes into one array.
    out[columns.IMAGE] = np.empty(len(ingested), dtype=object)
    for i, (_, image) in enumerate(ingested):
        out[columns.IMAGE][i] = image
    return out


def _is_video(row: dict) -> bool:
    return video.is_video(row[columns.MEMBER] or row[columns.URI])


def _runs_of_one_file(rows: list[dict]) -> list[list[dict]]:
    """The rows in listing order, cut into runs of one file (one tar member): a video's frames
    arrive as a run, and are decoded together."""
    runs: list[list[dict]] = []
    for row in rows:
        key = (row[columns.URI], row[columns.MEMBER])
        if runs and (runs[-1][0][columns.URI], runs[-1][0][columns.MEMBER]) == key and _is_video(row):
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


def _no_image() -> np.ndarray:
    return np.zeros((0, 0, 3), np.uint8)
