"""Video decode throughput per core: the pipeline's decode-and-sample stage against the floor.

Issue 27, item 8: the decode-and-sample stage (stages/ingest.py `Ingest.each`, which decodes a
run of one video's consecutive rows in one pass through optidel.video.decode_frames: one seek
to the keyframe before the first frame, then forward) should reach at least 0.8x the floor: the
same file decoded with PyAV alone, no pipeline around it.

What is timed, on one core (the process is pinned to one CPU, so FFmpeg's automatic thread
count is 1; both arms keep PyAV's default thread settings, as decode_frames does):

  floor   av.open(path); `for frame in container.decode(video=0)` straight through the whole
          file, converting to RGB (to_ndarray("rgb24")) only the frames sampling takes: the
          frame on screen at each start + k / fps (ingest.video_fps, 1 by default).
  stage   The file's listing rows (optidel.pipeline.inputs.list_sources), cut into calls of
          consecutive rows; per call a fresh Ingest (pipeline/raydata.py builds the stage per
          call) whose `each` is iterated, each (row, image) dropped as it comes, as
          IngestAndPropose (pipeline/pass1_stages.py) takes them one source at a time.

The calls a default run makes ("run" below) are observed, not assumed: the listing rows go
through pass1._stream (blocks of max(ray.model_batch_size, pass1.VIDEO_ROWS_PER_BLOCK) rows
for video) on a local Ray, in a subprocess, with a recording stage in place of the first step
of pass1.proposed (same execution, same batch size); each call's rows are then timed as above.
Beside it, a sweep of rows per call (--blocks), consecutive cuts of the listing.

The arms alternate (floor, stage, floor, stage, ...), the pair order flipping every repeat;
each stage run's ratio is floor / stage of its pair. Times are the process's CPU time (the
machine is shared; pinned to one core the process uses one thread, so CPU time is its time on
the core); wall time is recorded beside it. Once per cut, untimed, the stage's decoded frames
are counted and its frames checked against the floor's (same timestamps, same pixels). A few
unit costs (open, seek and first frame, decoded frame, RGB conversion, frame id) explain where
the stage's time goes.

The test video is a pan across a strip of kvasir-seg colonoscopy images with a slow vertical
sway and light sensor noise, libx264 at its defaults (preset medium, crf 23, B-frames) with the
given GOP; generated once per setting into --videos (a temp folder by default).

    python benchmarks/decode_floor.py [--seconds 60] [--gop 50 250] [--repeats 3] \
        [--blocks 1 8 16 32 64] [--out benchmarks/results/decode-floor]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from optidel import video
from optidel.pipeline.config import IngestConfig
from optidel.pipeline.inputs import VideoSampling, list_sources
from optidel.stages import columns as C
from optidel.stages.ingest import Ingest
from optidel.stages.propose import resolve_proposer

KVASIR = Path("/work/shared/datasets/kvasir-seg/images")
TARGET = 0.8
PAN_PX_PER_FRAME = 4  # a slow camera move: 100 px a second at 25 fps
RUN = "run"  # the cut of the calls a default run makes
MARK = "RUN_CALLS "  # prefixes the Ray subprocess's answer on its stdout


# --- the test video ----------------------------------------------------------------------------


def video_path(folder: Path, seconds: int, fps: int, size: tuple[int, int], gop: int) -> Path:
    return folder / f"pan-{size[0]}x{size[1]}-{fps}fps-{seconds}s-gop{gop}.mp4"


def image_strip(height: int, n_images: int) -> np.ndarray:
    """kvasir-seg images side by side, each scaled to `height`: the scene the camera pans over."""
    tiles = []
    for path in sorted(KVASIR.glob("*.jpg"))[:n_images]:
        with Image.open(path) as image:
            image = image.convert("RGB")
            width = round(image.width * height / image.height)
            tiles.append(np.asarray(image.resize((width, height), Image.BILINEAR)))
    return np.concatenate(tiles, axis=1)


def make_video(path: Path, seconds: int, fps: int, size: tuple[int, int], gop: int) -> None:
    """A pan across the strip end to end, swaying vertically, with light noise; libx264 at its
    defaults but for the keyframe interval. Written to a temp name, then renamed."""
    width, height = size
    sway = height // 20
    frames = seconds * fps
    # Images at least as wide as tall: enough of them for a pan of PAN_PX_PER_FRAME or more.
    strip = image_strip(height + 2 * sway, n_images=math.ceil((width + frames * PAN_PX_PER_FRAME) / height) + 1)
    speed = (strip.shape[1] - width) / frames
    noise = [np.random.default_rng(i).normal(0, 2.0, (height, width, 3)).astype(np.int16) for i in range(8)]
    partial = path.with_suffix(".part.mp4")
    with av.open(str(partial), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(frames):
            x, y = int(i * speed), int(sway + sway * math.sin(i / 40))
            pixels = np.clip(strip[y : y + height, x : x + width].astype(np.int16) + noise[i % 8], 0, 255)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels.astype(np.uint8), format="rgb24")))
        out.mux(stream.encode())
    partial.rename(path)


def describe_video(path: Path) -> dict:
    """Frames, keyframes and bit rate: what the decode cost depends on."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        seconds = float(stream.duration * stream.time_base)
        return {
            "path": str(path),
            "codec": stream.codec_context.name,
            "size": f"{stream.width}x{stream.height}",
            "frames": len(packets),
            "keyframes": sum(p.is_keyframe for p in packets),
            "seconds": seconds,
            "kbit_s": round(path.stat().st_size * 8 / seconds / 1000),
        }


# --- the two arms ------------------------------------------------------------------------------


def floor_decode(path: Path, sample_fps: float, n_samples: int) -> dict:
    """PyAV alone: decode every frame in order; convert to RGB the frame on screen at each
    sampling time (the last one whose timestamp is at or before it)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        time_base = Fraction(stream.time_base)
        start = (stream.start_time or 0) * time_base
        fps = Fraction(sample_fps).limit_denominator(1001)
        targets = [math.floor((start + k / fps) / time_base) for k in range(n_samples)]
        images, pts, decoded, held = [], [], 0, None
        for frame in container.decode(stream):
            decoded += 1
            while len(images) < n_samples and frame.pts > targets[len(images)]:
                images.append(held.to_ndarray(format="rgb24"))
                pts.append(held.pts)
            held = frame
        while len(images) < n_samples:  # the last frame stays on screen to the end
            images.append(held.to_ndarray(format="rgb24"))
            pts.append(held.pts)
    return {"images": images, "times": [float(p * time_base) for p in pts], "decoded": decoded}


def listing_rows(path: Path, sample_fps: float) -> list[dict]:
    """The file's listing rows as a run lists them (pipeline/listing.py's Listing.rows)."""
    refs = list_sources([str(path)], VideoSampling(sample_fps, None))
    return [{C.INPUT_INDEX: i, **ref._asdict()} for i, ref in enumerate(refs)]


def stage_decode(calls: list[dict[str, np.ndarray]], config: IngestConfig) -> None:
    """The stage as a default run calls it: per call a fresh Ingest (pipeline/raydata.py builds
    the stage per call), its `each` iterated one source at a time, each (row, image) dropped
    as the next comes (IngestAndPropose proposes it in between; not timed here)."""
    for call in calls:
        for _source in Ingest(config).each(call):
            pass


def timed(fn, *args):
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn(*args)
    return result, time.process_time() - cpu, time.perf_counter() - wall


# --- the calls a default run makes -------------------------------------------------------------


def observe_run_calls(paths: list[str], sample_fps: float) -> dict:
    """Run in a subprocess (so the timed process never imports Ray): each video's listing rows
    through pass1._stream on a local Ray, with a recording stage in place of the first step of
    pass1.proposed for the default config (same execution, same batch size). Returns, per path,
    the calls Ray made: (first input_index, rows, worker pid), in listing order."""
    import ray

    from optidel.pipeline import pass1, raydata
    from optidel.pipeline.config import Config

    config = Config(ingest=IngestConfig(video_fps=sample_fps))
    proposer = resolve_proposer(config.propose)
    first = pass1.proposed(config, proposer)[0]

    class Recording:
        execution = first.stage.execution

        def __init__(self, **kwargs):
            pass

        def __call__(self, batch):
            n = len(batch[C.INPUT_INDEX])
            return {"first": np.full(n, int(batch[C.INPUT_INDEX][0])), "rows": np.full(n, n),
                    "pid": np.full(n, os.getpid())}

    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        out = {}
        for path in paths:
            calls = set()
            for batch in pass1._stream(listing_rows(Path(path), sample_fps), [raydata.Step(Recording, {}, first.batch_size)], config):
                calls |= {tuple(map(int, c)) for c in zip(batch["first"], batch["rows"], batch["pid"])}
            out[path] = sorted(calls)
    finally:
        ray.shutdown()
    return {
        "calls": out,
        "step": first.stage.__name__,
        "proposer": proposer.name,
        "model_batch_size": config.ray.model_batch_size,
        "video_rows_per_block": pass1.VIDEO_ROWS_PER_BLOCK,
        "rows_per_block": max(config.ray.model_batch_size, pass1.VIDEO_ROWS_PER_BLOCK),
        "ray": ray.__version__,
    }


def run_calls(paths: list[Path], sample_fps: float) -> dict:
    """observe_run_calls in a fresh Python; its answer is the stdout line after MARK."""
    done = subprocess.run(
        [sys.executable, __file__, "--observe-run", *map(str, paths), "--sample-fps", str(sample_fps)],
        capture_output=True, text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode or not lines:
        raise SystemExit(f"observing the run's calls failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARK):])


# --- checks and unit costs ---------------------------------------------------------------------


def counted_stage(calls, config: IngestConfig) -> tuple[list[dict], int]:
    """The stage once, untimed: its source rows, and the frames it decoded (optidel.video's
    _decoded wrapped for the call; a frame a step-back seek decoded and dropped counts too)."""
    original, count = video._decoded, [0]

    def counting(*args):
        for item in original(*args):
            count[0] += not isinstance(item, video._Stop)
            yield item

    video._decoded = counting
    try:
        return [row for call in calls for row, _image in Ingest(config).each(call)], count[0]
    finally:
        video._decoded = original


def check_same_frames(rows: list[dict], floor: dict, label: str) -> None:
    """The stage's frames are the floor's: same timestamps, same pixels (frame ids)."""
    statuses = {row[C.STATUS] for row in rows}
    times = [row.get(C.FRAME_TIME) for row in rows]
    ids = [row.get(C.SOURCE_ID) for row in rows]
    if statuses != {"ok"} or times != floor["times"] or ids != [video.frame_id(i) for i in floor["images"]]:
        raise SystemExit(f"{label}: stage and floor disagree: statuses {statuses}, times equal {times == floor['times']}")


def per_call(fn, n: int = 20) -> float:
    fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n


def unit_costs(path: Path, floor_cpu_s: float, floor: dict) -> dict:
    """Seconds per: opening the file as decode_frames does (`probe`: header, and the last
    packets for where the stream ends), a seek and the first frame after it, a decoded frame,
    an RGB conversion, a frame id (sha256)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        rgb = per_call(lambda: frame.to_ndarray(format="rgb24"), 50)

        def seek_first_frame():
            container.seek(0, stream=stream, backward=True)
            next(container.decode(stream))

        seek = per_call(seek_first_frame)
    image = floor["images"][0]
    return {
        "open_s": per_call(lambda: video.probe(str(path))),
        "seek_first_frame_s": seek,
        "decode_frame_s": (floor_cpu_s - len(floor["images"]) * rgb) / floor["decoded"],
        "rgb_s": rgb,
        "frame_id_s": per_call(lambda: video.frame_id(image), 50),
    }


# --- the benchmark -----------------------------------------------------------------------------


def cuts(n: int, rows_per_call: int) -> list[tuple[int, int]]:
    return [(i, min(i + rows_per_call, n)) for i in range(0, n, rows_per_call)]


def run_case(path: Path, gop: int, args, config: IngestConfig, observed: list, log) -> tuple[list[dict], dict]:
    """One GOP case: the untimed counting pass per cut, then the alternated repeats. Cuts: RUN
    (the calls the default run made) and each --blocks value."""
    batch = C.to_batch(listing_rows(path, args.sample_fps), C.LISTING_COLUMNS)
    n_samples = len(batch[C.URI])
    floor = floor_decode(path, args.sample_fps, n_samples)  # warm-up, and the frames to check
    run_cut = [(first, first + rows) for first, rows, _pid in observed]
    if [a for a, _ in run_cut] != [0, *(b for _, b in run_cut[:-1])] or run_cut[-1][1] != n_samples:
        raise SystemExit(f"the run's calls do not cover the {n_samples} rows in order: {observed}")
    plans = {RUN: run_cut, **{str(b): cuts(n_samples, b) for b in args.blocks}}
    calls = {label: [C.take(batch, slice(a, b)) for a, b in plan] for label, plan in plans.items()}
    decoded = {}
    for label in plans:
        rows, decoded[label] = counted_stage(calls[label], config)
        check_same_frames(rows, floor, f"GOP {gop}, {label}")
    runs = []
    for repeat in range(args.repeats):
        for label in plans:
            pair = ["floor", "stage"] if repeat % 2 == 0 else ["stage", "floor"]
            times = {}
            for arm in pair:
                if arm == "floor":
                    _, cpu, wall = timed(floor_decode, path, args.sample_fps, n_samples)
                else:
                    _, cpu, wall = timed(stage_decode, calls[label], config)
                times[arm] = (cpu, wall)
                frames = floor["decoded"] if arm == "floor" else decoded[label]
                runs.append({
                    "gop": gop, "repeat": repeat, "cut": label, "arm": arm, "order": pair.index(arm),
                    "cpu_s": cpu, "wall_s": wall, "calls": 1 if arm == "floor" else len(plans[label]),
                    "rows_per_call": [n_samples] if arm == "floor" else [b - a for a, b in plans[label]],
                    "frames_decoded": frames, "frames_sampled": n_samples, "decoded_fps": frames / cpu,
                })
                log(json.dumps(runs[-1]))
            runs[-1]["ratio_cpu"] = runs[-2]["ratio_cpu"] = times["floor"][0] / times["stage"][0]
            runs[-1]["ratio_wall"] = runs[-2]["ratio_wall"] = times["floor"][1] / times["stage"][1]
    return runs, floor


def summarise(runs: list[dict], gop: int, costs: dict, labels: list[str]) -> dict:
    def med_range(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    mine = [r for r in runs if r["gop"] == gop]
    floor = [r for r in mine if r["arm"] == "floor"]
    out = {"floor": {"cpu_s": med_range([r["cpu_s"] for r in floor]),
                     "decoded_fps": med_range([r["decoded_fps"] for r in floor]),
                     "frames_decoded": floor[0]["frames_decoded"]}, "stage": {}}
    for label in labels:
        stage = [r for r in mine if r["arm"] == "stage" and r["cut"] == label]
        calls, decoded, sampled = stage[0]["calls"], stage[0]["frames_decoded"], stage[0]["frames_sampled"]
        model = calls * (costs["open_s"] + costs["seek_first_frame_s"]) + decoded * costs["decode_frame_s"] \
            + sampled * (costs["rgb_s"] + costs["frame_id_s"])
        out["stage"][label] = {
            "calls": calls, "rows_per_call": stage[0]["rows_per_call"], "frames_decoded": decoded,
            "cpu_s": med_range([r["cpu_s"] for r in stage]),
            "decoded_fps": med_range([r["decoded_fps"] for r in stage]),
            "sampled_fps": med_range([sampled / r["cpu_s"] for r in stage]),
            "ratio_cpu": med_range([r["ratio_cpu"] for r in stage]),
            "ratio_wall": med_range([r["ratio_wall"] for r in stage]),
            "model_cpu_s": model,
        }
    reaching = [int(label) for label in labels if label != RUN and out["stage"][label]["ratio_cpu"]["median"] >= TARGET]
    out["smallest_rows_per_call_reaching_target"] = min(reaching) if reaching else None
    return out


def markdown(summary: dict, meta: dict) -> str:
    def rng(m, fmt="{:.2f}"):
        return f"{fmt.format(m['median'])} ({fmt.format(m['min'])}-{fmt.format(m['max'])})"

    run = meta["run"]
    lines = [
        "# Video decode: pipeline stage against the PyAV floor, one core",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{meta['cpu']}, pinned to CPU {meta['pinned_cpu']}; PyAV {meta['pyav']}, libavcodec {meta['libavcodec']}; "
        f"load average {meta['load_before']:.2f} before, {meta['load_after']:.2f} after (shared machine). "
        f"Sampling {meta['sample_fps']} fps. Stage = `Ingest(config).each(call)` iterated, a fresh Ingest per call. "
        f"Times are CPU seconds of the pinned process; median (min-max) of {meta['repeats']} alternated pairs; "
        f"ratio = floor / stage of each pair (target >= {TARGET}).",
        "",
        f"**Default run** (row `{RUN}`): pass1._stream hands Ray blocks of max(ray.model_batch_size "
        f"{run['model_batch_size']}, VIDEO_ROWS_PER_BLOCK {run['video_rows_per_block']}) = {run['rows_per_block']} "
        f"rows; Ray {run['ray']} then called the first step ({run['step']}, proposer {run['proposer']}), "
        "observed per video: "
        + "; ".join(f"GOP {gop}: {len(c)} calls of {','.join(str(r) for _, r, _ in c)} rows in "
                    f"{len({p for _, _, p in c})} worker(s)" for gop, c in meta["run_calls"].items())
        + f". Row `{run['rows_per_block']}` is one call per block.",
        "",
    ]
    for gop, s in summary.items():
        v, costs = meta["videos"][gop], meta["unit_costs"][gop]
        f = s["floor"]
        lines += [
            f"## GOP {gop}: {v['size']}, {v['frames']} frames, {v['keyframes']} keyframes, {v['kbit_s']} kbit/s",
            "",
            f"Floor: {rng(f['cpu_s'], '{:.3f}')} s, {f['frames_decoded']} frames decoded, "
            f"{rng(f['decoded_fps'], '{:.0f}')} frames/s.",
            "",
            "| rows/call | calls | frames decoded | stage s | decoded frames/s | sampled frames/s | ratio (cpu) "
            "| ratio (wall) | model s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, st in s["stage"].items():
            name = f"**{RUN}** ({','.join(map(str, st['rows_per_call']))})" if label == RUN else label
            if label == str(run["rows_per_block"]):
                name += " (one call per block)"
            lines.append(
                f"| {name} | {st['calls']} | {st['frames_decoded']} | {rng(st['cpu_s'], '{:.3f}')} | "
                f"{rng(st['decoded_fps'], '{:.0f}')} | {rng(st['sampled_fps'], '{:.1f}')} | {rng(st['ratio_cpu'])} | "
                f"{rng(st['ratio_wall'])} | {st['model_cpu_s']:.3f} |"
            )
        lines += [
            "",
            f"Smallest rows per call reaching {TARGET}: {s['smallest_rows_per_call_reaching_target']}. Unit costs (ms): "
            + ", ".join(f"{k[:-2]} {v * 1e3:.2f}" for k, v in costs.items())
            + ". model s = calls x (open + seek_first_frame) + decoded x decode_frame + sampled x (rgb + frame_id).",
            "",
        ]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="test video length")
    parser.add_argument("--gop", type=int, nargs="+", default=[50, 250], help="keyframe intervals, one case each")
    parser.add_argument("--repeats", type=int, default=3, help="alternated floor/stage pairs per cut")
    parser.add_argument("--out", default="benchmarks/results/decode-floor", help="runs.jsonl and summary.md")
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 8, 16, 32, 64],
                        help="rows per Ingest.each call, swept beside the default run's calls")
    parser.add_argument("--size", default="640x480", help="video width x height")
    parser.add_argument("--fps", type=int, default=25, help="video frame rate")
    parser.add_argument("--sample-fps", type=float, default=IngestConfig().video_fps, help="ingest.video_fps")
    parser.add_argument("--videos", default=os.path.join(tempfile.gettempdir(), "optidel-decode-floor"),
                        help="where the test videos are generated, once")
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)), help="the CPU to pin to")
    parser.add_argument("--observe-run", nargs="+", help=argparse.SUPPRESS)  # the Ray subprocess
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.observe_run:
        print(MARK + json.dumps(observe_run_calls(args.observe_run, args.sample_fps)), flush=True)
        return
    size = tuple(int(x) for x in args.size.split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(args.videos)
    folder.mkdir(parents=True, exist_ok=True)
    config = IngestConfig(video_fps=args.sample_fps)
    started = time.perf_counter()
    paths = {gop: video_path(folder, args.seconds, args.fps, size, gop) for gop in args.gop}
    for gop, path in paths.items():
        if not path.exists():
            print(f"generating {path}", flush=True)
            make_video(path, args.seconds, args.fps, size, gop)
    observed = run_calls(list(paths.values()), args.sample_fps)  # before pinning: Ray gets the machine
    os.sched_setaffinity(0, {args.cpu})
    run = {k: v for k, v in observed.items() if k != "calls"}
    meta = {
        "command": " ".join(["python benchmarks/decode_floor.py", *(sys.argv[1:] if argv is None else argv)]),
        "cpu": platform.processor() or platform.machine(), "pinned_cpu": args.cpu, "pyav": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])), "sample_fps": args.sample_fps,
        "run": run, "run_calls": {gop: observed["calls"][str(p)] for gop, p in paths.items()},
        "repeats": args.repeats, "load_before": os.getloadavg()[0], "videos": {}, "unit_costs": {},
    }
    labels = [RUN, *map(str, args.blocks)]
    runs, summary = [], {}
    with open(out / "runs.jsonl", "w") as raw:
        def log(line):
            print(line, flush=True)
            raw.write(line + "\n")

        for gop, path in paths.items():
            meta["videos"][gop] = describe_video(path)
            case, floor = run_case(path, gop, args, config, meta["run_calls"][gop], log)
            floor_cpu = statistics.median(r["cpu_s"] for r in case if r["arm"] == "floor")
            meta["unit_costs"][gop] = unit_costs(path, floor_cpu, floor)
            runs += case
            summary[gop] = summarise(runs, gop, meta["unit_costs"][gop], labels)
    meta["load_after"] = os.getloadavg()[0]
    meta["total_s"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=1) + "\n")
    text = markdown(summary, meta)
    (out / "summary.md").write_text(text + f"\nTotal {meta['total_s']:.0f} s (video generation included).\n")
    print(text)


if __name__ == "__main__":
    main()
