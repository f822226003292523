"""Reading video files: probing a video's stream and decoding the frames shown at given times,
with PyAV (FFmpeg, bundled in its wheel). The one place that decodes video, as imageio is for
images; no torch, no Ray, so the manifest tools may import it.

Frames are addressed by presentation time, never by decode order or position in the file: the
frame "at" time t is the one on screen at t, the last frame whose timestamp is at or before t.
So the same sampling gives the same frames on any machine, whatever the container's packet
layout, and a frame can be found again from its time alone (`pts_of`).

`encode` writes frames as a video, for the pools optidel builds itself (the demo, the eval's
recordings, benchmarks).

A video is read from a byte range as well as a whole file, so a video inside an uncompressed
tar is decoded in place, never extracted.

Nothing here raises on bad data past `VideoError`: a file that is not a video, has no video
stream, or whose codec FFmpeg lacks is one VideoError with a status and a reason; a file that
breaks part-way yields the frames decoded before the break, and says why the rest are missing.
"""

from __future__ import annotations

import hashlib
import io
import math
import posixpath
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator, NamedTuple, Sequence

import av
import fsspec
import numpy as np

from .manifests import schema

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm"})


def is_video(name: str) -> bool:
    """Whether a file (or tar member) name is a video's, by its extension."""
    return posixpath.splitext(name)[1].lower() in VIDEO_EXTENSIONS


class VideoError(Exception):
    """A video that cannot be read at all; `status` is a manifests.schema status."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __reduce__(self):  # picklable: Ray ships errors between processes
        return type(self), (self.status, self.reason)


@dataclass(frozen=True)
class Stream:
    """What sampling and decoding need of a video's first video stream. Times in seconds."""

    start: Fraction  # timestamp of the stream's first frame
    # Measured by probe() from the last packets; None where the stream was opened to decode
    # frames, which never needs its end (a seek and a read of the last keyframe's packets).
    duration: Fraction | None
    time_base: Fraction  # seconds per timestamp unit
    rate: Fraction  # average frames per second, the nominal rate frame indices count at
    codec: str
    pix_fmt: str
    width: int
    height: int

    def sample_count(self, fps: float, max_frames: int | None) -> int:
        """Frames taken at `fps` over the whole duration (one for a video shorter than a
        sampling step), capped at max_frames."""
        n = max(1, math.ceil(self.duration * _fraction(fps)))
        return n if max_frames is None else min(n, max_frames)

    def sample_pts(self, k: int, fps: float) -> int:
        """The timestamp of the k-th sampling time, start + k / fps, in stream units (floored:
        a frame is on screen at t when its timestamp is at or before t)."""
        return math.floor((self.start + k / _fraction(fps)) / self.time_base)

    def frame_index(self, pts: int) -> int:
        """The frame's position at the nominal rate: exact for constant frame rate video, the
        nearest slot for variable rate (whose exact key is the time)."""
        return round((pts * self.time_base - self.start) * self.rate)


def pts_of(stream: Stream, seconds: float) -> int:
    """The timestamp a recorded frame time (float(pts * time_base)) came from."""
    return round(Fraction(seconds) / stream.time_base)


@dataclass(frozen=True)
class Frame:
    """One requested frame: its pixels (RGB uint8, H x W x 3) and where it sits in the video, or
    why it could not be had (image None, status and error set)."""

    image: np.ndarray | None
    pts: int  # -1 when no frame was found
    time: float  # seconds, float(pts * time_base); NaN when no frame was found
    index: int  # Stream.frame_index; -1 when no frame was found
    status: str
    error: str


def frame_id(image: np.ndarray) -> str:
    """A decoded frame's id: sha256 of its shape and RGB bytes, hex. A frame has no file bytes
    of its own, so its pixels stand in: equal frames of one video (a frozen camera) share an id,
    as byte-identical images do."""
    height, width = image.shape[:2]
    return hashlib.sha256(f"{width}x{height} rgb24\n".encode() + np.ascontiguousarray(image).tobytes()).hexdigest()


def probe(uri: str, offset: int = -1, length: int = -1) -> Stream:
    """The video's first video stream: its header, and its last packets for where it ends;
    VideoError when there is none to read."""
    with _open(uri, offset, length) as container:
        return _stream_of(container, measure_end=True)


def encode(
    path, frames, *, codec: str, rate: int, pix_fmt: str, options: dict | None = None,
    container_format: str | None = None, container_options: dict | None = None,
) -> None:
    """Write `frames` (RGB uint8 arrays, all of one size) to `path` as a one-stream video at
    `rate` frames a second; the container from `container_format`, else from the extension."""
    frames = iter(frames)
    first = next(frames)
    # Copies: FFmpeg takes the options it uses out of the dicts it is given.
    with av.open(str(path), "w", format=container_format, container_options=dict(container_options or {})) as container:
        stream = container.add_stream(codec, rate=rate, options=dict(options or {}))
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = pix_fmt
        for frame in (first, *frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def decode_at(uri: str, offset: int, length: int, targets: Callable[[Stream], Sequence[int]], **limits) -> tuple[Stream, list[Frame]]:
    """decode_frames (same arguments), collected: the stream and every target's Frame."""
    frames = decode_frames(uri, offset, length, targets, **limits)
    stream = next(frames)
    return stream, list(frames)


def decode_frames(
    uri: str,
    offset: int,
    length: int,
    targets: Callable[[Stream], Sequence[int]],
    *,
    time_limit_s: float,
    max_pixels: int,
    min_side: int,
) -> Iterator:
    """The video's Stream first, then a Frame for each of `targets(stream)` (stream timestamps,
    ascending), the frame on screen at that time, each yielded as soon as it is decoded, so a
    caller holds one at a time. One pass: a seek to the keyframe before the first target, then
    decoding forward. A target past the last frame, or past the time limit, gets a Frame with
    the reason, and so does one whose picture FFmpeg had to patch over a damaged packet.
    VideoError (before the Stream) when the video cannot be opened at all, or its frames are
    over the size limits."""
    with _open(uri, offset, length) as container:
        stream = _stream_of(container, measure_end=False)
        if stream.width * stream.height > max_pixels:
            reason = f"{stream.width}x{stream.height} = {stream.width * stream.height} pixels > max_pixels {max_pixels}"
            raise VideoError(schema.UNSUPPORTED, reason)
        if min(stream.width, stream.height) < min_side:
            reason = f"{stream.width}x{stream.height}: shorter side < min_side {min_side}"
            raise VideoError(schema.TOO_SMALL, reason)
        wanted = list(targets(stream))
        yield stream
        if wanted:
            yield from _frames_at(container, stream, wanted, time.monotonic() + time_limit_s)


def _frames_at(container, stream: Stream, targets: list[int], deadline: float) -> Iterator[Frame]:
    done = 0
    held = None  # the last decoded frame at or before targets[done], with its damage flag
    stopped = None  # why decoding stopped before the stream's end, if it did
    for decoded in _decoded_from(container, stream, targets[0], deadline):
        if isinstance(decoded, _Stop):
            stopped = decoded
            break
        frame, _ = decoded
        while done < len(targets) and frame.pts > targets[done]:
            yield _frame(stream, held, targets[done])
            done += 1
        if done == len(targets):
            return
        held = decoded
    # The last frame stays on screen for one nominal frame duration past its timestamp.
    shown_until = None if held is None else held[0].pts + 1 / (stream.rate * stream.time_base)
    for target in targets[done:]:
        if held is not None and stopped is None and target < shown_until:
            yield _frame(stream, held, target)
            continue
        stop = stopped or _Stop(schema.CORRUPT, "the video ends before this time")
        yield Frame(None, -1, float("nan"), -1, stop.status, f"no frame at {float(target * stream.time_base):.3f} s: {stop.reason}")


def _frame(stream: Stream, held, target: int) -> Frame:
    at = float(target * stream.time_base)
    if held is None:
        return Frame(None, -1, float("nan"), -1, schema.CORRUPT, f"no frame at {at:.3f} s: nothing decodes before it")
    frame, damaged = held
    time_s, index = float(frame.pts * stream.time_base), stream.frame_index(frame.pts)
    if damaged:
        reason = f"the frame at {time_s:.3f} s follows a damaged packet: FFmpeg patched it with older pixels"
        return Frame(None, frame.pts, time_s, index, schema.CORRUPT, reason)
    return Frame(frame.to_ndarray(format="rgb24"), frame.pts, time_s, index, schema.OK, "")


def _decoded_from(container, stream: Stream, target: int, deadline: float) -> Iterator:
    """_decoded after a seek that puts a frame at or before `target` first. The container's
    index finds the keyframe before `target` in decode order; in open-GOP or B-frame video that
    keyframe may be shown after `target`, so the seek steps back (1 s, then 2, 4, ...) until it
    is not, or reaches the start."""
    start = math.floor(stream.start / stream.time_base)
    step = math.ceil(1 / stream.time_base)
    at = target
    while True:
        try:
            container.seek(max(at, start), stream=container.streams.video[0], backward=True)
        except av.error.FFmpegError:
            container.seek(0)  # a container without an index: decode from the start
            at = start
        decoded = _decoded(container, container.streams.video[0], deadline)
        first = next(decoded, None)
        if first is None or isinstance(first, _Stop) or first[0].pts <= target or at <= start:
            if first is not None:
                yield first
            yield from decoded
            return
        at, step = at - step, 2 * step


class _Stop(NamedTuple):
    """Why decoding stopped before the stream's end: a failed run of the pipeline (the time
    limit; a rerun with a larger one may succeed), or a corrupt file."""

    status: str
    reason: str


def _decoded(container, video, deadline: float) -> Iterator:
    """(frame, damaged) for each decoded frame with a timestamp, in presentation order, then a
    _Stop if decoding stops early: the time limit, or a container that cannot be read further.
    A packet that fails to decode is skipped; the frames after it, up to the next keyframe, are
    `damaged`: FFmpeg conceals the loss with older pixels."""
    damaged = False
    packets = container.demux(video)
    while True:
        if time.monotonic() > deadline:
            yield _Stop(schema.FAILED, "the per-video decode time limit (ingest.video_time_limit_s) ran out")
            return
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            yield _Stop(schema.CORRUPT, f"the container breaks off ({_describe(exc)})")
            return
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            damaged = True
            continue
        for frame in frames:
            damaged = (damaged and not frame.key_frame) or frame.is_corrupt
            if frame.pts is not None:
                yield frame, damaged


def _stream_of(container, measure_end: bool) -> Stream:
    if not container.streams.video:
        raise VideoError(schema.UNSUPPORTED, "no video stream")
    video = container.streams.video[0]
    context = video.codec_context
    if context is None or not context.name:
        raise VideoError(schema.UNSUPPORTED, "no decoder for its video codec")
    time_base = Fraction(video.time_base) if video.time_base else Fraction(1, 1_000_000)
    start = Fraction(video.start_time or 0) * time_base
    rate = Fraction(video.average_rate or video.guessed_rate or 0)
    end = _end(container, video, time_base) if measure_end else None
    if (measure_end and (end is None or end <= start)) or rate <= 0:
        raise VideoError(schema.CORRUPT, "no frames (the stream has no duration or frame rate)")
    return Stream(start, None if end is None else end - start, time_base, rate, context.name, context.format.name if context.format else "",
                  context.width, context.height)


def _end(container, video, time_base: Fraction) -> Fraction | None:
    """When the stream's last frame leaves the screen, in seconds: the largest timestamp plus
    duration of the packets from its last keyframe on (read, not decoded), or the stream's
    header when it declares more (a file cut short: its missing frames are then listed, and
    their rows say the video ends early). The container's duration is the last resort: for a
    Matroska file it counts a late start twice, and an mp4's counts decode times, short of the
    last frame shown when B-frames reorder."""
    ends = []
    try:
        container.seek(2**62, stream=video, backward=True)
        for packet in container.demux(video):
            if packet.pts is not None:
                ends.append((packet.pts + (packet.duration or 0)) * time_base)
    except av.error.FFmpegError:
        pass
    container.seek(0)
    if video.duration:
        ends.append(((video.start_time or 0) + video.duration) * time_base)
    if ends:
        return max(ends)
    return Fraction(container.duration, av.time_base) if container.duration else None


class _open:
    """av.open on a whole file or a byte range of one (a tar member), as VideoError when FFmpeg
    cannot open it as a video."""

    def __init__(self, uri: str, offset: int, length: int):
        self.uri, self.offset, self.length = uri, offset, length
        self.file = None
        self.container = None

    def __enter__(self):
        try:
            fs, path = fsspec.core.url_to_fs(self.uri)
            if (self.length if self.offset >= 0 else fs.size(path)) == 0:
                raise VideoError(schema.CORRUPT, "empty file")
            self.file = fs.open(path, "rb")
            if self.offset >= 0:
                self.file = _ByteRange(self.file, self.offset, self.length)
            self.container = av.open(self.file, "r")
        except VideoError:
            self._close_file()
            raise
        except FileNotFoundError:
            self._close_file()
            raise VideoError(schema.MISSING, "no such file") from None
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self._close_file()
            raise VideoError(schema.CORRUPT, f"not a readable video ({_describe(exc)})") from None
        return self.container

    def __exit__(self, *exc):
        self.container.close()
        self._close_file()

    def _close_file(self):
        if self.file is not None:
            self.file.close()


class _ByteRange(io.RawIOBase):
    """A read-only, seekable view of bytes [offset, offset + length) of an open file."""

    def __init__(self, file, offset: int, length: int):
        self.file, self.offset, self.length = file, offset, length
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        self.position = max(0, base + position)
        return self.position

    def read(self, size: int = -1) -> bytes:
        left = max(0, self.length - self.position)
        size = left if size is None or size < 0 else min(size, left)
        self.file.seek(self.offset + self.position)
        data = self.file.read(size)
        self.position += len(data)
        return data

    def close(self) -> None:
        self.file.close()
        super().close()


def _fraction(value: float) -> Fraction:
    # 29.97 and friends as the NTSC ratios they stand for, not as binary floats.
    return Fraction(value).limit_denominator(1001)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
