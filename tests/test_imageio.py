"""optidel.imageio: reading bytes safely and decoding hostile images."""

from __future__ import annotations

import io
import pickle

import fsspec
import numpy as np
import pytest
from PIL import Image

from optidel import imageio
from optidel.manifests import schema

import hostile

DEFAULTS = dict(max_pixels=100_000_000, min_side=32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hostile")
    return directory, hostile.write_hostile_corpus(directory)


def decode_file(path, **limits):
    return imageio.decode(imageio.read_bytes(str(path)), **{**DEFAULTS, **limits})


def test_every_hostile_kind_gets_its_status(corpus):
    directory, expected = corpus
    got = {name: decode_file(directory / name) for name in expected}
    assert {name: d.status for name, d in got.items()} == expected
    for name, decoded in got.items():
        if decoded.status == schema.OK:
            assert decoded.error == ""
            assert decoded.image.dtype == np.uint8
            assert decoded.image.shape == (decoded.height, decoded.width, 3)
        else:
            assert decoded.image is None
            assert decoded.error, name


@pytest.mark.parametrize(
    "name, reason",
    [
        ("empty.jpg", "empty file"),
        ("text.jpg", "cannot identify image file"),
        ("error_page.png", "cannot identify image file"),
        ("truncated.jpg", "truncated"),
        ("truncated.png", "truncated"),
        ("bomb_30000x30000.png", "decompression bomb: 30000x30000"),
        ("bomb_12000x10000.png", "decompression bomb: 12000x10000"),
        ("tiny_1x1.png", "shorter side 1 < min_side 32"),
    ],
)
def test_failure_reasons(corpus, name, reason):
    decoded = decode_file(corpus[0] / name)
    assert reason in decoded.error
    assert "0x7f" not in decoded.error  # no memory addresses: manifests must be reproducible


def test_bombs_report_declared_size_and_leave_pillow_global_alone(corpus):
    limit = Image.MAX_IMAGE_PIXELS
    for name, size in [("bomb_30000x30000.png", (30000, 30000)), ("bomb_12000x10000.png", (12000, 10000))]:
        decoded = decode_file(corpus[0] / name)
        assert (decoded.width, decoded.height) == size
        assert (decoded.format, decoded.mode) == ("PNG", "L")
    assert Image.MAX_IMAGE_PIXELS == limit


def test_bomb_is_refused_from_the_header_before_decoding():
    # Its pixel data is not compressed data: decoding it would fail ("corrupt").
    data = hostile.bomb_png(400, 300)
    assert imageio.decode(data, max_pixels=10**6, min_side=1).status == schema.CORRUPT
    refused = imageio.decode(data, max_pixels=400 * 300 - 1, min_side=1)
    assert refused.status == schema.UNSUPPORTED
    assert refused.error.startswith("decompression bomb: 400x300 = 120000 pixels")


def test_max_pixels_limit_is_exact():
    data = hostile.encode(np.zeros((40, 50, 3), np.uint8), "PNG")
    assert imageio.decode(data, max_pixels=2000, min_side=1).status == schema.OK
    assert imageio.decode(data, max_pixels=1999, min_side=1).status == schema.UNSUPPORTED


def test_exif_rotation_swaps_size_and_pixels():
    stored = np.zeros((40, 64, 3), np.uint8)  # 64 wide, 40 high
    stored[:20, :32] = (255, 0, 0)
    stored[:, 60:] = (0, 0, 255)
    data = hostile.exif_rotated(stored, "PNG", orientation=6)
    decoded = imageio.decode(data, max_pixels=10**6, min_side=1)
    assert (decoded.width, decoded.height) == (40, 64)
    # Orientation 6: the stored image is shown rotated 90 degrees clockwise.
    np.testing.assert_array_equal(decoded.image, np.rot90(stored, k=-1))


def test_exif_rotated_jpeg_reports_upright_size(corpus):
    decoded = decode_file(corpus[0] / "exif_rotated.jpg")
    assert (decoded.width, decoded.height) == (40, 64)
    assert decoded.image.shape == (64, 40, 3)
    # Stored top-left quadrant (red) ends up top-right once rotated clockwise.
    np.testing.assert_allclose(decoded.image[5, 35], (220, 30, 30), atol=12)


def test_too_small_is_judged_after_rotation():
    data = hostile.exif_rotated(np.zeros((40, 64, 3), np.uint8), "PNG", orientation=6)
    decoded = imageio.decode(data, max_pixels=10**6, min_side=41)
    assert decoded.status == schema.TOO_SMALL
    assert (decoded.width, decoded.height) == (40, 64)


def test_sixteen_bit_is_scaled_not_clipped(corpus):
    decoded = decode_file(corpus[0] / "gray16.png")
    assert decoded.mode == "I;16"
    ramp = np.asarray(hostile.gray16_ramp(64, 48), dtype=np.int64)
    expected = np.round(ramp / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(decoded.image[:, :, 0], expected)
    assert decoded.image.max() == 255 and decoded.image.min() == 0
    # Clipping would saturate everything above 255/65535 of the range.
    assert (decoded.image == 255).mean() < 0.01
    assert (decoded.image[:, :, 0] == decoded.image[:, :, 2]).all()


def test_transparency_is_composited_over_black(corpus):
    rgba = decode_file(corpus[0] / "rgba.png")
    assert rgba.mode == "RGBA"
    np.testing.assert_array_equal(rgba.image[:, 0], 0)  # alpha 0
    np.testing.assert_array_equal(rgba.image[:, -1], np.broadcast_to((250, 120, 10), (48, 3)))  # alpha 255
    assert (np.diff(rgba.image[0, :, 0].astype(int)) >= 0).all()

    palette = decode_file(corpus[0] / "palette_transparent.png")
    assert palette.mode == "P"
    np.testing.assert_array_equal(palette.image[:, :32], 0)  # the transparent index is white
    np.testing.assert_array_equal(palette.image[:, 32:], np.broadcast_to((255, 0, 0), (48, 32, 3)))


def test_cmyk_and_grey_become_rgb(corpus):
    directory = corpus[0]
    cmyk = decode_file(directory / "cmyk.jpg")
    assert cmyk.mode == "CMYK"
    reference = np.asarray(Image.open(directory / "cmyk.jpg").convert("RGB"))
    np.testing.assert_array_equal(cmyk.image, reference)

    grey = decode_file(directory / "gray.jpg")
    assert grey.mode == "L"
    assert (grey.image[:, :, 0] == grey.image[:, :, 1]).all() and (grey.image[:, :, 1] == grey.image[:, :, 2]).all()
    np.testing.assert_array_equal(grey.image[:, :, 0], np.asarray(Image.open(directory / "gray.jpg")))


@pytest.mark.parametrize("name, fmt", [("animated.gif", "GIF"), ("animated.webp", "WEBP")])
def test_animation_decodes_first_frame_and_counts_frames(corpus, name, fmt):
    decoded = decode_file(corpus[0] / name)
    assert decoded.status == schema.OK and decoded.error == ""
    assert decoded.format == fmt
    stored_mode, frames = decoded.mode.rsplit(";frames=", 1)
    assert int(frames) == 3 and stored_mode
    # Frame 0 is pure red; later frames are green and blue.
    np.testing.assert_array_equal(decoded.image, np.broadcast_to((255, 0, 0), decoded.image.shape))


def test_single_frame_mode_has_no_frame_suffix(corpus):
    assert decode_file(corpus[0] / "good.png").mode == "RGB"


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_decode_never_raises_on_mangled_bytes():
    rng = np.random.default_rng(3)
    sources = [
        hostile.encode(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8), fmt)
        for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
    ]
    statuses = set()
    for data in sources:
        for _ in range(25):
            mangled = bytearray(data)
            for pos in rng.integers(0, len(mangled), size=int(rng.integers(1, 8))):
                mangled[pos] = int(rng.integers(0, 256))
            cut = int(rng.integers(len(mangled) // 2, len(mangled) + 1))
            decoded = imageio.decode(bytes(mangled[:cut]), max_pixels=10**6, min_side=1)
            assert decoded.status in schema.STATUSES
            assert (decoded.image is None) == (decoded.status != schema.OK)
            statuses.add(decoded.status)
    assert schema.CORRUPT in statuses


def test_read_bytes_whole_file_and_range(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 4)
    assert imageio.read_bytes(str(path)) == path.read_bytes()
    assert imageio.read_bytes(str(path), offset=100, length=20) == path.read_bytes()[100:120]
    # A range running past the end (a truncated tar member) gives what is there.
    assert imageio.read_bytes(str(path), offset=1000, length=100) == path.read_bytes()[1000:]
    assert imageio.read_bytes(path.as_uri()) == path.read_bytes()


def test_read_bytes_memory_url():
    fs = fsspec.filesystem("memory")
    fs.pipe("/imageio-test/a.png", b"\x89PNG-bytes")
    try:
        assert imageio.read_bytes("memory://imageio-test/a.png") == b"\x89PNG-bytes"
        assert imageio.read_bytes("memory://imageio-test/a.png", offset=1, length=3) == b"PNG"
    finally:
        fs.rm("/imageio-test", recursive=True)


def test_read_bytes_errors_name_the_uri(tmp_path):
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(imageio.SourceReadError, match="nope.jpg: no such file"):
        imageio.read_bytes(missing)
    with pytest.raises(imageio.SourceReadError, match="is a directory"):
        imageio.read_bytes(str(tmp_path))

    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 1000)
    with pytest.raises(imageio.SourceTooLarge, match="big.jpg: 1000 bytes is larger than max_bytes=999") as info:
        imageio.read_bytes(str(big), max_bytes=999)
    assert isinstance(info.value, imageio.SourceReadError) and info.value.size == 1000
    assert len(imageio.read_bytes(str(big), max_bytes=1000)) == 1000
    with pytest.raises(imageio.SourceTooLarge, match="larger than max_bytes"):
        imageio.read_bytes(str(big), offset=0, length=500, max_bytes=499)


def test_read_errors_survive_pickling():
    for error in (imageio.SourceReadError("a.jpg", "no such file"), imageio.SourceTooLarge("b.jpg", 10, 5)):
        clone = pickle.loads(pickle.dumps(error))
        assert type(clone) is type(error) and str(clone) == str(error)


def test_pillow_formats_outside_the_allowlist_are_refused():
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (1, 2, 3)).save(buffer, "PPM")
    decoded = imageio.decode(buffer.getvalue(), max_pixels=10**6, min_side=1)
    assert decoded.status == schema.CORRUPT and "cannot identify" in decoded.error


@pytest.mark.parametrize("mode, value", [("F", 0.5), ("LAB", (50, 0, 0))])
def test_modes_without_faithful_rgb_are_unsupported(mode, value):
    data = hostile.encode(Image.new(mode, (40, 40), value), "TIFF")
    decoded = imageio.decode(data, max_pixels=10**6, min_side=1)
    assert (decoded.status, decoded.mode, decoded.format) == (schema.UNSUPPORTED, mode, "TIFF")
    assert f"mode {mode}" in decoded.error


def test_thirty_two_bit_int_samples_are_read_as_sixteen_bit():
    data = hostile.encode(Image.new("I", (40, 40), 40000), "TIFF")
    decoded = imageio.decode(data, max_pixels=10**6, min_side=1)
    assert decoded.mode == "I"
    np.testing.assert_array_equal(decoded.image, round(40000 * 255 / 65535))
