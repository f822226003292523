"""Selection and manifests at 1M, 4M and 16M candidate patches: does the driver stay flat?

No image work: synthetic pass-1 parts are written as pass 1 writes them (pipeline/partitions.py),
PATCHES_PER_SOURCE patch rows per source row, with random scores, random unit embeddings of the
proxy's width, a real COCO RLE mask per patch, and a share of exact-duplicate sources (a later
source repeating an earlier one's id, as byte-identical files do; their patches repeat the ids
too). Then, per pool size, a child process runs what `optidel run` does after pass 1 and
before pass 2: the selection barrier and the sources and patches manifests. The parent samples
the memory of the child and of every process under it (benchmarks/sampling.py).

    python benchmarks/scale.py                           # 1M, 4M, 16M candidate patches
    python benchmarks/scale.py --selector dedup          # another selector (default: optidel)
    python benchmarks/scale.py --patches 250000 1000000  # quicker
    python benchmarks/scale.py --keep DIR                # keep the synthetic pools in DIR (else a temp dir)

The selection runs as `optidel run` runs it, by Ray tasks over the parts (a local Ray).

Reported per size: the child's (the driver's) peak RSS and USS (its own pages, without the
object store's shared ones it maps), its peak RSS at the end of each stage (which stage reached
the peak), the peak total RSS and PSS of it and everything under it, and the wall time of each
stage (the child's own wall time also holds its imports). The last line compares the largest
pool with the smallest:

    driver_growth=<peak driver RSS ratio> time_growth=<ratio of stage time per million patches> selector=<name>

`patches_sha256` per size digests the manifests written, to compare two versions of the code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from optidel import seeding
from optidel.manifests import schema
from optidel.manifests.layout import Output
from optidel.pipeline import config as config_mod, raydata
from optidel.pipeline.selection import plan as selection_plan
from optidel.pipeline.selection import write
from optidel.pipeline.partitions import PartStore
from optidel.stages import columns as C
from optidel.stages.keypatch import mask_to_rle
from optidel.stages.weights import file_sha256
from sampling import run_sampled  # benchmarks/sampling.py: run as a script, its folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PATCHES_PER_SOURCE = 9  # what a kvasir-seg frame gives (issue 13)
DUPLICATE_SHARE = 0.02  # sources that repeat an earlier source
SOURCES_PER_PARTITION = 4096  # a cluster-sized resume unit: ~37k patches per part
SETTINGS = [f"ingest.partition_size={SOURCES_PER_PARTITION}"]


def write_pool(directory: Path, n_patches: int, seed: int, config: config_mod.Config) -> int:
    """Synthetic pass-1 parts for about n_patches candidate patches; returns the source count."""
    n_sources = -(-n_patches // PATCHES_PER_SOURCE)
    store = PartStore(Output(str(directory)), n_sources, SOURCES_PER_PARTITION)
    ids = source_ids(n_sources, seed)
    dim = config.score.mae.embed_dim
    mask = mask_to_rle(np.pad(np.ones((40, 40), bool), 12))  # one 64-px patch's mask, as RLE
    for p in range(store.n_partitions):
        rng = seeding.rng(seed, "scale-part", p)
        sources = np.asarray(store.sources_of(p), dtype=np.int64)
        n = len(sources) * (PATCHES_PER_SOURCE + 1)
        rows = C.sentinel_columns(C.CANDIDATE_COLUMNS, n)
        source_row = np.arange(n) % (PATCHES_PER_SOURCE + 1) == 0
        rows[C.INPUT_INDEX] = np.repeat(sources, PATCHES_PER_SOURCE + 1)
        rows[C.SOURCE_ID] = np.repeat(ids[sources], PATCHES_PER_SOURCE + 1)
        rows[C.PATCH_INDEX] = np.tile(np.arange(-1, PATCHES_PER_SOURCE), len(sources))
        rows[C.STATUS][source_row] = schema.OK
        rows[C.WIDTH][source_row] = rows[C.HEIGHT][source_row] = 512
        rows[C.URI][source_row] = [f"synthetic/{i:09d}.jpg" for i in sources]
        patch = ~source_row
        rows[C.PATCH_ID][patch] = [f"{s[:16]}-{k:03d}" for s, k in zip(rows[C.SOURCE_ID][patch], rows[C.PATCH_INDEX][patch])]
        for name, value in zip(C.BOX_COLUMNS, (100, 100, 164, 164)):
            rows[name][patch] = value
        rows[C.MASK_RLE][patch] = mask
        rows[C.SCORE] = rng.normal(0.0, 1.0, n).astype(np.float32)
        embedding = rng.normal(size=(n, dim)).astype(np.float32)
        rows[C.EMBEDDING] = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
        store.write(p, rows)
    return n_sources


def source_ids(n: int, seed: int) -> np.ndarray:
    """Distinct hex ids, but DUPLICATE_SHARE of them repeat an earlier id (spread over the pool)."""
    rng = seeding.rng(seed, "scale-ids")
    ids = np.asarray([f"{seeding.derive(seed, 'scale-source', i):016x}" * 4 for i in range(n)], dtype=object)
    copies = np.flatnonzero(rng.random(n) < DUPLICATE_SHARE)
    copies = copies[copies > 0]
    ids[copies] = ids[(rng.random(len(copies)) * copies).astype(np.int64)]
    return ids


def select_and_write(pool: Path, n_sources: int, scratch: Path, sets: list[str]) -> dict:
    """What the run does between pass 1 and pass 2, by Ray tasks over the parts, timed per stage
    (this is the child)."""
    config = config_mod.load(sets=SETTINGS + sets)
    store = PartStore(Output(str(pool)), n_sources, config.ingest.partition_size)
    timings, peaks = {}, {}

    def stage_done(name: str) -> None:
        timings[name] = time.perf_counter() - start - sum(timings.values())
        # The driver's peak RSS so far: which stage reached the peak the parent samples.
        peaks[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    start = time.perf_counter()
    raydata.connect(config.ray)  # a local Ray, as `optidel run` starts one
    stage_done("ray")
    plan = selection_plan.plan(store, config)  # as the runner does: the driver reads no row of the pool
    stage_done("select")
    manifests = Output(str(scratch))
    write.sources(manifests, plan.duplicates, store, config)
    candidate_patches = write.patches(manifests, plan, store, config)
    plan.chosen.ranks.remove()  # as the runner does: not left in the kept pool
    stage_done("manifests")
    return {
        "candidate_patches": candidate_patches,
        "selected_patches": int(np.sum(plan.patches.columns["selected"])),
        "samples": len(plan.samples),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "driver_peak_rss_by_stage_mib": peaks,
        "patches_sha256": _sha256_tree(scratch / "manifests"),
    }


def _sha256_tree(directory: Path) -> str:
    """One digest of every file under `directory` (names and bytes), to compare two paths."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        # file_sha256 reads in chunks: a whole read would count the file in the driver's peak.
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + bytes.fromhex(file_sha256(str(path))))
    return digest.hexdigest()


def measure(pool: Path, n_sources: int, scratch: Path, sets: list[str]) -> dict:
    """select_and_write in a child process, its memory and its children's sampled meanwhile."""
    command = [sys.executable, __file__, *(f"--set={item}" for item in sets), "--child", str(pool), str(n_sources), str(scratch)]
    stdout, wall, sampler = run_sampled(command, f"scale.py: selection over {pool}")
    return {
        **json.loads(stdout.strip().splitlines()[-1]),
        "wall_s": round(wall, 1),
        "peak_driver_rss_mib": _mib(sampler.peak_driver_rss),
        "peak_driver_uss_mib": _mib(sampler.peak_driver_uss),
        "peak_total_rss_mib": _mib(sampler.peak_rss),
        "peak_total_pss_mib": _mib(sampler.peak_pss),
        "peak_processes": sampler.peak_processes,
    }


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def summarize(command: str, results: list[dict], sets: list[str]) -> dict:
    """The largest pool so far against the smallest: driver peak and stage time per patch."""
    small, large = results[0], results[-1]
    # Stage times, not the child's wall time (that holds ~10 s of imports), nor Ray's start.
    per_million = [sum(t for stage, t in r["timings_s"].items() if stage != "ray") / (r["candidate_patches"] / 1e6)
                   for r in (small, large)]
    return {
        "command": command,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version()},
        "settings": SETTINGS + sets,
        "results": results,
        "driver_growth": round(large["peak_driver_rss_mib"] / small["peak_driver_rss_mib"], 3),
        "time_growth": round(per_million[1] / per_million[0], 3),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, nargs="+", default=[1_000_000, 4_000_000, 16_000_000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="write the synthetic pools here and keep them (a rerun reuses them)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--selector", default="optidel", help="the selector to run (default: optidel)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. select.kmeans_sample=1000000 for an exact 1M check")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # POOL N_SOURCES SCRATCH
    args = parser.parse_args(argv)
    if args.child:
        pool, n_sources, scratch = args.child
        print(json.dumps(select_and_write(Path(pool), int(n_sources), Path(scratch), args.sets)))
        return 0
    args.sets = [f"selector={args.selector}", *args.sets]

    config = config_mod.load(sets=SETTINGS)
    command = "python benchmarks/scale.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    results = []
    with tempfile.TemporaryDirectory(prefix="optidel-scale-") as tmp:
        root = args.keep or Path(tmp)
        for n_patches in args.patches:
            pool = root / f"pool-{n_patches}"
            start = time.perf_counter()
            marker = pool / "sources.txt"
            if marker.exists():
                n_sources = int(marker.read_text())
            else:
                n_sources = write_pool(pool, n_patches, args.seed, config)
                marker.write_text(f"{n_sources}\n")
            written = time.perf_counter() - start
            result = {"patches_asked": n_patches, "sources": n_sources, "pool_written_s": round(written, 1)}
            result.update(measure(pool, n_sources, Path(tmp) / f"manifests-{n_patches}", args.sets))
            results.append(result)
            print(json.dumps(result), flush=True)
            # Written after every size: a run stopped before the largest keeps what it measured.
            summary = summarize(command, results, args.sets)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written: {args.out}")
    print(f"driver_growth={summary['driver_growth']} time_growth={summary['time_growth']} selector={args.selector}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
