"""Pass 1: read -> validate -> propose -> crop -> score, streaming, into the candidates table.

No pixels outlive a batch: what reaches the driver is ids, boxes, mask statistics, scores and
one embedding per row (~1 KB per patch), the input of the selection barrier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ray

from ..stages import columns as C
from ..stages.ingest import Ingest
from ..stages.propose import Propose
from ..stages.score import Score
from .config import Config
from .inputs import SourceRef
from . import raydata


@dataclass
class Candidates:
    """Pass-1 results as columns. `sources`: one row per listed source; `patches`: one row per
    candidate patch (empty for whole-image selectors). Rows sorted by (input_index, patch_index)."""

    sources: dict[str, np.ndarray]
    patches: dict[str, np.ndarray]


def listing(refs: list[SourceRef]) -> list[dict]:
    return [
        {C.INPUT_INDEX: i, C.URI: r.uri, C.MEMBER: r.member, C.OFFSET: r.offset, C.LENGTH: r.length}
        for i, r in enumerate(refs)
    ]


def _dataset(rows: list[dict], config: Config) -> ray.data.Dataset:
    blocks = max(1, math.ceil(len(rows) / config.ingest.partition_size))
    return ray.data.from_items(rows, override_num_blocks=blocks)


class IngestWithoutPixels(Ingest):
    """Ingest for whole-image selectors: validate, keep the record, drop the pixels."""

    def __call__(self, batch):
        out = super().__call__(batch)
        del out[C.IMAGE]
        return out


def ingest_only(refs: list[SourceRef], config: Config) -> Candidates:
    """Pass 1 of the whole-image selectors (random): read and validate, no models."""
    ds = raydata.map_task(
        _dataset(listing(refs), config),
        IngestWithoutPixels,
        {"config": config.ingest},
        batch_size=config.ingest.partition_size,
        config=config.ray,
    )
    return _collect(ds, with_patches=False)


def proposed(refs: list[SourceRef], config: Config, proposer: str) -> ray.data.Dataset:
    """Ingest + propose + crop: the rows of columns.CANDIDATE_COLUMNS + CROP."""
    ds = raydata.map_task(
        _dataset(listing(refs), config),
        Ingest,
        {"config": config.ingest},
        batch_size=config.ingest.partition_size,
        config=config.ray,
    )
    propose_kwargs = {
        "config": config.propose,
        "crop_size": config.score.image_size,
        "seed": config.seed,
        "device": raydata.device(config.ray),
    }
    if proposer == "sam":
        return raydata.map_actors(
            ds, Propose, propose_kwargs, batch_size=config.ray.model_batch_size, config=config.ray
        )
    # The weight-free proposer has nothing to load: tasks fuse with ingest, so decoded images
    # never cross the object store.
    return raydata.map_task(ds, Propose, propose_kwargs, batch_size=config.ray.model_batch_size, config=config.ray)


def training_crops(refs: list[SourceRef], config: Config, proposer: str) -> np.ndarray:
    """Crops (N, S, S, 3) for self-training the proxy: a seeded sample of sources, proposed
    as in the full pass, then a seeded sample of their ok crops (patches and whole images)."""
    from optidel import seeding

    want = config.score.mae.train_patches
    per_source = config.propose.max_patches_per_image + 1
    n_sources = min(len(refs), max(8, 2 * math.ceil(want / per_source)))
    order = sorted(range(len(refs)), key=lambda i: seeding.derive(config.seed, "train-source", i))
    sample = [refs[i] for i in sorted(order[:n_sources])]

    keys, crops = [], []
    for batch in proposed(sample, config, proposer).iter_batches(batch_size=None, batch_format="numpy"):
        ok = (batch[C.PATCH_INDEX] >= 0) | (batch[C.STATUS] == "ok")
        ids = np.where(batch[C.PATCH_INDEX] >= 0, batch[C.PATCH_ID], batch[C.SOURCE_ID])
        keys.extend(ids[ok].tolist())
        crops.append(batch[C.CROP][ok])
    if not keys:
        return np.zeros((0, config.score.image_size, config.score.image_size, 3), np.uint8)
    crops = np.concatenate(crops)
    # Order by a seeded hash of the crop's id, never by arrival order (which Ray does not fix).
    chosen = sorted(range(len(keys)), key=lambda i: seeding.derive(config.seed, "train-crop", keys[i]))[:want]
    return crops[sorted(chosen, key=lambda i: keys[i])]


def scored(refs: list[SourceRef], config: Config, proposer: str, proxy_path: str) -> Candidates:
    """The full pass 1 for patch selectors: ingest + propose + crop + score."""
    ds = raydata.map_actors(
        proposed(refs, config, proposer),
        Score,
        {
            "config": config.score,
            "seed": config.seed,
            "checkpoint": proxy_path,
            "device": raydata.device(config.ray),
        },
        batch_size=config.ray.model_batch_size * (config.propose.max_patches_per_image + 1),
        config=config.ray,
    )
    return _collect(ds, with_patches=True)


def _collect(ds: ray.data.Dataset, with_patches: bool) -> Candidates:
    parts: list[dict[str, np.ndarray]] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        batch.pop(C.CROP, None)
        parts.append(batch)
    if not parts:
        raise ValueError("pass 1 produced no rows")
    table = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if not with_patches:
        order = np.argsort(table[C.INPUT_INDEX], kind="stable")
        return Candidates(sources={k: v[order] for k, v in table.items()}, patches={})
    order = np.lexsort((table[C.PATCH_INDEX], table[C.INPUT_INDEX]))
    table = {k: v[order] for k, v in table.items()}
    is_source = table[C.PATCH_INDEX] < 0
    return Candidates(
        sources={k: v[is_source] for k, v in table.items()},
        patches={k: v[~is_source] for k, v in table.items()},
    )
