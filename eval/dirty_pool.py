"""A dirty video pool whose truth is known: the video pool's clips (pools.py) with about
`artefact_share` of their frames carrying one endoscopy artefact (artefacts.py), and some clips
freezing. Real recordings are that dirty: up to about 70% of an endoscopy sequence's frames
carry artefacts (EAD2019/2020, arXiv 1904.07073), and 26-40% of colonoscopy frames are
uninformative (Arnold et al., IMVIP 2009; CARE 2015).

- Each frame independently carries an artefact with probability `artefact_share`, of a kind
  drawn uniformly from the ten (so half the dirty frames are easy for an MAE, half hard), at a
  severity drawn uniformly from 1-5.
- A clip of two frames or more freezes with probability `freeze_share`: from a seeded frame on,
  the file repeats the frame before it byte for byte, as a stalled video stream does.
- truth.csv, beside the frames, gives each frame's clip, kind, family, severity, the frame it
  repeats when frozen, and for a local artefact (specular, bubbles, lens contact) its mask as
  COCO compressed RLE counts over the frame, so that a patch missing it can count as clean.

Same labeled pairs, settings and seed: the same bytes. `optidel run` lists the frames only (the
CSV and the pool record are not images).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optidel import seeding
from ..manifests.masks import decode_mask
from ..stages.keypatch import mask_to_rle
from . import artefacts
from .labeled import Pair
from .pools import clips, frame_name, save_frame, write_record

TRUTH_CSV = "truth.csv"
TRUTH_COLUMNS = ("frame", "clip", "index", "kind", "family", "severity", "frozen_of", "mask_rle")


@dataclass(frozen=True)
class FrameTruth:
    frame: str  # file name in the pool folder
    clip: str  # the labeled image the clip was filmed over
    index: int
    kind: str  # artefacts.CLEAN or one of artefacts.KINDS
    family: str
    severity: int  # 0 when clean
    frozen_of: str  # the frame this one repeats byte for byte, or ""
    mask_rle: str  # a local artefact's COCO counts over the frame, or ""


def write_dirty_video_pool(
    pairs: list[Pair],
    directory: str | Path,
    frame_size: int,
    max_clip: int,
    seed: int,
    artefact_share: float,
    freeze_share: float = 0.1,
) -> list[FrameTruth]:
    """Write the frames, truth.csv and the pool record under `directory`; returns the truth."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    truth: list[FrameTruth] = []
    for pair, frames in clips(pairs, frame_size, max_clip, seed):
        freeze_at = _freeze_start(seed, pair.name, len(frames), freeze_share)
        for index, frame in enumerate(frames):
            if freeze_at is not None and index >= freeze_at:
                held = truth[-(index - freeze_at + 1)]  # the last frame before the freeze
                (directory / frame_name(pair, index)).write_bytes((directory / held.frame).read_bytes())
                truth.append(FrameTruth(frame_name(pair, index), pair.name, index, held.kind, held.family,
                                        held.severity, held.frame, held.mask_rle))
                continue
            row, dirty = _dirty_frame(frame, pair, index, seed, artefact_share)
            save_frame(dirty, directory / row.frame)
            truth.append(row)
    write_record(directory, pairs, frame_size=frame_size, max_clip=max_clip, seed=seed,
                 artefact_share=artefact_share, freeze_share=freeze_share, truth=TRUTH_CSV)
    write_truth(directory / TRUTH_CSV, truth)
    return truth


def _freeze_start(seed: int, clip: str, n: int, freeze_share: float) -> int | None:
    draws = seeding.rng(seed, "freeze", clip)
    freezes, start = draws.random() < freeze_share, int(draws.integers(1, max(n, 2)))
    return start if n >= 2 and freezes else None


def _dirty_frame(frame: np.ndarray, pair: Pair, index: int, seed: int, share: float) -> tuple[FrameTruth, np.ndarray]:
    draws = seeding.rng(seed, "artefact", pair.name, index)
    name = frame_name(pair, index)
    if draws.random() >= share:
        return FrameTruth(name, pair.name, index, artefacts.CLEAN, artefacts.CLEAN, 0, "", ""), frame
    kind = artefacts.KINDS[int(draws.integers(len(artefacts.KINDS)))]
    severity = int(draws.integers(1, 6))
    dirty, mask = artefacts.apply(kind, frame, severity, draws)
    rle = "" if mask is None else mask_to_rle(mask)
    return FrameTruth(name, pair.name, index, kind, artefacts.family(kind), severity, "", rle), dirty


def write_truth(path: Path, truth: list[FrameTruth]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(TRUTH_COLUMNS)
        for row in truth:
            writer.writerow([getattr(row, c) for c in TRUTH_COLUMNS])


def read_truth(path: str | Path) -> dict[str, FrameTruth]:
    """truth.csv as {frame file name: its truth}."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["frame"]: FrameTruth(**{**r, "index": int(r["index"]), "severity": int(r["severity"])}) for r in rows}


def decode_truth_mask(row: FrameTruth, height: int, width: int) -> np.ndarray | None:
    """A local artefact's boolean mask over the frame, or None for a global one or a clean frame."""
    if not row.mask_rle:
        return None
    return decode_mask({"mask_rle": {"size": [height, width], "counts": row.mask_rle}})
