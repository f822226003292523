"""Generators of hostile inputs (and a few good ones), shared by the unit and end-to-end tests.

Expected statuses assume the IngestConfig defaults: min_side=32, max_pixels=100e6. Every file is
synthetic and seeded, so the corpus is the same bytes on every run.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from optidel.manifests import schema

EXIF_ORIENTATION = 0x0112


def write_hostile_corpus(directory: Path) -> dict[str, str]:
    """One file per hostile kind plus a few good images in `directory`; {file name: status}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240814)
    files: dict[str, tuple[bytes, str]] = {
        "truncated.jpg": (_truncated(encode(_noise(rng, 128, 128), "JPEG")), schema.CORRUPT),
        "truncated.png": (_truncated(encode(_noise(rng, 128, 128), "PNG")), schema.CORRUPT),
        "empty.jpg": (b"", schema.CORRUPT),
        "text.jpg": (b"this is not a picture\n" * 20, schema.CORRUPT),
        "error_page.png": (
            b"<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
            b"<body><h1>Not Found</h1></body></html>\n",
            schema.CORRUPT,
        ),
        # Over Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS): Image.open itself refuses.
        "bomb_30000x30000.png": (bomb_png(30000, 30000), schema.UNSUPPORTED),
        # Over max_pixels but under Pillow's hard limit: only optidel's header check stops it.
        "bomb_12000x10000.png": (bomb_png(12000, 10000), schema.UNSUPPORTED),
        "gray16.png": (encode(gray16_ramp(64, 48), "PNG"), schema.OK),
        "cmyk.jpg": (encode(Image.fromarray(_noise(rng, 48, 64, 4), mode="CMYK"), "JPEG"), schema.OK),
        "palette_transparent.png": (encode(palette_with_transparency(64, 48), "PNG"), schema.OK),
        "gray.jpg": (encode(Image.fromarray(_noise(rng, 48, 64, 1)[:, :, 0], mode="L"), "JPEG"), schema.OK),
        "rgba.png": (encode(rgba_ramp(64, 48), "PNG"), schema.OK),
        "exif_rotated.jpg": (exif_rotated(_quadrants(64, 40), "JPEG"), schema.OK),
        "animated.gif": (animated(3, "GIF"), schema.OK),
        "animated.webp": (animated(3, "WEBP"), schema.OK),
        "tiny_1x1.png": (encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), schema.TOO_SMALL),
        "strip_20000x200.png": (encode(Image.new("RGB", (20000, 200), (30, 90, 150)), "PNG"), schema.OK),
        "good.jpg": (encode(_noise(rng, 96, 80), "JPEG"), schema.OK),
        "good_upper.JPG": (encode(_quadrants(72, 56), "JPEG"), schema.OK),
        "good.png": (encode(_quadrants(80, 64), "PNG"), schema.OK),
        "good.bmp": (encode(_noise(rng, 40, 48), "BMP"), schema.OK),
        "good.tif": (encode(_noise(rng, 48, 40), "TIFF"), schema.OK),
        "good.webp": (encode(_quadrants(64, 64), "WEBP"), schema.OK),
    }
    for name, (data, _) in files.items():
        (directory / name).write_bytes(data)
    return {name: status for name, (_, status) in files.items()}


def write_hostile_tar(path: Path) -> dict[str, str]:
    """A tar whose members are named `../evil.jpg` and `/abs.jpg` (read by offset, never
    extracted), with a non-image member and a last member cut in the middle of its data (no
    end-of-archive blocks either). Returns {image member name: expected status}."""
    rng = np.random.default_rng(7)
    members = [
        ("sample-0.jpg", encode(_noise(rng, 64, 48), "JPEG"), schema.OK),
        ("sample-0.json", b'{"label": 1}', None),
        ("../evil.jpg", encode(_quadrants(48, 64), "JPEG"), schema.OK),
        ("/abs.jpg", encode(_noise(rng, 56, 56), "JPEG"), schema.OK),
        ("notes.png", b"plain text in a png member", schema.CORRUPT),
        ("last-truncated.png", encode(_noise(rng, 64, 64), "PNG"), schema.CORRUPT),
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, _ in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue()), mode="r:") as tar:
        last = tar.getmembers()[-1]
    cut = last.offset_data + last.size // 2
    Path(path).write_bytes(buffer.getvalue()[:cut])
    return {name: status for name, _, status in members if status is not None}


def encode(image: Image.Image | np.ndarray, fmt: str, **params) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    if fmt == "WEBP":
        params.setdefault("lossless", True)
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height 8-bit grey pixels. Its IDAT is not
    compressed data at all, so an attempt to decode it fails ("corrupt"): "unsupported" proves
    the size was refused from the header before any decoding."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", bytes(16)) + _chunk(b"IEND", b"")


def gray16_ramp(width: int, height: int) -> Image.Image:
    """16-bit grey, a ramp over the full 0..65535 range (top-right pixel 65535)."""
    ramp = np.linspace(0, 65535, width * height).round().astype(np.uint16).reshape(height, width)
    return Image.fromarray(ramp)


def rgba_ramp(width: int, height: int) -> Image.Image:
    """Orange with alpha rising 0..255 left to right."""
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[:, :, :3] = (250, 120, 10)
    rgba[:, :, 3] = np.linspace(0, 255, width).round().astype(np.uint8)[None, :]
    return Image.fromarray(rgba, mode="RGBA")


def palette_with_transparency(width: int, height: int) -> Image.Image:
    """Palette image: left half index 0 (transparent, stored as white), right half index 1 (red)."""
    indices = np.zeros((height, width), np.uint8)
    indices[:, width // 2 :] = 1
    image = Image.fromarray(indices, mode="P")
    image.putpalette([255, 255, 255, 255, 0, 0] + [0, 0, 0] * 254)
    image.info["transparency"] = 0
    return image


def exif_rotated(image: Image.Image | np.ndarray, fmt: str, orientation: int = 6) -> bytes:
    """`image` stored as is, with an EXIF orientation tag (6: display rotated 90 clockwise)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(image, fmt, exif=exif.tobytes())


def animated(frames: int, fmt: str, size: tuple[int, int] = (48, 40)) -> bytes:
    """`frames` solid frames of different colours; frame 0 is pure red."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    images = [Image.new("RGB", size, colours[i % len(colours)]) for i in range(frames)]
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=100, loop=0)


def _quadrants(width: int, height: int) -> np.ndarray:
    """Four flat colours, so orientation and crops are easy to check even after JPEG."""
    image = np.zeros((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    image[:h2, :w2] = (220, 30, 30)
    image[:h2, w2:] = (30, 220, 30)
    image[h2:, :w2] = (30, 30, 220)
    image[h2:, w2:] = (230, 230, 230)
    return image


def _noise(rng: np.random.Generator, width: int, height: int, channels: int = 3) -> np.ndarray:
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) * 3 // 5]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
