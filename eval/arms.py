"""An arm: the shards of one `optidel run` output, as pre-training data.

R, the arm's retained fraction of the pool, is `counts.samples / counts.by_status.ok` from
OUT/run.json: output images over usable pool images. A 2x2 mosaic counts as one image, as the
paper's "5%" does; a `--keep 1.0 --selector random` run (every pool image as one sample)
gives R = 1.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Iterator

import fsspec
import numpy as np
import webdataset as wds

from optidel import imageio, seeding
from ..manifests import layout, schema
from .labeled import EvalError, Pair
from .pools import POOL_RECORD

IMAGE_EXTENSIONS = ("jpg", "png", "webp")  # what the pipeline's output.format may write
CACHE_BYTES = 2 << 30  # decoded images kept per stream: the video pool's full arm (3741 at 224 px) is 0.56 GB


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
    shards = layout.shard_urls(out)
    digests = output.read_manifest("shards").column("sha256").to_pylist()
    fingerprint = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return Arm(name, out, shards, counts["samples"], pool_ok, fingerprint)


def check_no_held_out_images(arm: Arm, held_out: list[Pair]) -> None:
    """Refuse an arm whose pool holds a validation or test image (same bytes), or frames made
    from one (a video pool's POOL_RECORD): pre-training on a held-out split would flatter it."""
    sources = layout.Output(arm.out).read_manifest("sources")
    pool = set(sources.column("source_id").to_pylist()) | derived_from(sources.column("uri").to_pylist())
    leaked = [p for p in held_out if imageio.sha256_hex(p.image.read_bytes()) in pool]
    if leaked:
        raise EvalError(
            f"arm {arm.name}: its pool ({arm.out}) contains {len(leaked)} validation or test image(s), "
            f"or frames made from them, e.g. {leaked[0].image}; build the arms from "
            "`optidel eval --write-pool-list POOL.txt` or `--write-video-pool DIR` with the same --labeled DIR"
        )


def derived_from(uris: list[str]) -> set[str]:
    """sha256 of every image that the pool's frames were made from, by the POOL_RECORD of each
    folder holding a source (none for folders without one)."""
    found: set[str] = set()
    for folder in sorted({posixpath.dirname(uri) for uri in uris}):
        fs, path = fsspec.core.url_to_fs(posixpath.join(folder, POOL_RECORD))
        if fs.isfile(path):
            found.update(entry["sha256"] for entry in json.loads(fs.cat_file(path))["derived_from"])
    return found


def stream(arm: Arm, seed: int, shuffle_buffer: int, cache_bytes: int = CACHE_BYTES) -> Iterator[np.ndarray]:
    """The arm's images (RGB uint8) forever, epoch after epoch: each epoch visits the shards
    in a seeded order and shuffles samples through a seeded buffer, so the order depends only
    on (seed, epoch) and never on the machine.

    A 5% arm is cycled through twenty times as many epochs as the full pool, so decoding is a
    fifth of a CPU pre-training step: decoded shards are kept while they fit in `cache_bytes`,
    and later epochs read them back in the same order, without decoding again."""
    decoded: dict[str, list[np.ndarray]] = {}
    held = 0
    epoch = 0
    while True:
        draws = seeding.rng(seed, "eval-stream", epoch)
        order = [arm.shards[i] for i in draws.permutation(len(arm.shards))]
        buffer: list[np.ndarray] = []
        for url in order:
            images = decoded.get(url)
            if images is None:
                images = [_decode(sample) for sample in wds.WebDataset([url], shardshuffle=False, empty_check=False)]
                size = sum(image.nbytes for image in images)
                if held + size <= cache_bytes:
                    decoded[url], held = images, held + size
            for image in images:
                buffer.append(image)
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
