"""Pass 1: read -> validate -> propose -> crop -> score, streaming, into the candidates table.

No pixels outlive a batch: what reaches the driver is ids, boxes, mask statistics, scores and
one embedding per row (~1 KB per patch), the input of the selection barrier. The driver
persists it per input partition as partitions complete (pipeline/partitions.py); a rerun on
the same OUT sends Ray only the partitions that have no part yet, and every run, fresh or
resumed, reads its candidates back from the parts, so both see the same bytes.

Faults: a worker or actor that dies is retried by Ray, at most ray.max_retries times
(pipeline/raydata.py). A source whose proposal raises is recorded with its error (status
FAILED_STATUS) and the others go on. When Ray gives up, the run stops with a RunError naming
the unfinished partitions; the finished ones are kept, and a rerun resumes from them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import ray

from ..manifests import schema
from ..stages import columns as C
from ..stages.ingest import Ingest
from ..stages.propose import Propose
from ..stages.score import Score
from . import raydata
from .config import Config
from .inputs import SourceRef
from .partitions import PASS1_DIR, ROWS_OF_SOURCE, PartitionSink, PartStore
from .resume import RunError

log = logging.getLogger("optidel")

# A source the proposer raised on: its bytes decode, so it is not corrupt; the error names the
# exception.
FAILED_STATUS = schema.FAILED
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
    blocks = max(1, math.ceil(len(rows) / config.ingest.partition_size))
    return ray.data.from_items(rows, override_num_blocks=blocks)


def _with_rows_of_source(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tag each row with how many rows its source produced (the sink's completeness count);
    `out` holds every row of each of its sources."""
    _, inverse, counts = np.unique(out[C.INPUT_INDEX], return_inverse=True, return_counts=True)
    out[ROWS_OF_SOURCE] = counts[inverse].astype(np.int64)
    return out


class IngestWithoutPixels(Ingest):
    """Ingest for whole-image selectors: validate, keep the record, drop the pixels."""

    def __call__(self, batch):
        out = super().__call__(batch)
        del out[C.IMAGE]
        return _with_rows_of_source(out)


class IsolatedPropose(Propose):
    """Propose, where a source that raises fails alone: when a batch raises, its sources are
    proposed one by one, and a source that still raises becomes a FAILED_STATUS source row
    with the exception as its error."""

    def __call__(self, batch):
        self.setup()  # a model that cannot load fails the run, not every source
        try:
            out = super().__call__(batch)
        except Exception:  # noqa: BLE001 - isolated below, source by source
            parts = [self._one(batch, i) for i in range(len(batch[C.INPUT_INDEX]))]
            out = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        return _with_rows_of_source(out)

    def _one(self, batch, i: int):
        row = {name: values[i : i + 1] for name, values in batch.items()}
        try:
            return super().__call__(row)
        except Exception as exc:  # noqa: BLE001 - recorded as the source's error
            error = f"propose raised {type(exc).__name__}: {exc}"
            log.warning("%s: %s", _where_row(row), error)
        source = {col: row[col][0] for col in C.SOURCE_COLUMNS}
        source.update({C.STATUS: FAILED_STATUS, "error": error, C.PATCH_INDEX: -1})
        out = C.to_batch([source], C.CANDIDATE_COLUMNS)
        out[C.CROP] = np.zeros((1, self.crop_size, self.crop_size, 3), np.uint8)
        return out


def _where_row(row) -> str:
    return _where(SourceRef(str(row[C.URI][0]), str(row[C.MEMBER][0]), -1, -1))


def ingest_only(refs: list[SourceRef], config: Config, store: PartStore) -> Candidates:
    """Pass 1 of the whole-image selectors (random): read and validate, no models."""

    def plan(rows):
        return raydata.map_task(
            _dataset(rows, config),
            IngestWithoutPixels,
            {"config": config.ingest},
            batch_size=config.ingest.partition_size,
            config=config.ray,
        )

    _run_partitions(refs, store, plan)
    return split_candidates(store.read_all(), with_patches=False)


def proposed(rows: list[dict], config: Config, proposer: str) -> ray.data.Dataset:
    """Ingest + propose + crop: the rows of columns.CANDIDATE_COLUMNS + CROP + ROWS_OF_SOURCE."""
    ds = raydata.map_task(
        _dataset(rows, config),
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
            ds, IsolatedPropose, propose_kwargs, batch_size=config.ray.model_batch_size, config=config.ray
        )
    # The weight-free proposer has nothing to load: tasks fuse with ingest, so decoded images
    # never cross the object store.
    return raydata.map_task(
        ds, IsolatedPropose, propose_kwargs, batch_size=config.ray.model_batch_size, config=config.ray
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
            proposed(rows, config, proposer),
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
    return split_candidates(store.read_all(), with_patches=True)


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
        uris = ", ".join(_where(refs[i]) for i in list(span)[:NAMED_SOURCES])
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


def _where(ref: SourceRef) -> str:
    return f"{ref.uri}[{ref.member}]" if ref.member else ref.uri


def _cause(exc: BaseException) -> str:
    """The first line of Ray's error (its full text repeats the remote traceback)."""
    inner = exc.__cause__ if isinstance(exc, ray.exceptions.UserCodeException) and exc.__cause__ else exc
    first = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {first.rstrip('.')}"


def split_candidates(table: dict[str, np.ndarray], with_patches: bool) -> Candidates:
    """Split the persisted rows (in partition order, sorted within each) into sources and
    patches."""
    if not with_patches:
        return Candidates(sources=table, patches={})
    is_source = table[C.PATCH_INDEX] < 0
    return Candidates(
        sources={k: v[is_source] for k, v in table.items()},
        patches={k: v[~is_source] for k, v in table.items()},
    )
