"""Peak memory of a whole `optidel run` at 1x and 4x the pool size: does the run stream?

Two pools are made from the same kvasir-seg images: 1x holds N of them, 4x holds each of those
4 times. Every file is decoded and re-encoded (JPEG, quality 95) with a JPEG comment naming its
copy, so the copies have the same pixels and sizes but different bytes (byte-identical copies
would be marked duplicate and skipped) and both pools go through the same encoder. Each pool
then runs through `optidel run` in a subprocess, on a local Ray of its own, with FAST-like
settings (tests/test_run_optidel.py) and one fixed random proxy checkpoint (so every run does
the same work and no proxy training is timed; training uses a fixed-size sample anyway).

While a run goes, the resident memory of the driver and of every process under it (Ray's GCS,
raylet, workers and actors) is sampled every 0.2 s with psutil. Reported per pool: peak total
RSS (shared pages, e.g. the object store, counted once per process that maps them), peak total
PSS (shared pages split between the processes: the sum is the memory actually used), the
driver's own peak RSS and USS (its private pages: RSS also counts the object store's shared
pages the driver has touched while reading pass 1's blocks), each role's own peak PSS (driver,
gcs, raylet, task workers, actors, other), and the number of candidate patches. Each pool is
run --repeats times (the pools alternating), and each peak is reported as its median with its
range: one run's peak moves by tens of MiB from run to run. Then the 4x/1x ratios of the
medians and the growth per added patch. (The selection's own driver memory, which holds no row
of the pool, is benchmarks/scale.py's.)

    python benchmarks/memory.py                  # 150 and 600 images
    python benchmarks/memory.py --factor 8       # 150 and 1200 images
    python benchmarks/memory.py --images 40      # quicker: 40 and 160
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from optidel.pipeline import config as config_mod
from optidel.stages import mae, score
from sampling import run_sampled  # benchmarks/sampling.py: run as a script, its folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
KVASIR = REPO.parent / "shared" / "datasets" / "kvasir-seg" / "images"
RESULTS = REPO / "benchmarks" / "results"
FAST = [
    "score.mae.train_steps=60",
    "score.mae.train_patches=512",
    "score.masks_per_patch=2",
    "select.clusters=8",
    "output.size=128",
    "output.format=png",
]


def build_pools(sources: list[Path], factor: int, directory: Path) -> dict[int, Path]:
    """List files {1: 1x pool, factor: factor-x pool}; copy k of a source has comment `copy k`."""
    directory.mkdir(parents=True, exist_ok=True)
    lines: dict[int, list[str]] = {1: [], factor: []}
    for i, path in enumerate(sources):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        for k in range(factor):
            buffer = io.BytesIO()
            rgb.save(buffer, "JPEG", quality=95, comment=f"optidel memory benchmark copy {k}".encode())
            name = directory / f"{i:04d}-{k}.jpg"
            name.write_bytes(buffer.getvalue())
            lines[factor].append(str(name))
            if k == 0:
                lines[1].append(str(name))
    pools = {}
    for size, entries in lines.items():
        pools[size] = directory / f"pool-{size}x.txt"
        pools[size].write_text("".join(f"{e}\n" for e in entries))
    return pools


def measure(pool: Path, out: Path, proxy: Path, sets: list[str]) -> dict:
    """Run `optidel run` on `pool` in a subprocess while sampling its memory."""
    command = [sys.executable, "-m", "optidel.pipeline.cli", "--quiet", "run", str(pool), "-o", str(out), "--proxy", str(proxy)]
    command += [arg for item in sets for arg in ("--set", item)]
    _, wall, sampler = run_sampled(command, "optidel run")
    info = json.loads((out / "run.json").read_text())
    return {
        "sources": info["counts"]["sources"],
        "candidate_patches": info["counts"]["candidate_patches"],
        "samples": info["counts"]["samples"],
        "wall_s": round(wall, 1),
        "timings_s": info["timings_s"],
        "peak_total_rss_mib": _mib(sampler.peak_rss),
        "peak_total_pss_mib": _mib(sampler.peak_pss),
        "peak_driver_rss_mib": _mib(sampler.peak_driver_rss),
        "peak_driver_uss_mib": _mib(sampler.peak_driver_uss),
        "peak_pss_mib_by_role": {role: _mib(v) for role, v in sorted(sampler.peak_pss_by_role.items())},
        "peak_processes": sampler.peak_processes,
        "memory_samples": sampler.samples,
    }


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


PEAKS = ("peak_total_rss_mib", "peak_total_pss_mib", "peak_driver_rss_mib", "peak_driver_uss_mib")


def aggregate(runs: list[dict]) -> dict:
    """One pool's repeated runs: each peak's median and its range (min, max) over the runs,
    then the runs themselves. A peak is the maximum of a noisy series (each process's heap
    high-water depends on what it met when), so a single run's peak moves by tens of MiB."""
    out = {key: runs[0][key] for key in ("sources", "candidate_patches", "samples")}
    for key in PEAKS:
        values = [run[key] for run in runs]
        out[key] = round(float(np.median(values)), 1)
        out[key.replace("_mib", "_range_mib")] = [min(values), max(values)]
    out["runs"] = runs
    return out


def summarize(results: dict, images: int, factor: int) -> dict:
    """Ratios of the larger pool's median peaks to the 1x pool's, and memory growth per added
    candidate patch (for the whole run, and for the driver)."""
    small, large = results["1x"], results[f"{factor}x"]
    added = max(large["candidate_patches"] - small["candidate_patches"], 1)

    def per_patch_kib(key: str) -> float:
        return round((large[key] - small[key]) * 1024 / added, 2)

    return {
        "pool_images": {"1x": images, f"{factor}x": images * factor},
        "results": results,
        "rss_ratio": round(large["peak_total_rss_mib"] / small["peak_total_rss_mib"], 3),
        "pss_ratio": round(large["peak_total_pss_mib"] / small["peak_total_pss_mib"], 3),
        "pss_growth_per_added_patch_kib": per_patch_kib("peak_total_pss_mib"),
        "driver_rss_growth_per_added_patch_kib": per_patch_kib("peak_driver_rss_mib"),
        "driver_uss_growth_per_added_patch_kib": per_patch_kib("peak_driver_uss_mib"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=150, help="1x pool size (default 150)")
    parser.add_argument("--factor", type=int, default=4, help="the larger pool is this many times the 1x pool")
    parser.add_argument("--data", type=Path, default=KVASIR)
    parser.add_argument("--seed", type=int, default=0, help="which kvasir images form the 1x pool")
    parser.add_argument("--repeats", type=int, default=3, help="runs per pool, alternating the pools (default 3)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    names = sorted(args.data.glob("*.jpg"))
    if len(names) < args.images:
        sys.exit(f"{args.data}: {len(names)} images, {args.images} wanted")
    pick = sorted(np.random.default_rng(args.seed).choice(len(names), args.images, replace=False))
    sets = FAST + args.sets
    config = config_mod.load(sets=sets)

    with tempfile.TemporaryDirectory(prefix="optidel-memory-") as tmp:
        tmp = Path(tmp)
        pools = build_pools([names[i] for i in pick], args.factor, tmp / "pool")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            proxy_model = mae.MAE(score.proxy_spec(config.score))
        proxy = tmp / "proxy.pt"
        mae.save_proxy(proxy_model, str(proxy))
        runs: dict[str, list[dict]] = {f"{size}x": [] for size in sorted(pools)}
        for repeat in range(args.repeats):
            for size, pool in sorted(pools.items()):
                run = measure(pool, tmp / f"out-{size}x-{repeat}", proxy, sets)
                runs[f"{size}x"].append(run)
                print(f"{size}x, run {repeat + 1}: {json.dumps(run)}", flush=True)
        results = {name: aggregate(pool_runs) for name, pool_runs in runs.items()}

    summary = summarize(results, args.images, args.factor)
    summary = {
        "command": "python benchmarks/memory.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version()},
        "settings": sets,
        **summary,
    }
    small, large = results["1x"], results[f"{args.factor}x"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"memory-{args.images}x{args.factor}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    for key, label in (("peak_total_rss_mib", "RSS"), ("peak_total_pss_mib", "PSS"), ("peak_driver_uss_mib", "driver USS")):
        spread = key.replace("_mib", "_range_mib")
        print(f"peak {label} (median of {args.repeats}, range): 1x {small[key]:.0f} MiB {small[spread]}, "
              f"{args.factor}x {large[key]:.0f} MiB {large[spread]}")
    print(f"candidate patches: 1x {small['candidate_patches']}, {args.factor}x {large['candidate_patches']}; growth per "
          f"added patch: total PSS {summary['pss_growth_per_added_patch_kib']:.2f} KiB, "
          f"driver RSS {summary['driver_rss_growth_per_added_patch_kib']:.2f} KiB, "
          f"driver USS {summary['driver_uss_growth_per_added_patch_kib']:.2f} KiB")
    print(f"written: {path.relative_to(REPO)}")
    print(f"rss_ratio={summary['rss_ratio']:.3f} pss_ratio={summary['pss_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
