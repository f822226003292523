"""An arm: the shards of one `optidel run` output, as pre-training data.

R, the arm's retained fraction of the pool, is `counts.samples / counts.by_status.ok` from
OUT/run.json: output images over usable pool images. A 2x2 mosaic counts as one image, as the
paper's "5%" does; a `--keep 1.0 --selector random` run (every pool image as one sample)
gives R = 1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import webdataset as wds

from optidel import imageio, seeding
from ..manifests import layout, schema
from .labeled import EvalError, Pair

IMAGE_EXTENSIONS = ("jpg", "png", "webp")  # what the pipeline's output.format may write


@dataclass(frozen=True)
class Arm:
    name: str
    out: str
    shards: list[str]
    samples: int
    pool_ok: int
    fingerprint: str  # changes whenever any shard's bytes do (from shards.parquet's sha256s)

    @property
    def retained(self) -> float:
        return self.samples / self.pool_ok


def open_arm(name: str, out: str) -> Arm:
    """The arm named `name` from a complete `optidel run` output directory."""
    output = layout.Output(out)
    if not output.exists(layout.RUN_JSON):
        raise EvalError(f"arm {name}: {output.path(layout.RUN_JSON)} not found: not a finished `optidel run` output")
    info = output.read_json(layout.RUN_JSON)
    if info.get("status") != "complete":
        raise EvalError(
            f"arm {name}: {output.path(layout.RUN_JSON)} says the run is {info.get('status')!r}, not complete"
        )
    counts = info["counts"]
    pool_ok = counts["by_status"].get(schema.OK, 0)
    if counts["samples"] == 0 or pool_ok == 0:
        raise EvalError(f"arm {name}: {out} holds no samples to pre-train on")
    index = output.read_json(layout.INDEX_JSON)
    shards = [output.path(layout.SHARDS_DIR, entry["url"]) for entry in index["shardlist"]]
    digests = output.read_manifest("shards").column("sha256").to_pylist()
    fingerprint = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return Arm(name, out, shards, counts["samples"], pool_ok, fingerprint)


def check_no_test_images(arm: Arm, test: list[Pair]) -> None:
    """Refuse an arm whose pool holds a test image (same bytes): pre-training on the test
    split would flatter the arm."""
    pool = set(layout.Output(arm.out).read_manifest("sources").column("source_id").to_pylist())
    leaked = [p for p in test if imageio.sha256_hex(p.image.read_bytes()) in pool]
    if leaked:
        raise EvalError(
            f"arm {arm.name}: its pool ({arm.out}) contains {len(leaked)} test image(s), e.g. {leaked[0].image}; "
            "build the arms from `optidel eval --write-pool-list POOL.txt --labeled DIR`"
        )


def stream(arm: Arm, seed: int, shuffle_buffer: int) -> Iterator[np.ndarray]:
    """The arm's images (RGB uint8) forever, epoch after epoch: each epoch visits the shards
    in a seeded order and shuffles samples through a seeded buffer, so the order depends only
    on (seed, epoch) and never on the machine."""
    epoch = 0
    while True:
        draws = seeding.rng(seed, "eval-stream", epoch)
        order = [arm.shards[i] for i in draws.permutation(len(arm.shards))]
        buffer: list[np.ndarray] = []
        for sample in wds.WebDataset(order, shardshuffle=False, empty_check=False):
            buffer.append(_decode(sample))
            if len(buffer) >= shuffle_buffer:
                yield _pop_random(buffer, draws)
        while buffer:
            yield _pop_random(buffer, draws)
        epoch += 1


def _pop_random(buffer: list, draws: np.random.Generator):
    i = int(draws.integers(len(buffer)))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]
    return buffer.pop()


def _decode(sample: dict) -> np.ndarray:
    where = f"{sample.get('__url__')} sample {sample.get('__key__')}"
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise EvalError(f"{where}: no image member ({'/'.join(IMAGE_EXTENSIONS)})")
    decoded = imageio.decode(sample[ext], max_pixels=100_000_000, min_side=1)
    if decoded.image is None:
        raise EvalError(f"{where}: {decoded.error}")
    return decoded.image
