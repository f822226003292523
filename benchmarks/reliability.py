"""Crash and fault recovery of `optidel run` on a kvasir-seg subset, measured end to end.

1. A reference: one uninterrupted run.
2. Five crashes: a run killed with SIGKILL (driver, its local Ray and every worker) at five
   points, then the same command rerun on the same OUT to completion:
     proxy     the self-trained proxy is saved (work/proxy.json), pass 1 not begun
     part1     the first pass-1 partition is persisted
     part3     the third is persisted
     pass2     the first shard is written (pass 2 under way)
     manifests the last manifest is written (run.json not yet complete, if the kill lands in time)
3. A fault: a Score actor that kills itself mid-batch (`os._exit`, once, through the
   wrapper stage of tests/score_exits_once.py), which Ray restarts and retries.

For each: what OUT held when the kill landed, the rerun's time as a ratio of the reference's,
the partitions it reused, whether every file but run.json is byte-identical to the reference,
whether each sample key is in samples.parquet once, and `optidel verify`. Every run is a fresh
process with its own local Ray, so times compare within one invocation only.

    python benchmarks/reliability.py --json benchmarks/results/reliability.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from optidel.manifests.layout import manifest_relpath

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from killable import optidel_run  # noqa: E402

KVASIR_IMAGES = REPO.parent / "shared" / "datasets" / "kvasir-seg" / "images"


def settings(partition_size: int) -> list[str]:
    """tests/test_run_optidel.py's FAST settings with small model batches, so partitions finish
    apart; and many large samples in small shards, so that pass 2 takes long enough (several
    compose tasks, whose results arrive apart) for a kill to land inside it."""
    return [
        "score.mae.train_steps=20",
        "score.mae.train_patches=128",
        "score.masks_per_patch=2",
        "select.clusters=8",
        "output.format=png",
        f"ingest.partition_size={partition_size}",
        "ray.model_batch_size=2",
        "keep=1.0",
        "output.size=512",
        "output.shard_max_count=4",
    ]


def _parts(out: Path) -> int:
    return len(list((out / "work" / "pass1").glob("part-*.parquet")))


KILL_POINTS = {
    "proxy": lambda out: (out / "work" / "proxy.json").exists(),
    "part1": lambda out: _parts(out) >= 1,
    "part3": lambda out: _parts(out) >= 3,
    "pass2": lambda out: any((out / "shards").glob("shard-*.tar")),
    "manifests": lambda out: (out / manifest_relpath("shards")).exists(),
}


def tree(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "run.json"
    }


def check(out: Path, reference: dict[str, bytes]) -> dict:
    got = tree(out)
    keys = pq.read_table(out / manifest_relpath("samples")).column("sample_key").to_pylist()
    verify = subprocess.run([sys.executable, "-m", "optidel.pipeline.cli", "verify", str(out)], capture_output=True, text=True)
    run_json = json.loads((out / "run.json").read_text())
    return {
        "identical": got == reference,
        "differing_files": sorted(k for k in set(got) | set(reference) if got.get(k) != reference.get(k)),
        "samples": len(keys),
        "keys_once": len(keys) == len(set(keys)),
        "verify_ok": verify.returncode == 0,
        "reused": run_json.get("reused"),
    }


def at_kill(files: list[str], out: Path) -> dict:
    status = json.loads((out / "run.json").read_text()).get("status") if (out / "run.json").exists() else None
    return {
        "parts": sum(f.startswith("work/pass1/part-") for f in files),
        "proxy": "work/proxy.json" in files,
        "shards": sum(f.startswith("shards/shard-") and f.endswith(".tar") for f in files),
        "tmp_files": sum(f.endswith(".tmp") for f in files),
        "manifests": sum(f.startswith("manifests/") and f.endswith(".parquet") for f in files),
        "run_json_status": status,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--partition-size", type=int, default=6)
    parser.add_argument("--points", nargs="+", default=list(KILL_POINTS), choices=list(KILL_POINTS))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="optidel-reliability-"))
    names = sorted(p.name for p in KVASIR_IMAGES.glob("*.jpg"))
    pick = sorted(np.random.default_rng(7).choice(len(names), args.images, replace=False))
    pool = tmp / "pool.txt"
    pool.write_text("".join(f"{KVASIR_IMAGES / names[i]}\n" for i in pick))
    sets = settings(args.partition_size)

    ref = optidel_run([str(pool)], tmp / "reference", sets)
    assert ref.returncode == 0, ref.log[-3000:]
    reference = tree(tmp / "reference")
    results = {"reference_s": round(ref.seconds, 1), "kills": {}, "host": platform.node(), "images": args.images,
               "partition_size": args.partition_size, "settings": sets}
    print(f"reference: {ref.seconds:.1f} s, {len(reference)} files")

    for name in args.points:
        out = tmp / f"kill-{name}"
        killed = optidel_run([str(pool)], out, sets, kill_when=KILL_POINTS[name])
        state = at_kill(killed.files_at_kill, out)
        rerun = optidel_run([str(pool)], out, sets)
        assert rerun.returncode == 0, rerun.log[-3000:]
        row = {
            "killed": killed.killed,
            "killed_after_s": round(killed.seconds, 1),
            "at_kill": state,
            "rerun_s": round(rerun.seconds, 1),
            "rerun_over_reference": round(rerun.seconds / ref.seconds, 2),
            **check(out, reference),
        }
        results["kills"][name] = row
        print(f"kill at {name}: {json.dumps(row)}")

    out = tmp / "actor-death"
    marker = tmp / "score-exited"
    fault = optidel_run([str(pool)], out, sets, score_exits_once=marker)
    assert fault.returncode == 0, fault.log[-3000:]
    results["actor_death"] = {
        "hook_fired": marker.exists(),
        "seconds": round(fault.seconds, 1),
        "over_reference": round(fault.seconds / ref.seconds, 2),
        **check(out, reference),
    }
    print(f"actor death: {json.dumps(results['actor_death'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"outputs under {tmp}")


if __name__ == "__main__":
    main()
