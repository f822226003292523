"""Pass 1: read -> validate -> propose -> crop -> score, streaming, into the candidates table.

No pixels outlive a batch: what reaches the driver is ids, boxes, mask statistics and RLE,
scores and one embedding per row. The driver persists it per input partition as partitions
complete (pipeline/partitions.py); a rerun on the same OUT sends Ray only the partitions that
have no part yet, and every run, fresh or resumed, reads its candidates back from the parts,
so both see the same bytes. The selection barrier reads all but the masks (~1 KB per patch).

Faults: a worker or actor that dies is retried by Ray, at most ray.max_retries times
(pipeline/raydata.py). A source whose proposal raises is recorded with its error (status
`failed`, pipeline/pass1_stages.py) and the others go on. When Ray gives up, the run stops
with a RunError naming the unfinished partitions; the finished ones are kept, and a rerun
resumes from them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import ray

from ..stages import columns as C
from ..stages.ingest import Ingest
from ..stages.score import Score
from . import raydata
from .config import Config
from .inputs import SourceRef
from .partitions import PASS1_DIR, PartitionSink, PartStore
from .pass1_stages import IngestAndPropose, IngestWithoutPixels, IsolatedPropose, where
from .resume import RunError

log = logging.getLogger("optidel")

NAMED_SOURCES = 3  # sources named per unfinished partition in a failure message


@dataclass
class Candidates:
    """Pass-1 results as columns. `sources`: one row per listed source; `patches`: one row per
    candidate patch (empty for whole-image selectors). Rows sorted by (input_index, patch_index)."""

    sources: dict[str, np.ndarray]
    patches: dict[str, np.ndarray]


def listing(refs: list[SourceRef], indices: Iterable[int] | None = None) -> list[dict]:
    """Listing rows of refs[i] for i in indices (default all), each keeping its position."""
    if indices is None:
        indices = range(len(refs))
    return [
        {C.INPUT_INDEX: i, C.URI: refs[i].uri, C.MEMBER: refs[i].member, C.OFFSET: refs[i].offset, C.LENGTH: refs[i].length}
        for i in indices
    ]


def _dataset(rows: list[dict], config: Config) -> ray.data.Dataset:
    """Listing rows in blocks of one model batch: partitions (the resume unit) are far larger,
    and blocks that size would leave cores idle on small pools and at the end of large ones."""
    blocks = max(1, math.ceil(len(rows) / config.ray.model_batch_size))
    return ray.data.from_items(rows, override_num_blocks=blocks)


def ingest_only(refs: list[SourceRef], config: Config, store: PartStore) -> Candidates:
    """Pass 1 of the whole-image selectors (random): read and validate, no models."""

    def plan(rows):
        return raydata.map_task(
            _dataset(rows, config),
            IngestWithoutPixels,
            {"config": config.ingest},
            batch_size=config.ray.model_batch_size,
            config=config.ray,
        )

    _run_partitions(refs, store, plan)
    return read_candidates(store, with_patches=False)


def proposed(rows: list[dict], config: Config, proposer: str, scored: bool = False) -> ray.data.Dataset:
    """Ingest + propose + crop: the rows of columns.CANDIDATE_COLUMNS + CROP + ROWS_OF_SOURCE.
    `scored`: a Score actor pool follows in the same plan (its CPUs are not the tasks')."""
    actor_stages = int(proposer == "sam") + int(scored)
    propose_kwargs = {
        "config": config.propose,
        "crop_size": config.score.image_size,
        "seed": config.seed,
        "device": raydata.device(config.ray),
    }
    task = {"batch_size": config.ray.model_batch_size, "config": config.ray, "actor_stages": actor_stages}
    if proposer == "sam":
        ds = raydata.map_task(_dataset(rows, config), Ingest, {"config": config.ingest}, **task)
        return raydata.map_actors(
            ds, IsolatedPropose, propose_kwargs, batch_size=config.ray.model_batch_size, config=config.ray
        )
    # The weight-free proposer has nothing to load: one task reads and proposes each source, so
    # decoded images never cross the object store, and a worker holds one at a time.
    return raydata.map_task(
        _dataset(rows, config), IngestAndPropose, {"ingest": {"config": config.ingest}, "propose": propose_kwargs}, **task
    )


def training_crops(refs: list[SourceRef], config: Config, proposer: str) -> np.ndarray:
    """Crops (N, S, S, 3) for self-training the proxy: a seeded sample of sources, proposed
    as in the full pass, then a seeded sample of their ok crops (patches and whole images)."""
    from optidel import seeding

    want = config.score.mae.train_patches
    per_source = config.propose.max_patches_per_image + 1
    n_sources = min(len(refs), max(8, 2 * math.ceil(want / per_source)))
    order = sorted(range(len(refs)), key=lambda i: seeding.derive(config.seed, "train-source", i))
    sample = listing(refs, sorted(order[:n_sources]))

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


def scored(refs: list[SourceRef], config: Config, proposer: str, proxy_path: str, store: PartStore) -> Candidates:
    """The full pass 1 for patch selectors: ingest + propose + crop + score."""

    def plan(rows):
        return raydata.map_actors(
            proposed(rows, config, proposer, scored=True),
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

    _run_partitions(refs, store, plan)
    return read_candidates(store, with_patches=True)


def _run_partitions(refs: list[SourceRef], store: PartStore, plan) -> None:
    """Stream the partitions that have no part through `plan(listing rows) -> Dataset` into
    the part store."""
    done = store.done()
    pending = [p for p in range(store.n_partitions) if p not in done]
    if done:
        log.info("pass 1: resuming, %d of %d partitions already done", len(done), store.n_partitions)
    if not pending:
        return
    sink = PartitionSink(store, pending)
    rows = listing(refs, [i for p in pending for i in store.sources_of(p)])
    try:
        for batch in plan(rows).iter_batches(batch_size=None, batch_format="numpy"):
            batch.pop(C.CROP, None)
            sink.add(batch)
    except ray.exceptions.RayError as exc:
        raise RunError(_failure_message(refs, store, sink, exc)) from exc
    if sink.unfinished():
        raise RunError(_failure_message(refs, store, sink, None))


def _failure_message(refs, store: PartStore, sink: PartitionSink, exc) -> str:
    unfinished = sink.unfinished()
    named = []
    for p in unfinished[:NAMED_SOURCES]:
        span = store.sources_of(p)
        uris = ", ".join(where(refs[i]) for i in list(span)[:NAMED_SOURCES])
        more = f", ... ({len(span)} sources)" if len(span) > NAMED_SOURCES else ""
        named.append(f"partition {p} (sources {span.start}-{span.stop - 1}: {uris}{more})")
    if len(unfinished) > NAMED_SOURCES:
        named.append(f"and {len(unfinished) - NAMED_SOURCES} more")
    cause = _cause(exc) if exc is not None else "pass 1 ended with rows missing"
    return (
        f"pass 1 stopped with {len(unfinished)} of {store.n_partitions} partitions unfinished: "
        f"{'; '.join(named)}. Cause: {cause}. Finished partitions are kept in "
        f"{store.output.path(PASS1_DIR)}; rerunning the same command resumes from them."
    )


def _cause(exc: BaseException) -> str:
    """The first line of Ray's error (its full text repeats the remote traceback)."""
    inner = exc.__cause__ if isinstance(exc, ray.exceptions.UserCodeException) and exc.__cause__ else exc
    first = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {first.rstrip('.')}"


def read_candidates(store: PartStore, with_patches: bool) -> Candidates:
    """Every partition's rows, in partition order, split as split_candidates does, leaving
    each patch's mask in its part (see columns.BARRIER_PATCH_COLUMNS)."""
    parts = [split_candidates(store.read(p, skip=(C.MASK_RLE,)), with_patches) for p in range(store.n_partitions)]
    return Candidates(
        sources=C.concat([part.sources for part in parts]),
        patches=C.concat([part.patches for part in parts]) if with_patches else {},
    )


def split_candidates(table: dict[str, np.ndarray], with_patches: bool) -> Candidates:
    """Split pass-1 rows (sorted by input_index, patch_index) into sources and patches, each
    patch with columns.BARRIER_PATCH_COLUMNS only."""
    if not with_patches:
        return Candidates(sources=table, patches={})
    is_source = table[C.PATCH_INDEX] < 0
    return Candidates(
        sources=C.take(table, is_source),
        patches={k: table[k][~is_source] for k in C.BARRIER_PATCH_COLUMNS},
    )
