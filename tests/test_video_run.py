"""Video files as input, end to end on real Ray: a pool of videos (loose, and inside a tar) and
images is distilled; every frame is a source row with its video, index and time; lineage,
verify and `verify --sources` read the frames again; the README's readers run on the output;
and a run killed with SIGKILL in the middle of a video resumes to the same bytes without
redoing the ranges it had finished."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from optidel.manifests import layout, lineage
from optidel.manifests.report import build_report
from optidel.manifests.source_pixels import check_sources
from optidel.manifests.verify import verify
from optidel.pipeline.runner import run

import resume_fixtures as rf
from killable import optidel_run
from test_readme_readers import PROBES, run_snippet
from videos import tar_with, write_video

pytestmark = pytest.mark.slow  # real Ray runs, about 2 minutes

FPS = 25  # the test videos' frame rate
SAMPLED_FPS = 5  # ingest.video_fps in these runs
# On top of the crash tests' fast settings (rf.SETS); JPEG mosaics, as the README's readers expect.
VIDEO = [f"ingest.video_fps={SAMPLED_FPS}", "output.format=jpg"]


@pytest.fixture(scope="module")
def video_run(kvasir, tmp_path_factory, ray_local):
    """A folder of two videos and a tar holding a third, plus a list file naming two kvasir
    images in place, distilled once."""
    tmp = tmp_path_factory.mktemp("video-run")
    videos = tmp / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", 60, fps=FPS, size=128, gop=12, seed=1)
    write_video(videos / "b.mkv", 40, fps=FPS, size=128, gop=25, seed=2)
    write_video(tmp / "c.mp4", 30, fps=FPS, size=128, gop=12, seed=3)
    tar_with(videos / "clips.tar", {"clips/c.mp4": tmp / "c.mp4"})
    images = tmp / "images.txt"
    images.write_text("".join(f"{p}\n" for p in sorted((kvasir / "images").glob("*.jpg"))[:2]))
    out = tmp / "out"
    info = run([str(videos), str(images)], str(out), rf.config(*VIDEO))
    return videos, out, info


def _sources(out) -> list[dict]:
    return pq.read_table(out / layout.manifest_relpath("sources")).to_pylist()


def test_every_sampled_frame_is_a_source_with_its_video_index_and_time(video_run):
    videos, out, _ = video_run
    rows = _sources(out)
    by_video: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["frame_time"] is not None:
            by_video.setdefault((row["uri"], row["member"]), []).append(row)
    expected = {  # frames written -> frames sampled at SAMPLED_FPS: one per 5 frames
        (str(videos / "a.mp4"), None): 60,
        (str(videos / "b.mkv"), None): 40,
        (str(videos / "clips.tar"), "clips/c.mp4"): 30,
    }
    assert {key: len(frames) for key, frames in by_video.items()} == {key: n // 5 for key, n in expected.items()}
    for frames in by_video.values():
        assert all(r["status"] == "ok" and r["format"] == "h264" for r in frames)
        # frame k is the one on screen at k / 5 s: frame 5k of a 25 fps video, at exactly k / 5 s
        assert [r["frame_index"] for r in frames] == [5 * k for k in range(len(frames))]
        assert [r["frame_time"] for r in frames] == pytest.approx([k / SAMPLED_FPS for k in range(len(frames))])
    images = [r for r in rows if r["frame_time"] is None]
    assert len(images) == 2 and all(r["frame_index"] is None and r["format"] == "JPEG" for r in images)


def test_the_per_source_cap_holds_per_video_window(video_run):
    """Each clip is shorter than select.video_cap_window_s (10 s): all its frames share one
    cap of select.per_source_cap (4) patches, as one photo would."""
    _, out, _ = video_run
    where = {r["source_id"]: (r["uri"], r["member"], r["frame_time"] // 10) for r in _sources(out)
             if r["status"] == "ok" and r["frame_time"] is not None}
    patches = pq.read_table(out / layout.manifest_relpath("patches")).to_pylist()
    per_window: dict[tuple, int] = {}
    for p in patches:
        if p["selected"] and p["source_id"] in where:
            per_window[where[p["source_id"]]] = per_window.get(where[p["source_id"]], 0) + 1
    assert per_window and max(per_window.values()) <= 4
    assert any(p["reason"] == "source_cap" and p["source_id"] in where for p in patches)


def test_lineage_verify_and_sources_check_read_the_frames_again(video_run, tmp_path):
    videos, out, _ = video_run
    assert verify(str(out)).ok
    checked, total, drifted = check_sources(str(out), sample=0)
    assert (checked, total, drifted) == (total, len([r for r in _sources(out) if r["status"] == "ok"]), [])

    samples = pq.read_table(out / layout.manifest_relpath("samples")).to_pylist()
    frames = {r["source_id"] for r in _sources(out) if r["frame_time"] is not None}
    sample = next(s for s in samples if frames & set(s["source_ids"]))
    text = lineage.format_lineage(lineage.lineage(str(out), sample["sample_key"]))
    assert " s (frame " in text and str(videos) in text
    panels = lineage.draw_lineage(str(out), sample["sample_key"], str(tmp_path / "lineage.png"))
    assert len(panels) == 1 + len(set(sample["source_ids"]))  # the mosaic, then each source read again


def test_report_draws_every_sample_lineage_from_the_frames(video_run, caplog):
    _, out, info = video_run
    index = build_report(str(out))
    drawn = sorted((out / "report" / "lineage").glob("*.jpg"))
    assert index.endswith("index.html") and len(drawn) == info["counts"]["samples"] > 0
    assert "not drawn" not in caplog.text


def test_sources_check_names_a_video_that_changed(video_run, tmp_path):
    videos, out, _ = video_run
    original = (videos / "b.mkv").read_bytes()
    try:
        write_video(videos / "b.mkv", 40, fps=FPS, size=128, gop=25, seed=9)  # same shape, other pixels
        result = subprocess.run(
            [sys.executable, "-m", "optidel.pipeline.cli", "verify", str(out), "--sources", "--sample", "0"],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        (videos / "b.mkv").write_bytes(original)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("verify OK")  # the shards are as written; the pool is not
    assert "verify --sources FAILED: 8 of" in lines[1]
    assert all("b.mkv @ " in line and "recorded in pass 1" in line for line in lines[2:])


@pytest.mark.parametrize("name", sorted(PROBES))
def test_readme_readers_on_a_video_sourced_output(name, video_run, tmp_path):
    _, out, info = video_run
    got = run_snippet(name, str(out), tmp_path)
    n_samples = info["counts"]["samples"]
    if name in ("webdataset", "wids", "ray.data", "HF datasets"):
        assert got[0] == n_samples > 0
    elif name == "DuckDB":  # selected patches per source file: a video counts once, over its frames
        assert sum(n for _, n in got) == 4 * n_samples and any(uri.endswith((".mp4", ".mkv", ".tar")) for uri, _ in got)
    else:
        assert got[0] > 0 and math.prod(got[2]) > got[3] > 0


def test_killed_mid_video_resumes_to_the_same_bytes_without_redoing_its_ranges(tmp_path, ray_local):
    """One video cut into ranges of 4 sampled frames (partitions); the run is killed with three
    of them persisted; the rerun does only the others and ends with the uninterrupted run's
    bytes."""
    pool = tmp_path / "pool"
    pool.mkdir()
    write_video(pool / "long.mp4", 200, fps=FPS, size=128, gop=25, seed=4)  # 8 s: 40 frames at 5 fps
    ranges = [*VIDEO, "ingest.partition_size=4"]
    reference = tmp_path / "reference"
    run([str(pool)], str(reference), rf.config(*ranges))

    out = tmp_path / "out"
    killed = optidel_run([str(pool)], out, [*rf.SETS, *ranges, *rf.SMALL_BATCHES], kill_when=lambda o: _parts(o) >= 3)
    assert killed.killed, killed.log[-2000:]
    done_at_kill = _parts(out)
    assert 3 <= done_at_kill < 10 and json.loads((out / "run.json").read_text())["status"] == "running"
    info = run([str(pool)], str(out), rf.config(*ranges))
    assert info["reused"]["pass1_partitions"] == 10
    assert info["reused"]["pass1_partitions_reused"] == done_at_kill
    rf.assert_same_as_reference(out, reference)


def _parts(out) -> int:
    return len(list((out / "work" / "pass1").glob("part-*.parquet")))
