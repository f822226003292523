"""The arms a user would pick instead of optidel, at optidel's budget, as lists of frames that
`optidel run LIST --selector random --keep 1.0` turns into an arm (every listed frame one
sample), so the composition and the probe read them like any other arm.

- `cleanvision` (Cleanlab's cleanvision, Apache-2.0): its image-issue checks (blurry, dark,
  light, low information, exact and near duplicates) remove frames, keeping the first of each
  duplicate set, then a seeded random draw of the budget from the rest: how a user cleans a
  pool with it before sampling.
- `lightly` (Lightly's selection engine, `lightly-mundig`, MIT): its diversity strategy
  (farthest-point coverage) on the same whole-frame proxy embeddings optidel's pass 1 computed.
- `oracle`: a seeded random draw from the frames the truth says are clean: what a perfect
  artefact filter followed by random sampling would keep.

The budget is optidel's: ceil(keep x the pool's distinct frames), the pipeline's `ok` sources.
cleanvision and lightly-mundig are the `eval` extra's (`pip install -e ".[eval]"`), imported
only here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from pathlib import Path

import numpy as np

from optidel import imageio, seeding
from . import artefacts
from .composition import scored_frames
from .dirty_pool import TRUTH_CSV, read_truth
from .labeled import EvalError

log = logging.getLogger("optidel")

PEERS = ("cleanvision", "lightly", "oracle")
CLEANVISION_ISSUES = ("blurry", "dark", "light", "low_information", "exact_duplicates", "near_duplicates")


def frames(folder: str | Path) -> list[Path]:
    """The pool's frames, sorted by name."""
    found = sorted(Path(folder).glob("*.jpg"))
    if not found:
        raise EvalError(f"{folder}: no .jpg frames")
    return found


def distinct(paths: list[Path]) -> list[Path]:
    """Each frame whose bytes no earlier frame has (a frozen repeat is not a new frame)."""
    seen, kept = set(), []
    for path in paths:
        digest = imageio.sha256_hex(path.read_bytes())
        if digest not in seen:
            seen.add(digest)
            kept.append(path)
    return kept


def budget(unique: list[Path], keep: float) -> int:
    """optidel's budget: ceil(keep x the distinct frames)."""
    return math.ceil(keep * len(unique))


def seeded_draw(paths: list[Path], n: int, seed: int, name: str) -> list[Path]:
    order = seeding.rng(seed, "peer", name).permutation(len(paths))
    return sorted(paths[i] for i in order[:n])


def oracle(folder: str | Path, keep: float, seed: int) -> list[Path]:
    truth = read_truth(Path(folder) / TRUTH_CSV)
    unique = distinct(frames(folder))
    clean = [p for p in unique if truth[p.name].kind == artefacts.CLEAN]
    return seeded_draw(clean, budget(unique, keep), seed, "oracle")


def cleanvision(folder: str | Path, keep: float, seed: int) -> list[Path]:
    paths = frames(folder)
    return cleanvision_keep(paths, budget(distinct(paths), keep), seed)


def cleanvision_keep(paths: list[Path], n: int, seed: int) -> list[Path]:
    """A seeded draw of n of the frames that pass cleanvision's checks (all of them if fewer)."""
    from cleanvision import Imagelab

    with contextlib.redirect_stderr(io.StringIO()):  # its progress bars ignore verbose=False
        lab = Imagelab(filepaths=[str(p) for p in paths], verbose=False)
        lab.find_issues({issue: {} for issue in CLEANVISION_ISSUES}, n_jobs=1, verbose=False)
    issues = lab.issues
    flagged_columns = [f"is_{issue}_issue" for issue in CLEANVISION_ISSUES if not issue.endswith("duplicates")]
    flagged = set(issues.index[issues[flagged_columns].any(axis=1)])
    for issue in ("exact_duplicates", "near_duplicates"):
        for group in lab.info[issue]["sets"]:
            flagged.update(sorted(group)[1:])  # keep one of each set
    kept = [p for p in paths if str(p) not in flagged]
    counts = {issue: int(issues[f"is_{issue}_issue"].sum()) for issue in CLEANVISION_ISSUES}
    log.info("cleanvision flags %s; %d of %d frames kept", counts, len(kept), len(paths))
    return seeded_draw(kept, n, seed, "cleanvision")


def lightly(folder: str | Path, keep: float, scored: str | None) -> list[Path]:
    if scored is None:
        raise EvalError("the lightly arm needs --scored OUT: the optidel run whose whole-frame embeddings it selects on")
    table = scored_frames(scored, ["uri", "embedding"])
    order = np.argsort(table.column("uri").to_numpy(zero_copy_only=False), kind="stable")
    uris = [table.column("uri")[int(i)].as_py() for i in order]
    embeddings = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))[order].astype(np.float32)
    return sorted(Path(uris[i]) for i in lightly_keep(embeddings, budget(distinct(frames(folder)), keep)))


def lightly_keep(embeddings: np.ndarray, n: int) -> list[int]:
    """The rows lightly-mundig's diversity strategy picks, n of them."""
    import lightly_mundig

    selection = lightly_mundig.Selection()
    selection.add_diversifying_strategy(embeddings=embeddings, strength=1.0)
    return selection.run_selection(n_total_samples=len(embeddings), n_samples_to_select=n, preselected_indices=[])


def choose(name: str, folder: str | Path, keep: float, seed: int, scored: str | None) -> list[Path]:
    if name == "cleanvision":
        return cleanvision(folder, keep, seed)
    if name == "lightly":
        return lightly(folder, keep, scored)
    if name == "oracle":
        return oracle(folder, keep, seed)
    raise EvalError(f"peer {name!r}: not one of {', '.join(PEERS)}")


def write_list(paths: list[Path], path: str | Path) -> None:
    """An `optidel run` list file: one absolute frame path a line."""
    Path(path).write_text("".join(f"{p.resolve()}\n" for p in paths))
