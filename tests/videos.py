"""Writers of tiny test videos, good and bad, with PyAV; shared by the video tests.

Every good frame is a smooth, textured scene (a crop panning across seeded gradients and soft
blobs, never noise: the pipeline's noise gate drops noisy patches) with the frame's number
written in its bottom stripe as black and white blocks, big enough to survive any lossy codec:
`frame_number(image)` reads back which frame a decoder produced. Same seed, same frames.
"""

from __future__ import annotations

import tarfile
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple, Sequence

import av
import numpy as np

MARK_BITS = 8  # frame numbers 0..255 fit the stripe (longer videos wrap)
LOW, HIGH = 16, 235  # a bit's block: video-range black or white, far apart after any codec
VFR_TIME_BASE = Fraction(1, 1000)  # custom timestamps are in milliseconds


def scene(n_frames: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """The frames write_video encodes (RGB uint8, size x size): a window panning over one seeded
    canvas, one pixel right and half a pixel down per frame, with its number in the stripe."""
    canvas = _canvas(size + n_frames, size + n_frames // 2 + 1, seed)
    frames = []
    for i in range(n_frames):
        x, y = i, i // 2
        frame = canvas[y : y + size, x : x + size].copy()
        _mark(frame, i)
        frames.append(frame)
    return frames


def frame_number(image: np.ndarray) -> int:
    """The number `scene` wrote into a (decoded) frame's stripe (modulo 2**MARK_BITS)."""
    size = image.shape[1]
    block = size // MARK_BITS
    stripe = image[-block:, : block * MARK_BITS].astype(np.float64).mean(axis=(0, 2))
    bits = stripe.reshape(MARK_BITS, block).mean(axis=1) > (LOW + HIGH) / 2
    return int(sum(1 << b for b, on in enumerate(bits) if on))


def write_video(
    path: Path,
    n_frames: int = 50,
    *,
    fps: int = 25,
    size: int = 64,
    gop: int = 12,
    codec: str = "libx264",
    seed: int = 0,
    pts: Sequence[int] | None = None,
    options: dict | None = None,
    container_options: dict | None = None,
) -> list[np.ndarray]:
    """Encode `scene(n_frames, size, seed)` to `path` (container from its extension) and return
    the frames written. `pts`: custom timestamps in milliseconds (VFR_TIME_BASE), one per frame,
    for a variable frame rate; else frame i is at i / fps. `options`: the encoder's (e.g.
    {"bf": "0"}); `container_options`: the muxer's (e.g. {"movflags": "faststart"})."""
    frames = scene(n_frames, size, seed)
    if pts is not None and len(pts) != n_frames:
        raise ValueError(f"{len(pts)} timestamps for {n_frames} frames")
    time_base = VFR_TIME_BASE if pts is not None else Fraction(1, fps)
    with _output(path, container_options) as container:
        # One thread: libx264 on several wrote different bytes from run to run.
        stream = container.add_stream(codec, rate=fps, options={"threads": "1", **(options or {})})
        stream.width = stream.height = size
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.time_base = time_base
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i if pts is None else pts[i]
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return frames


def reference_decode(path: Path) -> list[tuple[int, Fraction, np.ndarray]]:
    """Every frame of the first video stream, decoded front to back by PyAV alone, as
    (pts, time_base, RGB pixels) in presentation order: what optidel.video must agree with. A
    packet that does not decode is skipped and a container that breaks off ends the decode,
    as any player would; the decoder conceals what it can."""
    decoded = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except (StopIteration, av.error.FFmpegError):
                break
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                continue
            time_base = Fraction(stream.time_base)
            decoded += [(f.pts, time_base, f.to_ndarray(format="rgb24")) for f in frames if f.pts is not None]
    return sorted(decoded, key=lambda item: item[0])


def shown_at(decoded: list[tuple[int, Fraction, np.ndarray]], pts: int) -> int | None:
    """Position in `decoded` of the frame on screen at `pts`: the last one at or before it."""
    before = [i for i, (frame_pts, _, _) in enumerate(decoded) if frame_pts <= pts]
    return before[-1] if before else None


# ----- bad videos -------------------------------------------------------------------------


def write_truncated(path: Path, keep: float = 0.5, **video) -> list[np.ndarray]:
    """A good video cut after `keep` of its bytes. Give it a .mkv name, or container_options
    {"movflags": "faststart"} for a .mp4: a plain mp4 keeps its index (moov) at the end, so cut
    in half it does not open at all, while these keep the index before the cut and decode the
    frames whose packets survived. Returns the frames written (the whole video's)."""
    frames = write_video(path, **video)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return frames


def write_zero_length(path: Path) -> None:
    Path(path).write_bytes(b"")


def write_not_a_video(path: Path) -> None:
    """Text behind a video's name: the error page a failed download leaves."""
    Path(path).write_bytes(b"<html><body>404: this is not the video you are looking for</body></html>\n" * 40)


def write_audio_only(path: Path, seconds: float = 1.0, rate: int = 16000, codec: str = "mp2") -> None:
    """A container with one audio stream (a tone) and no video stream."""
    with _output(path) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        samples_per_frame = 1152
        t = np.arange(int(seconds * rate)) / rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
        for start in range(0, len(tone), samples_per_frame):
            chunk = tone[start : start + samples_per_frame]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


class PacketSpan(NamedTuple):
    pos: int  # first byte in the file
    size: int
    pts: int | None
    keyframe: bool


def packet_spans(path: Path) -> list[PacketSpan]:
    """Where each video packet of a file lies, in file (decode) order."""
    with av.open(str(path)) as container:
        return [
            PacketSpan(packet.pos, packet.size, packet.pts, packet.is_keyframe)
            for packet in container.demux(container.streams.video[0])
            if packet.size and packet.pos is not None and packet.pos >= 0
        ]


def write_corrupt_packets(path: Path, first: int, count: int, seed: int = 0, **video) -> list[np.ndarray]:
    """A good video whose video packets first..first+count-1 (in file order) have the middle
    half of their bytes overwritten with seeded garbage: the container's framing (headers,
    sizes, index) stays intact, so it opens and demuxes; the damaged packets decode wrong or
    not at all. Use .mkv or .avi, whose packets are stored whole. Returns the frames written."""
    frames = write_video(path, seed=seed, **video)
    spans = packet_spans(path)[first : first + count]
    rng = np.random.default_rng(seed + 1)
    with open(path, "r+b") as f:
        for pos, size, _, _ in spans:
            start, stop = pos + size // 4, pos + 3 * size // 4
            f.seek(start)
            f.write(rng.integers(0, 256, stop - start, dtype=np.uint8).tobytes())
    return frames


def write_unknown_codec(path: Path, tag: bytes = b"QZQZ", **video) -> list[np.ndarray]:
    """An .avi of mpeg4 video whose codec tag (fourcc) is patched to `tag`, one FFmpeg knows no
    decoder for: the container opens and has its video stream, but nothing can decode it. The
    tag is patched where AVI keeps it, the stream header (strh fccHandler) and the bitmap header
    (strf biCompression). Returns the frames written."""
    if Path(path).suffix.lower() != ".avi":
        raise ValueError("the codec tag is patched in an .avi")
    frames = write_video(path, codec="mpeg4", **video)
    data = bytearray(Path(path).read_bytes())
    strh = data.index(b"strh")
    if data[strh + 8 : strh + 12] != b"vids":
        raise ValueError(f"{path}: the first stream is not video")
    data[strh + 12 : strh + 16] = tag  # chunk id, size, fccType, then fccHandler
    strf = data.index(b"strf", strh)
    data[strf + 24 : strf + 28] = tag  # chunk id, size, then BITMAPINFOHEADER's biCompression at 16
    Path(path).write_bytes(bytes(data))
    return frames


# The bad-video pool: {file name: (what is wrong with it, writer, the writer's arguments)}. The
# damaged kinds are 100 frames (4 s at 25 fps), so a cut or a damaged run falls mid-video.
CORRUPT_FIRST, CORRUPT_COUNT = 30, 10  # the damaged packets of the corrupt_packets kinds
VFR_PTS = (0, 40, 100, 300, 310, 320, 700, 1000)  # ms: a burst, a long hold, a gap
BAD_VIDEOS = {
    "truncated.mkv": ("cut at 50% of its bytes", "truncated", {"n_frames": 100}),
    "truncated_faststart.mp4": (
        "faststart mp4 cut at 50%", "truncated", {"n_frames": 100, "container_options": {"movflags": "faststart"}},
    ),
    "truncated_plain.mp4": ("mp4 (index at the end) cut at 50%", "truncated", {"n_frames": 100}),
    "zero_length.mp4": ("zero-length file", "zero_length", {}),
    "not_a_video.mp4": ("text bytes named .mp4", "not_a_video", {}),
    "audio_only.mkv": ("mp2 audio stream only", "audio_only", {"codec": "mp2"}),
    "audio_only.mp4": ("aac audio stream only", "audio_only", {"codec": "aac"}),
    "corrupt_packets.mkv": (
        "h264, garbage in packets 30-39", "corrupt_packets",
        {"n_frames": 100, "first": CORRUPT_FIRST, "count": CORRUPT_COUNT},
    ),
    "corrupt_packets.avi": (
        "mpeg4, garbage in packets 30-39", "corrupt_packets",
        {"n_frames": 100, "first": CORRUPT_FIRST, "count": CORRUPT_COUNT, "codec": "mpeg4"},
    ),
    "vfr.mkv": ("variable frame rate (custom pts)", "video", {"n_frames": len(VFR_PTS), "pts": VFR_PTS}),
    "unknown_codec.avi": ("codec tag patched to QZQZ", "unknown_codec", {"n_frames": 50}),
}


def write_bad_pool(directory: Path, clean_directory: Path | None = None) -> dict[str, str]:
    """Every BAD_VIDEOS kind in `directory`; {file name: what is wrong with it}. With
    `clean_directory`, the truncated and corrupt_packets kinds' undamaged twins (same name, same
    arguments, so the same encoded bytes) are written there, to compare the frames against."""
    writers = {
        "truncated": write_truncated,
        "zero_length": write_zero_length,
        "not_a_video": write_not_a_video,
        "audio_only": write_audio_only,
        "corrupt_packets": write_corrupt_packets,
        "video": write_video,
        "unknown_codec": write_unknown_codec,
    }
    Path(directory).mkdir(parents=True, exist_ok=True)
    for name, (_, writer, arguments) in BAD_VIDEOS.items():
        writers[writer](Path(directory) / name, **arguments)
        if clean_directory is not None and writer in ("truncated", "corrupt_packets"):
            Path(clean_directory).mkdir(parents=True, exist_ok=True)
            clean = {k: v for k, v in arguments.items() if k not in ("first", "count")}
            write_video(Path(clean_directory) / name, **clean)
    return {name: kind for name, (kind, _, _) in BAD_VIDEOS.items()}


def tar_with(path: Path, members: dict[str, Path]) -> dict[str, tuple[int, int]]:
    """An uncompressed tar of files, {member name: file}; {member name: (data offset, size)}."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, source in members.items():
            tar.add(str(source), arcname=name)
    with tarfile.open(path, "r:") as tar:
        return {info.name: (info.offset_data, info.size) for info in tar}


def _output(path: Path, container_options: dict | None = None):
    """A container to write, bitexact: no random ids or version strings (a Matroska segment id is
    random otherwise), so equal arguments write equal bytes, and a damaged copy differs from its
    clean twin only where it was damaged. Options go to the muxer alone: av.open's `options`
    would reach the encoder too, and override its one thread."""
    return av.open(str(path), "w", container_options={"fflags": "+bitexact", **(container_options or {})})


def _canvas(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth seeded picture: two colour gradients and a dozen soft blobs, no fine noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.empty((height, width, 3))
    for c in range(3):
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * x + np.sin(angle) * y) / max(width, height)
        image[:, :, c] = 80 + 60 * ramp
    for _ in range(12):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(4, 14)
        colour = rng.uniform(-70, 70, 3)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        image += blob[:, :, None] * colour
    return np.clip(image, 30, 220).astype(np.uint8)


def _mark(frame: np.ndarray, number: int) -> None:
    """Write `number` modulo 2**MARK_BITS into the frame's bottom stripe, bit b as block b (LSB on
    the left): longer videos are fine, their numbers wrap."""
    number %= 1 << MARK_BITS
    size = frame.shape[1]
    block = size // MARK_BITS
    for b in range(MARK_BITS):
        frame[-block:, b * block : (b + 1) * block] = HIGH if number >> b & 1 else LOW

