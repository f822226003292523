"""Video input without Ray: optidel.video's probing, sampling and decoding checked against a plain
PyAV decode; the listing of videos (directories, tars, list files); Ingest on good and bad
videos; and optidel.sources.read_pixels on a video frame. The videos come from tests/videos.py:
tiny, seeded, each frame's number readable from its pixels."""

from __future__ import annotations

import math
import re
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from optidel import imageio, sources, video
from optidel.manifests import schema
from optidel.pipeline.config import IngestConfig
from optidel.pipeline.inputs import SourceRef, VideoSampling, list_sources
from optidel.stages import columns
from optidel.stages.ingest import Ingest

import videos

FPS = 25
N_FRAMES = 45  # 1.8 s at 25 fps: sampling at 1, 2 or 10 fps rounds up (2, 4, 18 frames)
DURATION = Fraction(N_FRAMES, FPS)
# One clip per container and codec family; libx264 uses B-frames, so its decode order is not
# its presentation order.
CLIPS = {
    "clip.mp4": {"codec": "libx264"},
    "clip.mkv": {"codec": "libx264", "seed": 1},
    "clip.avi": {"codec": "mpeg4", "seed": 2},
    "clip.webm": {"codec": "libvpx-vp9", "seed": 3},
}
DECODER_OF = {"libx264": "h264", "mpeg4": "mpeg4", "libvpx-vp9": "vp9"}
GENEROUS = {"time_limit_s": 60.0, "max_pixels": 10**8, "min_side": 1}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    for name, arguments in CLIPS.items():
        videos.write_video(folder / name, N_FRAMES, fps=FPS, **arguments)
    return {name: folder / name for name in CLIPS}


@pytest.fixture(scope="module")
def bad_pool(tmp_path_factory):
    """The bad-video pool listed and ingested at 10 fps: (folder of the clean twins, {file
    name: its rows in listing order})."""
    root = tmp_path_factory.mktemp("bad")
    videos.write_bad_pool(root / "pool", root / "clean")
    refs = list_sources([str(root / "pool")], VideoSampling(fps=10))
    return root / "clean", rows_by_file(ingest(refs, video_fps=10))


def listing_batch(refs) -> dict[str, np.ndarray]:
    rows = [dict(zip(columns.LISTING_COLUMNS, (i, *ref))) for i, ref in enumerate(refs)]
    return columns.to_batch(rows, columns.LISTING_COLUMNS)


def ingest(refs, **config) -> list[dict]:
    """Ingest's rows for these listing entries, one dict per row, the image included."""
    out = Ingest(IngestConfig(**config))(listing_batch(refs))
    return [{name: out[name][i] for name in out} for i in range(len(out[columns.URI]))]


def rows_by_file(rows: list[dict]) -> dict[str, list[dict]]:
    """{file name: its rows, in order}."""
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(Path(row["uri"]).name, []).append(row)
    return by_name


def decode(path: Path, targets: list[int]) -> list[video.Frame]:
    _, frames = video.decode_at(str(path), -1, -1, lambda stream: targets, **GENEROUS)
    return frames


def sample_targets(stream: video.Stream, fps: float) -> list[int]:
    return [stream.sample_pts(k, fps) for k in range(stream.sample_count(fps, None))]


# ----- probing and sampling -----------------------------------------------------------------


@pytest.mark.parametrize("name", CLIPS)
def test_probe_reads_the_stream_as_written(clips, name):
    stream = video.probe(str(clips[name]))
    assert (stream.duration, stream.rate, stream.start) == (DURATION, FPS, 0)
    assert (stream.width, stream.height, stream.pix_fmt) == (64, 64, "yuv420p")
    assert stream.codec == DECODER_OF[CLIPS[name]["codec"]]


@pytest.mark.parametrize(("fps", "max_frames"), [(1, None), (2, None), (10, None), (10, 5), (1, 5), (0.3, None)])
def test_sample_count_covers_the_duration_up_to_the_cap(clips, fps, max_frames):
    stream = video.probe(str(clips["clip.mp4"]))
    expected = math.ceil(DURATION * Fraction(fps).limit_denominator(1001))
    expected = expected if max_frames is None else min(expected, max_frames)
    assert stream.sample_count(fps, max_frames) == expected


def test_a_video_shorter_than_a_step_gives_one_frame(tmp_path):
    videos.write_video(tmp_path / "short.mkv", 3, fps=FPS)
    assert video.probe(str(tmp_path / "short.mkv")).sample_count(1, None) == 1


@pytest.mark.parametrize("fps", [1, 2, 10])
def test_sample_pts_is_the_sampling_time_floored_to_the_time_base(clips, fps):
    stream = video.probe(str(clips["clip.mp4"]))
    for k in range(stream.sample_count(fps, None)):
        pts = stream.sample_pts(k, fps)
        assert pts * stream.time_base <= Fraction(k, fps) < (pts + 1) * stream.time_base
        assert video.pts_of(stream, float(pts * stream.time_base)) == pts


@pytest.mark.parametrize("name", CLIPS)
def test_frame_at_a_time_is_the_last_one_at_or_before_it(clips, name):
    """Targets exactly on a frame, one tick before the next and half-way between: each gets the
    frame a plain front-to-back PyAV decode has on screen then, pixel for pixel."""
    reference = videos.reference_decode(clips[name])
    assert [videos.frame_number(image) for _, _, image in reference] == list(range(N_FRAMES))
    stream = video.probe(str(clips[name]))
    frame_ticks = round(1 / (stream.rate * stream.time_base))
    targets = sorted({p + offset for p, _, _ in reference for offset in (0, frame_ticks // 2, frame_ticks - 1)})
    for target, frame in zip(targets, decode(clips[name], targets)):
        expected = videos.shown_at(reference, target)
        pts, _, pixels = reference[expected]
        assert (frame.status, frame.pts, frame.index) == (schema.OK, pts, expected)
        assert frame.time == float(pts * stream.time_base)
        np.testing.assert_array_equal(frame.image, pixels)


def test_a_target_past_the_last_frame_has_no_frame(clips):
    stream = video.probe(str(clips["clip.mkv"]))
    end = math.ceil((stream.start + stream.duration) / stream.time_base)
    last, past = decode(clips["clip.mkv"], [end - 1, end + 10])
    assert last.status == schema.OK and videos.frame_number(last.image) == N_FRAMES - 1
    assert past.image is None and past.status == schema.CORRUPT and "ends before this time" in past.error


# ----- decoding in parts ------------------------------------------------------------------


@pytest.mark.parametrize("name", CLIPS)
def test_decoding_in_ranges_gives_the_frames_of_one_pass(clips, name):
    """Ingest decodes whatever run of a video's frames a batch holds, from one seek: runs that
    start mid-GOP give the same frames as one pass over all, and as a plain decode."""
    stream = video.probe(str(clips[name]))
    targets = sample_targets(stream, 7)  # 7 fps: targets fall between frames
    whole = decode(clips[name], targets)
    parts = [frame for start in range(0, len(targets), 3) for frame in decode(clips[name], targets[start : start + 3])]
    reference = videos.reference_decode(clips[name])
    assert len(whole) == len(parts) == len(targets) == math.ceil(DURATION * 7)
    for target, one, part in zip(targets, whole, parts):
        pts, _, pixels = reference[videos.shown_at(reference, target)]
        assert one.status == part.status == schema.OK
        assert one.pts == part.pts == pts
        np.testing.assert_array_equal(one.image, pixels)
        np.testing.assert_array_equal(part.image, pixels)


# Open GOPs: B-frames that follow a keyframe in decode order but show before it, referring back
# to the previous GOP. Matroska indexes keyframes by presentation time; MP4 and AVI seek by
# decode time, so a seek for a frame just before such a keyframe lands on the keyframe, and
# decode_at must step back.
OPEN_GOP = {"x264-params": "open-gop=1:keyint=12:min-keyint=12:scenecut=0"}


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("open_gop.mkv", {"options": OPEN_GOP}),
        ("open_gop.mp4", {"options": OPEN_GOP}),
        ("b_frames.avi", {"codec": "mpeg4", "options": {"bf": "2"}}),
    ],
)
def test_each_frame_read_alone_is_the_frame_ingest_decoded(tmp_path, name, arguments):
    """Every frame (25 fps sampling of 25 fps video) decoded in one pass by ingest, then read
    again alone, as pass 2 and the lineage view read it: one seek per frame."""
    path = tmp_path / name
    videos.write_video(path, N_FRAMES, fps=FPS, **arguments)
    rows = ingest(list_sources([str(path)], VideoSampling(fps=FPS)), video_fps=FPS)
    ok = [row for row in rows if row["status"] == schema.OK]
    assert len(ok) >= N_FRAMES - 1
    for row in ok:
        again = _read_again(row, name, str(path))
        np.testing.assert_array_equal(again, row["image"])


def test_a_video_in_a_tar_decodes_like_the_loose_file(clips, tmp_path):
    tar = tmp_path / "clips.tar"
    members = {"a/clip.mp4": clips["clip.mp4"], "b/clip.mkv": clips["clip.mkv"]}
    videos.tar_with(tar, members)
    sampling = VideoSampling(fps=5)
    in_tar = list_sources([str(tar)], sampling)
    loose = list_sources([str(p) for p in members.values()], sampling)
    assert [(ref.member, ref.video_sample) for ref in in_tar] == [
        (member, ref.video_sample) for member, path in members.items() for ref in loose if ref.uri == str(path)
    ]
    assert all(ref.offset > 0 and ref.length == members[ref.member].stat().st_size for ref in in_tar)
    tar_rows, loose_rows = ingest(in_tar, video_fps=5), ingest(loose, video_fps=5)
    assert all(row["status"] == schema.OK for row in tar_rows + loose_rows)
    assert [r["source_id"] for r in tar_rows] == [r["source_id"] for r in loose_rows]
    assert [r["frame_time"] for r in tar_rows] == [r["frame_time"] for r in loose_rows]
    assert len(set(r["source_id"] for r in tar_rows)) == len(tar_rows)  # moving scene: frames differ


# ----- listing ------------------------------------------------------------------------------


@pytest.fixture()
def mixed_folder(clips, tmp_path) -> Path:
    """Images and videos side by side, and one .mp4 that is not a video."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    frame = videos.scene(1)[0]
    Image.fromarray(frame).save(folder / "a.png")
    (folder / "b.mp4").write_bytes(clips["clip.mp4"].read_bytes())
    Image.fromarray(frame).save(folder / "c.jpg")
    (folder / "d.mkv").write_bytes(clips["clip.mkv"].read_bytes())
    videos.write_not_a_video(folder / "e.mp4")
    return folder


@pytest.mark.parametrize(("fps", "max_frames"), [(1, None), (2, None), (10, None), (10, 3)])
def test_a_folder_lists_images_once_and_videos_per_sampled_frame(mixed_folder, fps, max_frames):
    count = math.ceil(DURATION * fps) if max_frames is None else min(max_frames, math.ceil(DURATION * fps))
    expected = [
        ("a.png", -1),
        *(("b.mp4", k) for k in range(count)),
        ("c.jpg", -1),
        *(("d.mkv", k) for k in range(count)),
        ("e.mp4", -1),  # not a video: listed once, ingest says why
    ]
    refs = list_sources([str(mixed_folder)], VideoSampling(fps, max_frames))
    assert [(Path(ref.uri).name, ref.video_sample) for ref in refs] == expected
    assert all((ref.member, ref.offset, ref.length) == ("", -1, -1) for ref in refs)


def test_a_list_file_names_videos(mixed_folder):
    listed = mixed_folder / "list.txt"
    listed.write_text(f"# two videos\nb.mp4\n\n{mixed_folder / 'd.mkv'}\n")
    sampling = VideoSampling(fps=2)
    direct = list_sources([str(mixed_folder / "b.mp4"), str(mixed_folder / "d.mkv")], sampling)
    assert list_sources([str(listed)], sampling) == direct
    assert len(direct) == 2 * math.ceil(DURATION * 2)


def test_a_mixed_batch_ingests_images_and_frames(mixed_folder):
    by_name = rows_by_file(ingest(list_sources([str(mixed_folder)], VideoSampling(fps=2)), video_fps=2))
    for image in ("a.png", "c.jpg"):
        (row,) = by_name[image]
        assert row["status"] == schema.OK and math.isnan(row["frame_time"]) and row["frame_index"] == -1
        assert row["source_id"] == imageio.sha256_hex((mixed_folder / image).read_bytes())
    for clip in ("b.mp4", "d.mkv"):
        frames = by_name[clip]
        assert [row["status"] for row in frames] == [schema.OK] * len(frames)
        shown = [math.floor(Fraction(k, 2) * FPS) for k in range(len(frames))]  # the frame on screen at k / 2 s
        assert [row["frame_time"] for row in frames] == [i / FPS for i in shown]
        assert [row["frame_index"] for row in frames] == shown
        assert [row["frame_index"] for row in frames] == [videos.frame_number(row["image"]) for row in frames]
        assert all(row["source_id"] == video.frame_id(row["image"]) for row in frames)
    (bad,) = by_name["e.mp4"]
    assert bad["status"] == schema.CORRUPT and "not a readable video" in bad["error"]


# ----- bad videos ---------------------------------------------------------------------------

UNREADABLE = [
    ("zero_length.mp4", schema.CORRUPT, "empty file"),
    ("not_a_video.mp4", schema.CORRUPT, "not a readable video"),
    ("truncated_plain.mp4", schema.CORRUPT, "not a readable video"),
    ("audio_only.mkv", schema.UNSUPPORTED, "no video stream"),
    ("audio_only.mp4", schema.UNSUPPORTED, "no video stream"),
    ("unknown_codec.avi", schema.UNSUPPORTED, "no decoder for its video codec"),
]


@pytest.mark.parametrize(("name", "status", "reason"), UNREADABLE)
def test_an_unreadable_video_is_one_row_with_the_reason(bad_pool, name, status, reason):
    _, rows = bad_pool
    (row,) = rows[name]
    assert (row["video_sample"], row["status"], row["source_id"]) == (-1, status, "")
    assert reason in row["error"]
    assert row["image"].shape == (0, 0, 3) and math.isnan(row["frame_time"])


def test_every_bad_kind_is_listed(bad_pool):
    _, rows = bad_pool
    assert set(rows) == set(videos.BAD_VIDEOS)


@pytest.mark.parametrize("name", ["truncated.mkv", "truncated_faststart.mp4"])
def test_a_truncated_video_keeps_the_frames_before_the_cut(bad_pool, name):
    """An mp4's stream header still says 4 s, so all 40 samples are listed; a Matroska file's
    has no stream duration, so its samples end where its packets do. Those before the cut are
    the clean video's frames (the cut file is a prefix of its clean twin's bytes), the rest say
    the video ends early. Which survive is what a plain decode of the cut file shows."""
    clean_folder, rows = bad_pool
    pool_file = Path(rows[name][0]["uri"])
    assert (clean_folder / name).read_bytes().startswith(pool_file.read_bytes())
    declares_its_length = name.endswith(".mp4")
    assert (len(rows[name]) == 40) if declares_its_length else (0 < len(rows[name]) < 40)
    survived = videos.reference_decode(pool_file)
    clean = {pts: pixels for pts, _, pixels in videos.reference_decode(clean_folder / name)}
    time_base = survived[0][1]
    shown_until = survived[-1][0] * time_base + Fraction(1, FPS)
    statuses = [row["status"] for row in rows[name]]
    ok = statuses.count(schema.OK)
    assert 0 < ok and statuses == [schema.OK] * ok + [schema.CORRUPT] * (len(rows[name]) - ok)
    assert (ok < len(rows[name])) == declares_its_length
    for k, row in enumerate(rows[name]):
        if Fraction(k, 10) < shown_until:
            pts = survived[videos.shown_at(survived, math.floor(Fraction(k, 10) / time_base))][0]
            assert row["status"] == schema.OK and row["frame_time"] == float(pts * time_base)
            np.testing.assert_array_equal(row["image"], clean[pts])
        else:
            assert re.fullmatch(r"no frame at \d+\.\d{3} s: the video ends before this time", row["error"])
            assert row["image"].shape == (0, 0, 3) and row["source_id"] == ""


def _damaged_window(clean: Path) -> tuple[Fraction, Fraction]:
    """Presentation times [from, to) that packets CORRUPT_FIRST.. can affect: from the earliest
    frame decoded at or after the first damaged packet, to the next keyframe after the damage
    (libx264 and mpeg4 close their GOPs, so nothing after that keyframe refers back)."""
    time_base = videos.reference_decode(clean)[0][1]
    after = videos.packet_spans(clean)[videos.CORRUPT_FIRST :]
    start = min(span.pts for span in after)
    end = next(span.pts for span in after[videos.CORRUPT_COUNT :] if span.keyframe)
    return start * time_base, end * time_base


@pytest.mark.parametrize("name", ["corrupt_packets.mkv", "corrupt_packets.avi"])
def test_corrupt_packets_leave_the_frames_around_them_intact(bad_pool, name):
    clean_folder, rows = bad_pool
    start, end = _damaged_window(clean_folder / name)
    clean = videos.reference_decode(clean_folder / name)
    assert len(rows[name]) == 40
    outside = [(k, row) for k, row in enumerate(rows[name]) if not start <= Fraction(k, 10) < end]
    assert len(outside) < len(rows[name]) - 2  # the damage covers several samples
    time_base = clean[0][1]
    for k, row in outside:
        pts, _, pixels = clean[videos.shown_at(clean, math.floor(Fraction(k, 10) / time_base))]
        assert row["status"] == schema.OK and row["frame_time"] == float(pts * time_base), k
        np.testing.assert_array_equal(row["image"], pixels)
    inside = [row for k, row in enumerate(rows[name]) if start <= Fraction(k, 10) < end]
    assert all(row["status"] in (schema.OK, schema.CORRUPT) for row in inside)


@pytest.mark.parametrize("name", ["corrupt_packets.mkv", "corrupt_packets.avi"])
def test_an_ok_frame_after_a_corrupt_packet_shows_its_own_picture(bad_pool, name):
    _, rows = bad_pool
    for row in rows[name]:
        if row["status"] == schema.OK:
            assert videos.frame_number(row["image"]) == row["frame_index"]


def test_a_video_listed_as_unprobeable_is_not_decoded_later(clips):
    """A listing row with video_sample -1 (the video did not probe when the pool was listed)
    stays a bad row even if the file opens now: its frames were never counted."""
    (row,) = ingest([SourceRef(str(clips["clip.mkv"]), "", -1, -1, -1)])
    assert row["status"] == schema.CORRUPT and "could not be probed" in row["error"]


@pytest.mark.parametrize(
    ("limits", "status", "reason"),
    [({"min_side": 65}, schema.TOO_SMALL, "min_side 65"), ({"max_pixels": 4095}, schema.UNSUPPORTED, "max_pixels 4095")],
)
def test_size_limits_refuse_every_frame(clips, limits, status, reason):
    refs = list_sources([str(clips["clip.mp4"])], VideoSampling(fps=2))
    rows = ingest(refs, video_fps=2, **limits)
    assert len(rows) == 4 and all(row["status"] == status and reason in row["error"] for row in rows)


def test_the_time_limit_stops_decoding_with_its_reason(clips):
    refs = list_sources([str(clips["clip.mp4"])], VideoSampling(fps=10))
    started = time.monotonic()
    rows = ingest(refs, video_fps=10, video_time_limit_s=1e-9)
    assert time.monotonic() - started < 10
    assert len(rows) == 18
    for row in rows:
        assert row["status"] != schema.OK and row["image"].shape == (0, 0, 3)
        assert "no frame at" in row["error"] and "video_time_limit_s" in row["error"]


# ----- variable frame rate ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "options"), [("vfr.mkv", {}), ("vfr.webm", {}), ("vfr.mp4", {"bf": "0"})])
def test_variable_frame_rate_samples_by_presentation_time(tmp_path, name, options):
    """Frames at 0, 40, 100, 300, 310, 320, 700 and 1000 ms, sampled every 50 ms: each sample is
    the frame written last at or before its time, read back by its number."""
    codec = "libvpx-vp9" if name.endswith(".webm") else "libx264"
    videos.write_video(tmp_path / name, len(videos.VFR_PTS), pts=videos.VFR_PTS, codec=codec, options=options)
    refs = list_sources([str(tmp_path / name)], VideoSampling(fps=20))
    rows = ingest(refs, video_fps=20)
    assert len(rows) >= 21  # through 1000 ms, the last frame
    for k, row in enumerate(rows[:21]):
        shown = max(i for i, ms in enumerate(videos.VFR_PTS) if ms <= 50 * k)
        assert row["status"] == schema.OK, row["error"]
        assert videos.frame_number(row["image"]) == shown
        assert row["frame_time"] == videos.VFR_PTS[shown] / 1000


def test_variable_frame_rate_mp4_with_b_frames_lists_its_last_frame(tmp_path):
    path = tmp_path / "vfr_b.mp4"
    videos.write_video(path, len(videos.VFR_PTS), pts=videos.VFR_PTS)
    stream = video.probe(str(path))
    assert stream.sample_count(20, None) >= 21


@pytest.mark.parametrize(
    "name",
    [
        "late.mp4",
        "late.mkv",
    ],
)
def test_a_video_starting_late_has_a_frame_for_every_sample(tmp_path, name):
    """Frames every 40 ms from 0.5 s (a clip cut from a longer video keeps its timestamps)."""
    path = tmp_path / name
    pts = [500 + 40 * i for i in range(N_FRAMES)]
    videos.write_video(path, N_FRAMES, pts=pts)
    stream = video.probe(str(path))
    assert stream.start == Fraction(1, 2)
    rows = ingest(list_sources([str(path)], VideoSampling(fps=10)), video_fps=10)
    assert [row["error"] for row in rows] == [""] * len(rows)
    assert [videos.frame_number(row["image"]) for row in rows] == [k * 100 // 40 for k in range(len(rows))]


# ----- reading a frame again ------------------------------------------------------------------


def test_read_pixels_gives_ingests_frame_and_notices_a_replaced_video(clips, tmp_path):
    path = tmp_path / "again.mp4"
    path.write_bytes(clips["clip.mp4"].read_bytes())
    rows = ingest(list_sources([str(path)], VideoSampling(fps=5)), video_fps=5)
    for row in rows:
        again = _read_again(row, str(path), str(path))
        np.testing.assert_array_equal(again, row["image"])
    row = rows[len(rows) // 2]
    videos.write_video(path, N_FRAMES, fps=FPS, seed=9)  # same name, another video
    with pytest.raises(sources.SourceChanged, match=re.escape(str(path)) + ".*source_id"):
        _read_again(row, str(path), str(path))
    videos.write_not_a_video(path)
    with pytest.raises(sources.SourceChanged, match=re.escape(str(path)) + ".*cannot decode"):
        _read_again(row, str(path), str(path))


def test_read_pixels_reads_a_frame_inside_a_tar(clips, tmp_path):
    tar = tmp_path / "one.tar"
    videos.tar_with(tar, {"clip.mkv": clips["clip.mkv"]})
    rows = ingest(list_sources([str(tar)], VideoSampling(fps=2)), video_fps=2)
    row = rows[-1]
    again = _read_again(row, f"{tar} (member clip.mkv)", str(tar), int(row["offset"]), int(row["length"]))
    np.testing.assert_array_equal(again, row["image"])


def test_read_all_gives_every_source_once_whatever_the_order(clips):
    """Pass 2 asks for frames of several videos, and images, in sample order: each comes back
    once, with the pixels ingest gave it."""
    rows = [row for name in ("clip.mp4", "clip.mkv") for row in
            ingest(list_sources([str(clips[name])], VideoSampling(fps=5)), video_fps=5)]
    order = np.random.default_rng(0).permutation(len(rows)).tolist()
    reads = [sources.SourceRead(rows[i]["uri"], rows[i]["uri"], -1, -1, float(rows[i]["frame_time"]), rows[i]["source_id"])
             for i in order]
    got = dict(sources.read_all(reads, max_pixels=64 * 64, min_side=1))
    assert sorted(got) == list(range(len(reads)))
    for position, i in enumerate(order):
        np.testing.assert_array_equal(got[position], rows[i]["image"])


def _read_again(row: dict, where: str, uri: str, offset: int = -1, length: int = -1) -> np.ndarray:
    """An ingested frame's pixels read again the way pass 2 and the lineage view read them."""
    read = sources.SourceRead(where, uri, offset, length, float(row["frame_time"]), row["source_id"])
    return sources.read_pixels(read, max_pixels=64 * 64, min_side=1)


def test_an_empty_video_inside_a_tar_is_one_empty_file_row(tmp_path):
    empty = tmp_path / "empty.mp4"
    videos.write_zero_length(empty)
    videos.tar_with(tmp_path / "one.tar", {"clips/empty.mp4": empty})
    (row,) = ingest(list_sources([str(tmp_path / "one.tar")]))
    assert (row["member"], row["video_sample"], row["status"], row["error"]) == ("clips/empty.mp4", -1, schema.CORRUPT, "empty file")
