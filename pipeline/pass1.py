"""Pass 1: read -> validate -> propose -> crop -> score, streaming, into the candidates table.

No pixels outlive a batch: what reaches the driver is ids, boxes, mask statistics and RLE,
scores and one embedding per row. The driver persists it per input partition as partitions
complete (pipeline/partitions.py); a rerun on the same OUT sends Ray only the partitions that
have no part yet, and every run, fresh or resumed, selects from the parts (pipeline/selection/),
so both see the same bytes.

Faults: a worker or actor that dies is retried by Ray, at most ray.max_retries times
(pipeline/raydata.py). A source whose proposal raises is recorded with its error (status
`failed`, pipeline/pass1_stages.py) and the others go on. When Ray gives up, the run stops
with a RunError naming the unfinished partitions; the finished ones are kept, and a rerun
resumes from them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from ..stages import columns as C
from ..stages.execution import ROWS_PER_FORWARD
from ..stages.ingest import Ingest
from ..stages.propose import Proposer
from . import progress, raydata
from .config import Config
from .listing import Listing, batched
from .partitions import PASS1_DIR, PartitionSink, PartStore
from .pass1_stages import IngestAndPropose, IngestWithoutPixels, IsolatedPropose, ScoreInActor, where
from .resume import RunError

log = logging.getLogger("optidel")

NAMED_SOURCES = 3  # sources named per unfinished partition in a failure message
# Listing rows handed to Ray Data at once. Ray Data takes them as a list (ray.data.from_items):
# a whole pool of 10^8 would be 10^8 dicts in the driver and the object store, a wave is about
# 40 MB (tests/test_listing.py). Each wave starts the steps' actors again (model loads): waves
# this large keep that small against the wave's own work.
WAVE_SOURCES = 65536
# A batch's frames of one video are decoded in one pass from the keyframe before the first. At
# 1 fps, 32 frames span 32 s: against a 10 s keyframe interval (libx264's default at 25 fps),
# the lead-in is a fraction of the batch (benchmarks/decode_floor.py: 8-frame batches reached
# 0.64 of PyAV's own speed on such a video, 32-frame ones 0.93).
VIDEO_ROWS_PER_BLOCK = 32


def _stream(rows: list[dict], steps: list[raydata.Step], config: Config):
    """Listing rows through the steps, in blocks of one model batch: partitions (the resume
    unit) are far larger, and blocks that size would leave cores idle on small pools and at the
    end of large ones. Video frames go in blocks, and to the ingesting step in batches, of
    VIDEO_ROWS_PER_BLOCK at least: each batch seeks back to a keyframe before its first frame
    and decodes from there."""
    per_block = config.ray.model_batch_size
    if any(row[C.VIDEO_SAMPLE] >= 0 for row in rows):
        per_block = max(per_block, VIDEO_ROWS_PER_BLOCK)
        steps = [replace(steps[0], batch_size=per_block), *steps[1:]]
    return raydata.stream(rows, steps, config.ray, rows_per_block=per_block)


def ingest_only(listing: Listing, config: Config, store: PartStore) -> None:
    """Pass 1 of the selectors that need no scores (random): read and validate, no models."""
    _run_partitions(listing, store, config, [raydata.Step(IngestWithoutPixels, {"config": config.ingest})])


def proposed(config: Config, proposer: Proposer) -> list[raydata.Step]:
    """Ingest + propose + crop: the steps whose rows are columns.CANDIDATE_COLUMNS + CROP +
    ROWS_OF_SOURCE."""
    propose_kwargs = {
        "config": config.propose,
        "crop_size": config.score.image_size,
        "seed": config.seed,
        "device": raydata.device(config.ray),
        "proposer": proposer,
    }
    if proposer.actor:
        return [raydata.Step(Ingest, {"config": config.ingest}), raydata.Step(IsolatedPropose, propose_kwargs)]
    # A proposer with nothing to load: one task reads and proposes each source, so decoded
    # images never cross the object store, and a worker holds one at a time.
    return [raydata.Step(IngestAndPropose, {"ingest": {"config": config.ingest}, "propose": propose_kwargs})]


@dataclass
class TrainingSample:
    """The proxy's training crops (N, S, S, 3), and, when the sample of sources was the whole
    pool (small pools), every proposed batch: pass 1 then scores those instead of proposing
    the pool a second time (scored's `proposals`)."""

    crops: np.ndarray
    proposals: list[dict[str, np.ndarray]] | None


def training_crops(listing: Listing, config: Config, proposer: Proposer) -> TrainingSample:
    """Crops for self-training the proxy: a seeded sample of sources, proposed as in the full
    pass, then a seeded sample of their ok crops (patches and whole images). The sample holds
    at most a fixed number of sources (twice what score.mae.train_patches needs), so whatever
    it keeps does not grow with the pool."""
    from optidel import seeding

    want = config.score.mae.train_patches
    per_source = config.propose.max_patches_per_image + 1
    n_sources = min(len(listing), max(8, 2 * math.ceil(want / per_source)))
    sample = list(listing.rows(range(i, i + 1) for i in listing.sample(config.seed, n_sources)))
    whole_pool = n_sources == len(listing)

    keys, crops, batches = [], [], []
    shown = progress.StageProgress("proxy crops", len(sample), "sources")
    try:
        for batch in _stream(sample, proposed(config, proposer), config):
            sources, patches = _sources_and_patches(batch)
            shown.add(sources, **patches)
            ok = (batch[C.PATCH_INDEX] >= 0) | (batch[C.STATUS] == "ok")
            ids = np.where(batch[C.PATCH_INDEX] >= 0, batch[C.PATCH_ID], batch[C.SOURCE_ID])
            keys.extend(ids[ok].tolist())
            crops.append(batch[C.CROP][ok])
            if whole_pool:
                batches.append(batch)
    except raydata.StageFailure as exc:
        raise RunError(f"proposing the proxy's training crops failed: {exc}") from exc
    proposals = batches if whole_pool else None
    if not keys:
        return TrainingSample(np.zeros((0, config.score.image_size, config.score.image_size, 3), np.uint8), proposals)
    crops = np.concatenate(crops)
    # Order by a seeded hash of the crop's id, never by arrival order (which Ray does not fix).
    chosen = sorted(range(len(keys)), key=lambda i: seeding.derive(config.seed, "train-crop", keys[i]))[:want]
    return TrainingSample(crops[sorted(chosen, key=lambda i: keys[i])], proposals)


def scored(
    listing: Listing,
    config: Config,
    proposer: Proposer,
    proxy_path: str,
    store: PartStore,
    proposals: list[dict[str, np.ndarray]] | None = None,
) -> None:
    """The full pass 1 for selectors that need scores: ingest + propose + crop + score. Given
    `proposals` (the proxy's sample, when it was the whole pool: TrainingSample), only their
    scoring is left to do: the rows are those the same steps would give again, and a row's
    score does not depend on the batch it is scored in."""
    score = raydata.Step(
        ScoreInActor,
        {"config": config.score, "seed": config.seed, "checkpoint": proxy_path, "device": raydata.device(config.ray)},
        batch_size=_score_batch_rows(config),
    )
    if proposals is None:
        _run_partitions(listing, store, config, [*proposed(config, proposer), score])
    else:
        log.info("pass 1: scoring the proxy's proposals (its sample was the whole pool), not proposing again")
        _run_partitions(listing, store, config, [score], proposals)


def _score_batch_rows(config: Config) -> int:
    """Rows per Score call: one model batch of sources with all their patch rows, rounded up to
    a multiple of ROWS_PER_FORWARD. Score pads each call's last forward pass to that shape:
    with whole passes per batch, only the end of what Ray hands the actor at once is padded,
    not every batch as well (136 rows pad to 160). On 128 kvasir-seg images (1334 rows, cut as
    Ray cut them): 45 passes, not 52, for the 42 the rows need, and 8.0 s of scoring on one
    core, not 10.2 s (medians of 3, alternated). A row's score does not depend on its batch."""
    rows = config.ray.model_batch_size * (config.propose.max_patches_per_image + 1)
    return math.ceil(rows / ROWS_PER_FORWARD) * ROWS_PER_FORWARD


def _run_partitions(
    listing: Listing, store: PartStore, config: Config, steps: list[raydata.Step], proposals: list | None = None
) -> None:
    """Stream the partitions that have no part through the steps into the part store: their
    listing rows, a wave of WAVE_SOURCES at a time, or, given `proposals`, those batches' rows
    of the pending partitions."""
    done = store.done()
    pending = [p for p in range(store.n_partitions) if p not in done]
    if done:
        log.info("pass 1: resuming, %d of %d partitions already done", len(done), store.n_partitions)
    if not pending:
        return
    sink = PartitionSink(store, pending)
    spans = [store.sources_of(p) for p in pending]
    shown = progress.StageProgress("pass 1", sum(len(span) for span in spans), "sources")
    if proposals is None:
        waves = batched(listing.rows(spans), WAVE_SOURCES)
        batches = (batch for wave in waves for batch in _stream(wave, steps, config))
    else:
        wanted = [C.take(b, np.isin(b[C.INPUT_INDEX], np.concatenate(spans))) for b in proposals]
        batches = raydata.stream_batches([b for b in wanted if len(b[C.INPUT_INDEX])], steps, config.ray)
    try:
        for batch in batches:
            batch.pop(C.CROP, None)
            sink.add(batch)
            sources, patches = _sources_and_patches(batch)
            shown.add(sources, **patches)
    except raydata.StageFailure as exc:
        raise RunError(_failure_message(listing, store, sink, str(exc))) from exc
    if sink.unfinished():
        raise RunError(_failure_message(listing, store, sink, None))


def _sources_and_patches(batch: dict[str, np.ndarray]) -> tuple[int, dict[str, int]]:
    """The sources a pass-1 batch completes, and its patches as progress counts. A source has
    one source row (PATCH_INDEX -1), wherever Ray splits its patch rows; without patches
    (whole-image selectors) every row is a source."""
    if C.PATCH_INDEX not in batch:
        return len(batch[C.INPUT_INDEX]), {}
    sources = int(np.count_nonzero(batch[C.PATCH_INDEX] < 0))
    return sources, {"patches": len(batch[C.PATCH_INDEX]) - sources}


def _failure_message(listing: Listing, store: PartStore, sink: PartitionSink, cause: str | None) -> str:
    unfinished = sink.unfinished()
    named = []
    for p in unfinished[:NAMED_SOURCES]:
        span = store.sources_of(p)
        uris = ", ".join(where(listing.ref(i)) for i in span[:NAMED_SOURCES])
        more = f", ... ({len(span)} sources)" if len(span) > NAMED_SOURCES else ""
        named.append(f"partition {p} (sources {span.start}-{span.stop - 1}: {uris}{more})")
    if len(unfinished) > NAMED_SOURCES:
        named.append(f"and {len(unfinished) - NAMED_SOURCES} more")
    cause = cause or "pass 1 ended with rows missing"
    return (
        f"pass 1 stopped with {len(unfinished)} of {store.n_partitions} partitions unfinished: "
        f"{'; '.join(named)}. Cause: {cause}. Finished partitions are kept in "
        f"{store.output.path(PASS1_DIR)}; rerunning the same command resumes from them."
    )
