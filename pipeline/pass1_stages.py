"""The stage wrappers pass 1 runs on Ray: source-row bookkeeping around Ingest and Propose.

Ray workers import this module, and the driver does too; neither imports torch through it: on
the weight-free proposer's path no worker but the Score actors imports torch
(tests/test_pass1_stages.py checks it), and the driver never does (ScoreInActor).
"""

from __future__ import annotations

import logging

import numpy as np

from ..manifests import schema
from ..stages import columns as C
from ..stages.execution import MODEL_ACTOR, TASK
from ..stages.ingest import Ingest, as_batch
from ..stages.propose import Propose
from .inputs import SourceRef
from .partitions import ROWS_OF_SOURCE

log = logging.getLogger("optidel")

# A source the proposer raised on: its bytes decode, so it is not corrupt; the error names the
# exception.
FAILED_STATUS = schema.FAILED


def _with_rows_of_source(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tag each row with how many rows its source produced (the sink's completeness count);
    `out` holds every row of each of its sources."""
    _, inverse, counts = np.unique(out[C.INPUT_INDEX], return_inverse=True, return_counts=True)
    out[ROWS_OF_SOURCE] = counts[inverse].astype(np.int64)
    return out


class IngestWithoutPixels(Ingest):
    """Ingest for whole-image selectors: validate, keep the record, drop the pixels (each as
    soon as it is decoded)."""

    def __call__(self, batch):
        return _with_rows_of_source(C.to_batch([row for row, _ in self.each(batch)], C.SOURCE_COLUMNS))


class IsolatedPropose(Propose):
    """Propose, where a source that raises fails alone: when a batch raises, its sources are
    proposed one by one, and a source that still raises becomes a FAILED_STATUS source row
    with the exception as its error. Runs where its proposer's model loads once: an actor."""

    execution = MODEL_ACTOR

    def __call__(self, batch):
        self.setup()  # a model that cannot load fails the run, not every source
        try:
            out = super().__call__(batch)
        except Exception:  # noqa: BLE001 - isolated below, source by source
            out = C.concat([self._one(batch, i) for i in range(len(batch[C.INPUT_INDEX]))])
        return _with_rows_of_source(out)

    def _one(self, batch, i: int):
        row = C.take(batch, slice(i, i + 1))
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


class IngestAndPropose:
    """Ingest, then IsolatedPropose, one source at a time: the weight-free proposer's one task.
    Ray Data would fuse the two stages anyway, but as two calls on the whole batch, holding all
    its decoded frames at once (8 full-HD frames are 50 MB). One at a time, a worker's peak is
    set by its largest frame, which a larger pool of such frames does not raise; and a video's
    frames in the batch are still decoded in one pass (Ingest.each)."""

    execution = TASK

    def __init__(self, ingest: dict, propose: dict):
        self.ingest = Ingest(**ingest)
        self.propose = IsolatedPropose(**propose)

    def __call__(self, batch):
        proposed = [self.propose(as_batch([source])) for source in self.ingest.each(batch)]
        return C.concat(proposed or [self.propose(as_batch([]))])


class ScoreInActor:
    """The Score stage, imported where it runs: in the actor. The driver only names this class
    to Ray, so it never imports torch and timm for it (5 s of its start-up and most of its
    memory: 0.9 GB of the 1 GB it peaked at on a small pool)."""

    execution = MODEL_ACTOR

    def __init__(self, **kwargs):
        from ..stages.score import Score

        self.stage = Score(**kwargs)

    def __call__(self, batch):
        return self.stage(batch)


def _where_row(row) -> str:
    return where(SourceRef(str(row[C.URI][0]), str(row[C.MEMBER][0]), -1, -1))


def where(ref: SourceRef) -> str:
    return f"{ref.uri}[{ref.member}]" if ref.member else ref.uri
