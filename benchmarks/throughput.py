"""Throughput of every stage against the whole run, on kvasir-seg, default CPU path.

One command, one process: each stage's kernel is timed alone, in sequence, on the same pool and
on one core, torch on one thread (decode, propose, key patches, crop, score, select,
compose+encode, write), then the whole `optidel run` on
a local Ray, then pass 1 with 1 and 2 Ray workers. Printed: images/s and share of time per
stage, the run's wall time and wall / sum-of-kernels (orchestration overhead), the fraction of
the pool read again in pass 2, and the speed-up of 2 workers over 1 on pass 1 (a worker is a
core: Ray runs pinned to 1, then 2 cores, with the default Ray settings). The proxy is
trained once up front (timed apart) and passed to the runs as a file, so every run does the
same work. The last line reads `overhead=<ratio> scaling=<ratio> pass2_fraction=<fraction>`.

With `--videos` the same images are the frames of H.264 videos of VIDEO_FRAMES frames each, at
one frame a second (the default ingest.video_fps), so the pool has the same sources and the
decode stage decodes video (results: throughput-{quick,full}-video.json).

    python benchmarks/throughput.py --quick      # 64 images, a few minutes on 2 cores
    python benchmarks/throughput.py              # 400 images
    python benchmarks/throughput.py --quick --videos
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from optidel.manifests.layout import Output, manifest_relpath
from optidel.pipeline import config as config_mod, pass1, pass2
from optidel.pipeline.inputs import iter_sources
from optidel.pipeline.listing import Listing
from optidel.pipeline.partitions import PartStore
from optidel.pipeline.runner import run
from optidel.pipeline.selection import plan as selection_plan
from optidel.stages import columns as C
from optidel.stages import mae, score
from optidel.stages.compose import Compose
from optidel.stages.crops import crop_resize
from optidel.stages.ingest import Ingest
from optidel.stages.keypatch import key_patches, mask_to_rle
from optidel.stages.propose import PROPOSERS, Propose
from optidel.stages.score import Score
from optidel.stages.write import ShardWriter

REPO = Path(__file__).resolve().parents[1]
KVASIR = REPO.parent / "shared" / "datasets" / "kvasir-seg" / "images"
RESULTS = REPO / "benchmarks" / "results"
VIDEO_FRAMES = 16  # --videos: frames a video
VIDEO_SIZE = (576, 480)  # --videos: frame width and height (kvasir-seg's images are about 600 x 500)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 images, fewer proxy steps")
    parser.add_argument("--images", type=int, help="pool size (default 400, or 64 with --quick)")
    parser.add_argument("--data", type=Path, default=KVASIR)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--videos", action="store_true", help="the images as the frames of videos, read as videos")
    args = parser.parse_args(argv)
    n = args.images or (64 if args.quick else 400)
    paths = sorted(args.data.glob("*.jpg"))[:n]
    if len(paths) < n:
        sys.exit(f"{args.data}: {len(paths)} images, {n} wanted")
    sets = (["score.mae.train_steps=60", "score.mae.train_patches=512"] if args.quick else []) + args.sets

    with tempfile.TemporaryDirectory(prefix="optidel-bench-") as tmp:
        tmp = Path(tmp)
        listing = tmp / "pool.txt"
        listing.write_text("".join(f"{p}\n" for p in (_videos(paths, tmp) if args.videos else paths)))
        config = config_mod.load(sets=sets)
        _local_ray(2)

        proxy, train_s = _train_proxy(listing, config, tmp)
        config = config_mod.load(sets=sets + [f"score.proxy={proxy}"])
        kernels = _kernels(listing, config, tmp)

        # The whole run on a fresh Ray (workers start cold, as in a real job), timed from
        # after ray.init: on a cluster, Ray is up before the job starts.
        ray.shutdown()
        _local_ray(2)
        start = time.perf_counter()
        info = run([str(listing)], str(tmp / "run"), config)
        wall = time.perf_counter() - start
        pass2_reads = _pass2_reads(tmp / "run")

        ray.shutdown()
        pass1_s = {
            workers: _pinned_pass1(workers, listing, sets + [f"score.proxy={proxy}"], tmp / f"w{workers}")
            for workers in (1, 2)
        }

    total = sum(kernels.values())
    overhead = wall / total
    scaling = pass1_s[1] / pass1_s[2]
    fraction = pass2_reads / n
    kind = f"frames of {-(-n // VIDEO_FRAMES)} videos" if args.videos else "images"
    print(f"\npool: {n} kvasir-seg {kind}; proxy trained once in {train_s:.1f} s (not in the figures)")
    print(f"{'stage':<16}{'seconds':>10}{'images/s':>11}{'share':>8}")
    for name, seconds in kernels.items():
        print(f"{name:<16}{seconds:>10.2f}{n / seconds:>11.1f}{seconds / total:>8.1%}")
    print(f"{'sum of kernels':<16}{total:>10.2f}{n / total:>11.1f}")
    print(f"{'optidel run':<16}{wall:>10.2f}{n / wall:>11.1f}   (run.json: {info['timings_s']})")
    print(f"pass 1: 1 worker {pass1_s[1]:.2f} s, 2 workers {pass1_s[2]:.2f} s")
    print(f"pass 2 read {pass2_reads} sources of {n} (bound M*keep = {config.mosaic * config.keep:.2f})")
    result = {
        "command": "python benchmarks/throughput.py" + (" --quick" if args.quick else "") + (" --videos" if args.videos else "")
        + "".join(f" --set {s}" for s in args.sets),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "images": n,
        "kernels_s": kernels,
        "run_wall_s": wall,
        "run_timings_s": info["timings_s"],
        "pass1_s_by_workers": pass1_s,
        "proxy_train_s": train_s,
        "overhead": overhead,
        "scaling": scaling,
        "pass2_fraction": fraction,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"throughput-{'quick' if args.quick else 'full'}{'-video' if args.videos else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out.relative_to(REPO)}")
    print(f"overhead={overhead:.3f} scaling={scaling:.3f} pass2_fraction={fraction:.3f}")
    return 0


def _videos(paths: list[Path], tmp: Path) -> list[Path]:
    """The images as frames of H.264 videos (VIDEO_FRAMES each, one a second, VIDEO_SIZE),
    libx264 at its defaults: one keyframe a video, as its 250-frame interval gives."""
    from PIL import Image

    from optidel import video

    videos = []
    for first in range(0, len(paths), VIDEO_FRAMES):
        path = tmp / f"video-{first // VIDEO_FRAMES:04d}.mp4"
        frames = [np.asarray(Image.open(p).convert("RGB").resize(VIDEO_SIZE)) for p in paths[first : first + VIDEO_FRAMES]]
        video.encode(path, frames, codec="libx264", rate=1, pix_fmt="yuv420p")
        videos.append(path)
    return videos


def _pinned_pass1(workers: int, listing: Path, sets: list[str], out: Path) -> float:
    """Pass 1's seconds on a local Ray confined to `workers` cores: Ray's processes inherit the
    driver's CPU affinity, so the 1-worker run cannot spill onto the second core (fractional
    CPUs would otherwise let several tasks share both)."""
    everything = os.sched_getaffinity(0)
    cores = sorted(everything)
    if len(cores) < workers:
        sys.exit(f"scaling needs {workers} cores, this machine lets this process use {len(cores)}")
    os.sched_setaffinity(0, cores[:workers])
    try:
        _local_ray(workers)
        return run([str(listing)], str(out), config_mod.load(sets=sets))["timings_s"]["pass1"]
    finally:
        ray.shutdown()
        os.sched_setaffinity(0, everything)


def _local_ray(cpus: int) -> None:
    # Workers at the kernels' priority, as `optidel run` starts a local Ray (raydata.connect):
    # at Ray's default niceness 15 any other process on the machine comes first.
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, _system_config={"worker_niceness": 0})
    ray.data.DataContext.get_current().enable_progress_bars = False


def _train_proxy(listing: Path, config, tmp: Path) -> tuple[str, float]:
    start = time.perf_counter()
    crops = pass1.training_crops(_listing(listing, tmp), config, PROPOSERS["regions"]).crops
    model = score.train_self_proxy(crops, config.score, config.seed)
    path = tmp / "proxy.pt"
    mae.save_proxy(model, str(path))
    return str(path), time.perf_counter() - start


def _listing(list_file: Path, tmp: Path) -> Listing:
    return Listing.write(iter_sources([str(list_file)]), str(tmp / "listing.parquet"))


def _kernels(listing: Path, config, tmp: Path) -> dict[str, float]:
    """Each stage's work alone, in this process, on the whole pool, on one core."""
    with _one_core():
        return _timed_kernels(listing, config, tmp)


@contextlib.contextmanager
def _one_core():
    """This thread on the first core, torch on one thread: the kernels are single-core seconds,
    as the runs' Ray workers compute them (Ray starts a task or an actor of under one CPU,
    the default ray.cpus_per_actor, with OMP_NUM_THREADS=1). Left to itself, torch scored on
    both cores: a kernel not single-core, and one that took 13.8 s, not 1.8 s, on 64 images
    while another process kept a core busy."""
    import torch

    everything, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, sorted(everything)[:1])
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        os.sched_setaffinity(0, everything)


def _timed_kernels(listing: Path, config, tmp: Path) -> dict[str, float]:
    seconds = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        seconds[name] = time.perf_counter() - start
        return result

    rows = list(_listing(listing, tmp).all_rows())
    batch = C.to_batch(rows, C.LISTING_COLUMNS)
    ingested = timed("decode", Ingest(config.ingest), batch)

    propose = Propose(config.propose, config.score.image_size, config.seed)
    propose.setup()
    images = list(ingested[C.IMAGE])
    masks = timed("propose", propose.masks, images)

    def key_patch_rows():
        # What the propose stage does between masks and crops: pick the key patches, then
        # read each one's mask for its RLE (the regions proposer's masks are built then).
        found = [key_patches(m, image.shape, config.propose, pixels=image) for m, image in zip(masks, images)]
        for patch in (p for patches in found for p in patches):
            mask_to_rle(np.asarray(patch.mask, dtype=bool))
        return found

    patches = timed("key patches", key_patch_rows)

    def crop_all():
        size = config.score.image_size
        return [
            [crop_resize(image, (0, 0, image.shape[1], image.shape[0]), size)]
            + [crop_resize(image, p.box, size) for p in found]
            for image, found in zip(images, patches)
        ]

    timed("crop", crop_all)
    proposed = propose(ingested)  # the stage's own output, to feed the next kernels (untimed)
    scored = timed("score", Score(config.score, config.seed, config.score.proxy), proposed)

    # The selection as the run makes it, by Ray tasks over the parts: here one part of the pool.
    store = PartStore(Output(str(tmp / "kernel-select")), len(rows), len(rows))
    store.write(0, scored)
    plan = timed("select", selection_plan.plan, store, config)

    sample_rows = pass2.sample_rows(plan, config)
    compose_batch = {k: _column([r[k] for r in sample_rows]) for k in sample_rows[0]}
    compose = Compose(config.output, plan.grid, config.ingest.max_pixels, config.ingest.min_side)
    composed = timed("compose+encode", compose, compose_batch)

    def write_all():
        output = Output(str(tmp / "kernel-out"))
        with ShardWriter(output, config.output.shard_max_count, config.output.shard_max_bytes) as writer:
            for key, image, meta in zip(composed["sample_key"], composed["image"], composed["json"]):
                writer.write(key, [(config.output.format, image), ("json", meta)])

    timed("write", write_all)
    return seconds


def _column(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _pass2_reads(out: Path) -> int:
    """Source reads pass 2 made: each compose task reads each of its distinct sources once."""
    import pyarrow.parquet as pq

    samples = pq.read_table(out / manifest_relpath("samples")).column("source_ids").to_pylist()
    per_task = Compose.execution.batch_size
    return sum(
        len({s for ids in samples[i : i + per_task] for s in ids}) for i in range(0, len(samples), per_task)
    )


if __name__ == "__main__":
    sys.exit(main())
