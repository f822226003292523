"""The selection barrier: decides duplicates, selects the budget under the configured selector,
groups the selection into mosaics and names every sample. Over the pass-1 parts, the `optidel`,
`hard` and `random` selectors run as Ray tasks (plan_over_parts: duplicates by
pipeline/duplicates.py, the choice by pipeline/part_selection.py and image_selection.py), and
the plan holds the chosen rows and their sources only. Otherwise (`plan`, the reference; `dedup`)
the barrier holds every source and ~1 KB per patch in one process. A patch's mask is never held
here: patches.parquet reads it back from pass 1's parts (pipeline/patch_manifest.py)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..manifests import schema
from ..stages import columns as C
from ..stages import exact_mean
from ..stages.compose import group_patches, sample_key
from ..stages.id_table import IdTable
from ..stages.select import diversity_stats, select_images, select_patches, selector
from ..stages.select_parts import DISTRIBUTED
from . import duplicates, image_selection, part_selection
from .config import Config
from .duplicates import Duplicates
from .partitions import PartStore
from .pass1 import Candidates

log = logging.getLogger("optidel")


@dataclass
class Plan:
    # sources.parquet columns (sentinels), input order: every source, or over the parts (when
    # `duplicates` is set) only those of the chosen rows, what pass 2 reads.
    sources: dict[str, np.ndarray]
    patches: dict[str, np.ndarray]  # patches.parquet columns (sentinels)
    samples: list[list[int]]  # per output sample, its patch rows in slot order
    grid: int
    accounting: dict = field(default_factory=dict)
    # Set when the selection ran over the parts: `patches` then holds the chosen rows only, and
    # patches.parquet is labelled part by part by its manifest_pieces (pipeline/part_selection.py,
    # pipeline/image_selection.py).
    labels: part_selection.PatchLabels | image_selection.ChosenImages | None = None
    # Set when the duplicates were found over the parts: sources.parquet is then written from
    # the parts (pipeline/source_manifest.py).
    duplicates: Duplicates | None = None
    by_status: dict[str, int] = field(default_factory=dict)  # the pool's sources, duplicates marked


def mark_duplicates(sources: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Byte-identical ok sources after the first (in input order) become `duplicate`."""
    status = sources[C.STATUS].copy()
    duplicate_of = np.full(len(status), "", dtype=object)
    first: dict[str, str] = {}
    for i, (sid, st) in enumerate(zip(sources[C.SOURCE_ID], status)):
        if st != schema.OK:
            continue
        if sid in first:
            status[i], duplicate_of[i] = schema.DUPLICATE, sid
        else:
            first[sid] = sid
    return {**sources, C.STATUS: status, "duplicate_of": duplicate_of}


def over_parts(config: Config) -> bool:
    """Whether the configured selector has a form over the parts (plan_over_parts)."""
    return config.selector in DISTRIBUTED


def plan(candidates: Candidates, config: Config) -> Plan:
    """The plan in memory, from every source and candidate patch: the reference."""
    sources = mark_duplicates(candidates.sources)
    n_ok = int(np.sum(sources[C.STATUS] == schema.OK))
    n_samples = config.budget(n_ok) if n_ok else 0
    if selector(config.selector).whole_images:
        result = _plan_images(sources, n_samples, config)
    else:
        result = _plan_patches(sources, candidates.patches, n_samples, config)
    result.by_status = dict(sorted(Counter(sources[C.STATUS].tolist()).items()))
    return _counted(result, n_ok, n_samples, config)


def plan_over_parts(parts: PartStore, config: Config) -> Plan:
    """plan() by Ray tasks over the pass-1 parts, for the selectors with a form there
    (over_parts): the driver reads no row of the pool, and gets the same samples, accounting
    and manifests (the same rows whenever select.kmeans_sample covers the pool)."""
    found, by_status = duplicates.find(parts, config)
    n_ok = by_status.get(schema.OK, 0)
    n_samples = config.budget(n_ok) if n_ok else 0
    if selector(config.selector).whole_images:
        result = _plan_images_over_parts(found, parts, n_ok, n_samples, config)
    else:
        result = _plan_patches_over_parts(found, parts, n_samples, config)
    result.duplicates, result.by_status = found, by_status
    return _counted(result, n_ok, n_samples, config)


def _counted(result: Plan, n_ok: int, n_samples: int, config: Config) -> Plan:
    """The plan with its counts in the accounting, and a warning when it falls short."""
    result.accounting.update(n_ok=n_ok, samples_target=n_samples, samples=len(result.samples))
    if len(result.samples) < n_samples:
        log.warning(
            "shortfall: the pool gave %d samples of the %d asked for (keep=%s of %d ok sources)",
            len(result.samples), n_samples, config.keep, n_ok,
        )
    return result


def _plan_images(sources, n_samples: int, config: Config) -> Plan:
    """Whole-image baselines: one source image per output sample."""
    ok = np.flatnonzero(sources[C.STATUS] == schema.OK)
    ids = sources[C.SOURCE_ID][ok]
    has_scores = C.EMBEDDING in sources
    selection = select_images(
        source_ids=ids,
        scores=sources[C.SCORE][ok] if has_scores else None,
        embeddings=sources[C.EMBEDDING][ok] if has_scores else None,
        budget=n_samples,
        config=config.select,
        method=config.selector,
        seed=config.seed,
    )
    patches = {**image_selection.image_rows(ids, sources[C.WIDTH][ok], sources[C.HEIGHT][ok]), **_selection_columns(selection)}
    if has_scores:  # its source row's score
        patches[C.SCORE] = sources[C.SCORE][ok]
    # Output order follows rank (seeded for random), so it never depends on listing order.
    chosen = sorted(np.flatnonzero(selection.selected), key=lambda i: selection.rank[i])
    samples = [[int(i)] for i in chosen]
    _assign_samples(patches, samples)
    return Plan(sources, patches, samples, grid=1, accounting=_accounting(patches, selection.n_clusters))


def _plan_images_over_parts(found: Duplicates, parts: PartStore, n_ok: int, n_samples: int, config: Config) -> Plan:
    """_plan_images for `random` by Ray tasks over the parts: the plan holds the chosen images
    and their sources only, in rank order (patches.parquet: the same bytes)."""
    chosen = image_selection.choose_images(parts, found, n_ok, n_samples, config)
    samples = [[i] for i in range(len(chosen.rows[C.PATCH_ID]))]
    _assign_samples(chosen.rows, samples)
    # No scores (random needs none): the pool's mean is None, as in memory.
    accounting = _accounting(chosen.rows, chosen.verdict.k)
    return Plan(chosen.sources, chosen.rows, samples, grid=1, accounting=accounting, labels=chosen)


def _plan_patches(sources, cands, n_samples: int, config: Config) -> Plan:
    """Patch selectors: M patches per output sample."""
    patches = {name: cands[name] for name in C.BARRIER_PATCH_COLUMNS if name != C.EMBEDDING}
    n = len(patches[C.PATCH_ID])
    # A duplicate source's patches were proposed before duplicates were known; they never compete.
    # By listing position, not id: the copy's patches carry its original's ids, and the original competes.
    eligible = ~np.isin(cands[C.INPUT_INDEX], list(_not_ok(sources)))
    cluster = np.full(n, -1, np.int32)
    rank = np.full(n, -1, np.int32)
    selected = np.zeros(n, bool)
    reason = np.where(eligible, "", schema.DROP_DUPLICATE_SOURCE).astype(object)
    idx = np.flatnonzero(eligible)
    # All eligible (no duplicate sources) is the common case: no copy of the embeddings then.
    embeddings = cands[C.EMBEDDING] if len(idx) == n else cands[C.EMBEDDING][idx]
    selection = select_patches(
        patch_ids=patches[C.PATCH_ID][idx],
        source_ids=patches[C.SOURCE_ID][idx],
        scores=patches[C.SCORE][idx],
        embeddings=embeddings,
        budget=config.mosaic * n_samples,
        config=config.select,
        method=config.selector,
        seed=config.seed,
    ) if len(idx) else None
    if selection is not None:
        cluster[idx], rank[idx], selected[idx], reason[idx] = (
            selection.cluster, selection.rank, selection.selected, selection.reason
        )
    patches.update(cluster=cluster, rank=rank, selected=selected, reason=reason)

    chosen = np.flatnonzero(selected)
    groups, leftover = group_patches(
        patches[C.SOURCE_ID][chosen], cluster[chosen], rank[chosen], config.mosaic, config.seed
    )
    for i in chosen[list(leftover)]:
        selected[i], reason[i] = False, schema.DROP_INCOMPLETE_GROUP
    samples = [[int(chosen[j]) for j in group] for group in groups]
    _assign_samples(patches, samples)
    accounting = _accounting(patches, selection.n_clusters if selection is not None else 0)
    accounting["pool_mean_entropy_nats"] = _mean(patches[C.SCORE][eligible])
    return Plan(sources, patches, samples, grid=config.grid, accounting=accounting)


def _plan_patches_over_parts(found: Duplicates, parts: PartStore, n_samples: int, config: Config) -> Plan:
    """_plan_patches by Ray tasks over the pass-1 parts: the plan holds the chosen rows and their
    sources only, the same rows, samples and accounting (patches.parquet: the same bytes)."""
    chosen = part_selection.choose_patches(parts, found, config.mosaic * n_samples, config)
    patches = chosen.rows
    n = len(patches[C.PATCH_ID])
    selected = np.ones(n, bool)
    reason = np.full(n, "", dtype=object)
    groups, leftover = group_patches(patches[C.SOURCE_ID], patches["cluster"], patches["rank"], config.mosaic, config.seed)
    selected[leftover], reason[leftover] = False, schema.DROP_INCOMPLETE_GROUP
    patches.update(selected=selected, reason=reason)
    _assign_samples(patches, groups)
    verdict = chosen.verdict
    accounting = _accounting(patches, verdict.k)
    pool = exact_mean.mean_of_sums([verdict.score_sum], verdict.n)[0] if verdict.n else None
    accounting["pool_mean_entropy_nats"] = float(pool) if pool is not None else None
    plan_rows = IdTable(patches[C.PATCH_ID], selected=selected, reason=reason, sample_key=patches["sample_key"], slot=patches["slot"])
    labels = part_selection.PatchLabels(chosen, plan_rows, config)
    return Plan(chosen.sources, patches, groups, grid=config.grid, accounting=accounting, labels=labels)


def _not_ok(sources) -> frozenset[int]:
    """The listing positions of the sources that are not ok after duplicates are marked: their
    rows never compete (a duplicate's part rows still say ok; only its position tells)."""
    return frozenset(sources[C.INPUT_INDEX][sources[C.STATUS] != schema.OK].tolist())


def _selection_columns(selection) -> dict[str, np.ndarray]:
    return {
        "cluster": selection.cluster,
        "rank": selection.rank,
        "selected": selection.selected,
        "reason": selection.reason,
    }


def _assign_samples(patches: dict, samples: list[list[int]]) -> None:
    n = len(patches["patch_id"])
    keys = np.full(n, "", dtype=object)
    slots = np.full(n, -1, np.int64)
    for rows in samples:
        key = sample_key([patches["patch_id"][i] for i in rows])
        for slot, i in enumerate(rows):
            keys[i], slots[i] = key, slot
    patches["sample_key"], patches["slot"] = keys, slots


def _accounting(patches: dict, n_clusters: int) -> dict:
    """V-information accounting: hardness (mean conditional entropy, nats/dim) of the pool vs
    the selection, and diversity of the selection over the proxy's clusters."""
    scores = patches["score"]
    sel = patches["selected"]
    out = {
        "pool_mean_entropy_nats": _mean(scores),
        "selected_mean_entropy_nats": _mean(scores[sel]),
    }
    if n_clusters:
        out.update(diversity_stats(patches["cluster"][sel], n_clusters))
    return out


def _mean(values: np.ndarray):
    """The exact mean of the finite scores (float32 values): the same bits in any order, so a
    selection over the parts, which sums each part apart, reports the same figure."""
    values = np.asarray(values, dtype=np.float32)
    values = values[np.isfinite(values)]
    return float(exact_mean.mean_of_sums(exact_mean.column_sums(values.reshape(-1, 1)), len(values))[0]) if len(values) else None
