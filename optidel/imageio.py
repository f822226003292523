"""Reading source bytes and decoding images: the one place that does either, with every safety
limit (file size, decompression bombs, formats accepted, truncation). No torch, no Ray, so the
manifest tools may import it.

`decode` never raises on bad data: every failure becomes a `Decoded` with a status from
`manifests.schema` and a reason that is the same on every machine (no memory addresses).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import fsspec
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .manifests import schema

DEFAULT_MAX_BYTES = 512 * 2**20

# Only these decoders ever see source bytes. Pillow would otherwise try every plugin it has
# (EPS, for one, hands the bytes to Ghostscript). The JPEG decoder also opens multi-picture
# JPEGs, whose format Pillow then reports as MPO.
FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")

# Pillow modes of 16-bit samples, scaled (not clipped) to 8 bits. "I" (32-bit int) is what
# Pillow gives some 16-bit PNGs/TIFFs, so its samples are taken as 16-bit too.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# Modes with no faithful RGB: float samples of unknown range, and CIELAB, which Pillow converts
# without colour management.
_REFUSED_MODES = frozenset({"F", "LAB"})


class SourceReadError(OSError):
    """A source whose bytes could not be read; the message names the uri and the reason."""

    def __init__(self, uri: str, reason: str):
        super().__init__(f"{uri}: {reason}")
        self.uri = uri
        self.reason = reason

    def __reduce__(self):  # keeps the two-argument constructor picklable (Ray ships errors)
        return type(self), (self.uri, self.reason)


class SourceTooLarge(SourceReadError):
    """A source refused unread because it is larger than max_bytes."""

    def __init__(self, uri: str, size: int, max_bytes: int):
        super().__init__(uri, f"{size} bytes is larger than max_bytes={max_bytes}")
        self.size = size
        self.max_bytes = max_bytes

    def __reduce__(self):
        return type(self), (self.uri, self.size, self.max_bytes)


def read_bytes(uri: str, offset: int = -1, length: int = -1, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a local path or fsspec URL; with offset/length >= 0, that byte range only
    (a tar member's data). A range past the end of the file gives the bytes that are there (a
    truncated tar), which `decode` then calls corrupt."""
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        if offset >= 0 and length >= 0:
            if length > max_bytes:
                raise SourceTooLarge(uri, length, max_bytes)
            return fs.cat_file(path, start=offset, end=offset + length)
        # Stat first, so that an oversized file is refused without reading it.
        size = fs.size(path)
        if size is not None and size > max_bytes:
            raise SourceTooLarge(uri, size, max_bytes)
        data = fs.cat_file(path)
    except SourceReadError:
        raise
    except FileNotFoundError as exc:
        raise SourceReadError(uri, "no such file") from exc
    except IsADirectoryError as exc:
        raise SourceReadError(uri, "is a directory") from exc
    except (OSError, ValueError) as exc:
        raise SourceReadError(uri, f"{type(exc).__name__}: {exc}") from exc
    if len(data) > max_bytes:  # grew between the stat and the read
        raise SourceTooLarge(uri, len(data), max_bytes)
    return data


def sha256_hex(data: bytes) -> str:
    """The source id: sha256 of the bytes, hex."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Decoded:
    """The result of `decode`.

    image:  RGB uint8 (height, width, 3), None unless status is ok.
    width, height:  after EXIF orientation; for a refused bomb the size its header declares;
        -1 when the header could not be read.
    mode:  the PIL mode as stored, before any conversion ("" if unknown). A file with several
        frames (animated GIF/WebP, multi-page TIFF, MPO) is decoded from its first frame and
        says how many it has after a ";frames=" suffix: "P;frames=12". PIL's own modes
        never contain "frames", so `mode.rsplit(";frames=", 1)` recovers both parts.
    format:  the PIL format name (JPEG, PNG, ...), "" if unknown.
    status:  schema.OK, CORRUPT, UNSUPPORTED or TOO_SMALL.
    error:  why the status is not ok; "" when ok.
    """

    image: np.ndarray | None
    width: int
    height: int
    mode: str
    format: str
    status: str
    error: str


def decode(data: bytes, *, max_pixels: int, min_side: int) -> Decoded:
    """Decode `data` to RGB uint8, safely; never raises on bad data.

    - zero bytes, not an image, truncated, or any decoder error -> corrupt (the whole image is
      decoded; truncated files are never padded with grey).
    - a header declaring more than max_pixels -> unsupported, refused before any pixel is
      decoded. Pillow's own global limit (2 * Image.MAX_IMAGE_PIXELS, left untouched) also
      refuses, so the effective limit is the smaller of the two.
    - shorter side below min_side (after EXIF orientation) -> too_small.
    - float (F) and CIELAB (LAB) images -> unsupported: no faithful 8-bit RGB.
    - EXIF orientation is applied; 16-bit samples are scaled to 8 bits; CMYK, palette, grey
      become RGB; transparency is composited over black (see `_to_rgb`).
    """
    if not data:
        return _failed(schema.CORRUPT, "empty file")
    header = None
    try:
        with warnings.catch_warnings():
            # Our max_pixels check below is the authoritative one; Pillow's warning threshold
            # (below the default max_pixels) would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                header = _header(im)
                width, height = im.size
                if width * height > max_pixels:
                    return _failed(schema.UNSUPPORTED, _bomb(width, height, max_pixels), header)
                if im.mode in _REFUSED_MODES:
                    return _failed(schema.UNSUPPORTED, f"mode {im.mode} has no faithful RGB conversion", header)
                im.load()
                return _upright_rgb(ImageOps.exif_transpose(im), header, min_side)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        header = _header_past_pillow_limit(data)
        reason = _bomb(*header[0], max_pixels) if header else f"decompression bomb: {exc}"
        return _failed(schema.UNSUPPORTED, reason, header)
    except UnidentifiedImageError:
        return _failed(schema.CORRUPT, f"cannot identify image file as one of {', '.join(FORMATS)}")
    except Exception as exc:  # noqa: BLE001 - any decoder failure on hostile bytes is "corrupt"
        return _failed(schema.CORRUPT, _describe(exc), header)


def _upright_rgb(upright: Image.Image, header: tuple, min_side: int) -> Decoded:
    """The result for a fully decoded image, already turned by its EXIF orientation."""
    _, mode, fmt = header
    width, height = upright.size
    if min(width, height) < min_side:
        reason = f"{width}x{height}: shorter side {min(width, height)} < min_side {min_side}"
        return Decoded(None, width, height, mode, fmt, schema.TOO_SMALL, reason)
    return Decoded(_to_rgb(upright), width, height, mode, fmt, schema.OK, "")


def _to_rgb(im: Image.Image) -> np.ndarray:
    """RGB uint8 (H, W, 3), a fresh writable array.

    Transparent pixels are composited over black, i.e. RGB is premultiplied by alpha. Fully
    transparent pixels store arbitrary colours that were never meant to be seen; black gives
    them one fixed value, and is the colour of the unlit border of endoscopy frames, so the
    composite adds no bright artificial edges for the proxy to find "hard"."""
    if im.mode in _SIXTEEN_BIT_MODES:
        samples = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        grey = ((samples * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.has_transparency_data:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        premultiplied = (rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255
        return premultiplied.astype(np.uint8)
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _header(im: Image.Image) -> tuple[tuple[int, int], str, str]:
    """(size, mode with the ";frames=N" suffix for multi-frame files, format)."""
    frames = getattr(im, "n_frames", 1)
    mode = im.mode if frames == 1 else f"{im.mode};frames={frames}"
    return im.size, mode, im.format or ""


def _header_past_pillow_limit(data: bytes) -> tuple | None:
    """The header of a file Image.open refused as a bomb, read with the format's own plugin
    class, which (unlike Image.open) applies no size limit; reading a header decodes no pixels.
    Only used to report the declared size of such a bomb."""
    Image.init()
    for name in FORMATS:
        factory, accept = Image.OPEN[name]
        accepted = accept is None or accept(data[:16])
        if not accepted or isinstance(accepted, str):
            continue
        try:
            with factory(io.BytesIO(data), "") as im:
                return _header(im)
        except Exception:  # noqa: BLE001 - not this format; try the next one
            continue
    return None


def _bomb(width: int, height: int, max_pixels: int) -> str:
    return f"decompression bomb: {width}x{height} = {width * height} pixels > max_pixels {max_pixels}"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failed(status: str, error: str, header: tuple | None = None) -> Decoded:
    if header is None:
        return Decoded(None, -1, -1, "", "", status, error)
    (width, height), mode, fmt = header
    return Decoded(None, width, height, mode, fmt, status, error)
