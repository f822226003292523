"""What a selection contains, measured against a dirty pool's truth (dirty_pool.py): no
pre-training, seconds per arm. This is the bench on which a selector's curation shows at this
machine's compute, where the downstream probe cannot see it.

Per arm, over its selected patches (a whole-image selector's patch is the whole frame, a
mosaic's four patches count one by one):
- `clean`: the share that shows no artefact. A frame without one is clean; so is a patch of a
  frame whose artefact is local (specular, bubbles, lens contact) when its box misses every
  pixel of the artefact's mask;
- the share of each artefact kind, and of each family (`easy`, `hard`);
- `clips` and `frames`: the distinct clips and frames the selection draws from;
- `score`: the mean proxy score of the selected units, beside `pool_score`, the mean over every
  candidate of the same unit (patches for a patch selector, whole frames for an image one), so
  a selector that stays above the pool's mean still selects for hardness;
- `clean_ci95`, and `clean_vs_random` (and against each peer present, and the `--versus` arm):
  a paired bootstrap over the pool's clips (clean_intervals).

A patch arm's scores come from its own patches.parquet. A whole-image arm's come from a scored
run on the same pool when one is given (`scored`, e.g. the optidel arm: its pass-1 parts keep
every frame's score), so every image arm, a peer's list included, is scored by the same proxy
against the same pool; else from its own patches.parquet, when its selector scored anything.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

from optidel import seeding
from ..manifests import layout, schema
from ..pipeline.partitions import PASS1_DIR  # where a run keeps its scored candidates
from . import artefacts, recordings
from .arms import open_arm
from .dirty_pool import TRUTH_CSV, FrameTruth, decode_truth_mask, read_truth
from .labeled import EvalError
from .pools import POOL_RECORD

BASELINES = ("random", "cleanvision", "lightly")  # each arm's clean share is compared with these
BOOTSTRAP_DRAWS = 4000


def pool_folder(out: str) -> Path | None:
    """The dirty pool's folder the arm's sources all come from, or None when they do not all
    come from one folder that holds a truth.csv."""
    uris = layout.Output(out).read_manifest("sources", columns=["uri"]).column("uri").to_pylist()
    folders = {posixpath.dirname(uri) for uri in uris}
    if len(folders) != 1:
        return None
    folder = Path(folders.pop())
    if not (folder / TRUTH_CSV).is_file() or not (folder / POOL_RECORD).is_file():
        return None
    return folder


def pool_truth(out: str) -> tuple[Path, dict[str, FrameTruth]] | None:
    """(the arm's dirty pool's folder, its truth by frame), or None (pool_folder)."""
    folder = pool_folder(out)
    return None if folder is None else (folder, read_truth(folder / TRUTH_CSV))


@dataclass(frozen=True)
class Selected:
    """What an arm selected, patch by patch: the clip and frame each came from and what it shows."""

    clips: list[str]
    frames: list[str]
    kinds: list[str]
    composition: dict


def arm_composition(out: str, scored: str | None = None) -> dict:
    """The composition of one `optidel run` output over a dirty pool (see the module's doc)."""
    found = pool_truth(out)
    if found is None:
        raise EvalError(f"{out}: its sources are not the frames of one dirty pool with a {TRUTH_CSV}")
    return selected(out, found[1], whole_image_scores(scored) if scored else None).composition


def selected(out: str, truth: dict[str, FrameTruth], frame_scores: dict[str, float] | None) -> Selected:
    """What the run `out` selected from the pool whose truth is `truth`; `frame_scores` are the
    scored run's whole-frame scores (whole_image_scores), or None."""
    output = layout.Output(out)
    sources = output.read_manifest(
        "sources", columns=["source_id", "uri", "frame_index", "status", "width", "height"]
    ).to_pylist()
    frame_of = {s["source_id"]: s for s in sources if s["status"] == schema.OK}
    patches = output.read_manifest(
        "patches", columns=["source_id", "x0", "y0", "x1", "y1", "score", "selected", "mask_rle"]
    ).to_pylist()
    chosen = [p for p in patches if p["selected"]]
    if not chosen:
        raise EvalError(f"{out}: no selected patch in its patches.parquet")
    kinds = [patch_kind(p, frame_of[p["source_id"]], truth) for p in chosen]
    frames = [truth_frame(frame_of[p["source_id"]]) for p in chosen]
    clips = [truth[f].clip for f in frames]
    whole_images = all(p["mask_rle"] is None for p in chosen)
    composition = {"patches": len(chosen), **_shares(kinds)}
    composition["clips"] = len(set(clips))
    composition["frames"] = len(set(frames))
    composition["unit"] = "image" if whole_images else "patch"
    composition.update(_scores(chosen, patches, whole_images, frame_scores))
    return Selected(clips, frames, kinds, composition)


def clean_intervals(arms: dict[str, Selected], pool_clips: list[str], baselines=BASELINES) -> None:
    """Add `clean_ci95` to each arm's composition and, for each baseline arm present,
    `clean_vs_<baseline>` = {"diff", "ci95"}: a bootstrap over the pool's clips (the pool's
    independent unit: each clip is filmed over its own image), paired, since every arm's share is
    taken over the same drawn clips. It says how much of a share is the luck of which clips the
    pool holds; the selections themselves are deterministic."""
    index = {clip: i for i, clip in enumerate(pool_clips)}
    draws = seeding.rng(0, "composition-bootstrap", len(pool_clips)).multinomial(
        len(pool_clips), np.full(len(pool_clips), 1.0 / len(pool_clips)), size=BOOTSTRAP_DRAWS
    )  # (draws, clips): how often each clip is drawn

    def shares(arm: Selected) -> np.ndarray:
        where = np.array([index[c] for c in arm.clips])
        clean = np.bincount(where, weights=[k == artefacts.CLEAN for k in arm.kinds], minlength=len(index))
        total = np.bincount(where, minlength=len(index))
        return (draws @ clean) / np.maximum(draws @ total, 1)

    boot = {name: shares(arm) for name, arm in arms.items()}
    for name, arm in arms.items():
        arm.composition["clean_ci95"] = [float(v) for v in np.percentile(boot[name], [2.5, 97.5])]
        for baseline in baselines:
            if baseline in arms and baseline != name:
                diff = arm.composition[artefacts.CLEAN] - arms[baseline].composition[artefacts.CLEAN]
                low, high = np.percentile(boot[name] - boot[baseline], [2.5, 97.5])
                arm.composition[f"clean_vs_{baseline}"] = {"diff": float(diff), "ci95": [float(low), float(high)]}


def pool_composition(truth: dict[str, FrameTruth]) -> dict:
    """The pool's own make-up, over its distinct frames (a frozen repeat is the frame it repeats)."""
    distinct = [row for row in truth.values() if not row.frozen_of]
    result = {"frames": len(distinct), **_shares([row.kind for row in distinct])}
    result["clips"] = len({row.clip for row in distinct})
    result["frozen_repeats"] = len(truth) - len(distinct)
    return result


def patch_kind(patch: dict, source: dict, truth: dict[str, FrameTruth]) -> str:
    """What a patches.parquet row shows: its frame's kind, or clean when the frame's artefact is
    local and the patch's box misses its mask (gate_measures.py classifies candidates by it too)."""
    row = truth[truth_frame(source)]
    mask = decode_truth_mask(row, source["height"], source["width"])
    if mask is None or patch["x0"] is None:
        return row.kind  # a global artefact, a clean frame, or a whole-frame patch
    touched = mask[patch["y0"] : patch["y1"], patch["x0"] : patch["x1"]].any()
    return row.kind if touched else artefacts.CLEAN


def truth_frame(source: dict) -> str:
    """The truth.csv frame a sources.parquet row is: its file, or the frame a recording's frame
    replaced (recordings.py)."""
    name = posixpath.basename(source["uri"])
    return name if source.get("frame_index") is None else recordings.frame_of(name, source["frame_index"])


def _shares(kinds: list[str]) -> dict[str, float]:
    """The share of clean, of each family and of each kind among `kinds`."""
    families = [artefacts.family(k) for k in kinds]
    shares = {artefacts.CLEAN: _share(kinds, artefacts.CLEAN)}
    shares.update({name: _share(families, name) for name in ("easy", "hard")})
    shares.update({kind: _share(kinds, kind) for kind in artefacts.KINDS})
    return shares


def _share(values: list[str], value: str) -> float:
    return sum(v == value for v in values) / len(values)


def _scores(chosen, patches, whole_images: bool, frame_scores: dict[str, float] | None) -> dict:
    if whole_images and frame_scores is not None:
        picked = [frame_scores.get(p["source_id"]) for p in chosen]
        if None in picked:
            raise EvalError(f"--scored: the scored run has no score for {picked.count(None)} of the selected frames")
        return {"score": float(np.mean(picked)), "pool_score": float(np.mean(list(frame_scores.values())))}
    own = [p["score"] for p in chosen]
    if None in own:
        return {"score": None, "pool_score": None}
    pool = [p["score"] for p in patches if p["score"] is not None and (p["mask_rle"] is None) == whole_images]
    return {"score": float(np.mean(own)), "pool_score": float(np.mean(pool))}


def whole_image_scores(scored: str) -> dict[str, float]:
    """{source_id: the proxy's score of the whole frame} from a run's pass-1 parts."""
    table = scored_frames(scored, ["source_id", "score"])
    return dict(zip(table.column("source_id").to_pylist(), table.column("score").to_pylist()))


def scored_frames(scored: str, columns: list[str]):
    """`columns` of every usable whole frame (a source row: patch_index -1, status ok) in the
    pass-1 parts of the run `scored`, as a pyarrow Table."""
    parts = Path(scored, PASS1_DIR)
    if not parts.is_dir():
        raise EvalError(f"--scored {scored}: no {parts}, so no scored pass 1 to read")
    return ds.dataset(str(parts), format="parquet").to_table(
        columns=columns, filter=(ds.field("patch_index") == -1) & (ds.field("status") == schema.OK)
    )


def add_to(summaries: dict, arms: list, scored: str | None) -> dict | None:
    """Put each arm's composition into its summary when every arm's pool is the same dirty pool;
    returns the pool's composition then, else None (a clean pool: nothing to measure)."""
    found = _compose({arm.name: arm.out for arm in arms}, scored)
    if found is None:
        return None
    truth, picked = found[1:]
    for name, arm in picked.items():
        summaries[name]["composition"] = arm.composition
    return pool_composition(truth)


def evaluate(arm_specs: list[tuple[str, str]], out: str, scored: str | None = None, versus: str | None = None) -> dict:
    """Every arm's composition, and the pool's, into OUT/results.json and results.md; `versus`
    names one more arm that every other's clean share is compared with."""
    from .report import RESULTS_JSON, RESULTS_MD, composition_markdown

    if not arm_specs:
        raise EvalError("no arms: pass --arm NAME=OUT at least once")
    for name, arm_out in arm_specs:
        open_arm(name, arm_out)  # a finished `optidel run` output, or a one-line error naming it
    if versus is not None and versus not in dict(arm_specs):
        raise EvalError(f"--versus {versus}: no arm of that name")
    baselines = BASELINES + (() if versus is None else (versus,))
    folder, truth, picked = _compose(dict(arm_specs), scored, required=True, baselines=baselines)
    results = {
        "kind": "composition",
        "pool": str(folder),
        "versus": versus,
        "pool_composition": pool_composition(truth),
        "scored": scored,
        "arms": {name: {"out": out, "composition": picked[name].composition} for name, out in arm_specs},
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / RESULTS_JSON).write_text(json.dumps(results, indent=2) + "\n")
    (Path(out) / RESULTS_MD).write_text(composition_markdown(results))
    return results


def _compose(outs: dict[str, str], scored: str | None, required: bool = False, baselines=BASELINES):
    """(the pool's folder, its truth, {name: Selected} with intervals) for arms that all come
    from one dirty pool; otherwise None, or an EvalError naming the arm when `required`. The
    truth and the scored run's frame scores are read once for all arms."""
    folders = {}
    for name, out in outs.items():
        found = pool_folder(out)
        if found is None:
            if required:
                raise EvalError(f"arm {name}: {out}'s sources are not the frames of one dirty pool with a {TRUTH_CSV}")
            return None
        folders[name] = found
    if len(set(folders.values())) != 1:
        if required:
            pools = ", ".join(map(str, sorted(set(folders.values()))))
            raise EvalError(f"the arms come from {len(set(folders.values()))} different pools ({pools})")
        return None
    folder = next(iter(folders.values()))
    truth = read_truth(folder / TRUTH_CSV)
    frame_scores = whole_image_scores(scored) if scored else None
    picked = {name: selected(out, truth, frame_scores) for name, out in outs.items()}
    clean_intervals(picked, sorted({row.clip for row in truth.values()}), baselines)
    return folder, truth, picked
