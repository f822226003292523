"""The selection's plan, between pass 1 and pass 2: the duplicates found, the budget chosen by
the configured selector over the pass-1 parts (rows.py, engine.py), the chosen patches grouped
into mosaics (an image is a sample of its own), and every sample named. The plan holds the
chosen rows and their sources only; both manifests are written from the parts (write.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ...manifests import schema
from ...stages import columns as C
from ...stages import exact_mean
from ...stages.compose import group_patches, sample_key
from ..config import Config
from ..partitions import PartStore
from . import duplicates, rows
from .duplicates import Duplicates
from .embeddings import diversity_stats
from .selectors import selector

log = logging.getLogger("optidel")


@dataclass
class Plan:
    sources: dict[str, np.ndarray]  # the chosen rows' sources (C.SOURCE_COLUMNS): what pass 2 reads
    patches: dict[str, np.ndarray]  # the chosen rows' plan columns, with cluster, rank, selected, reason, sample_key, slot
    samples: list[list[int]]  # per output sample, its rows in slot order
    grid: int
    accounting: dict
    chosen: rows.Chosen  # for patches.parquet's labels of every row of the pool
    duplicates: Duplicates  # for sources.parquet
    by_status: dict[str, int] = field(default_factory=dict)  # the pool's sources, duplicates marked


def plan(store: PartStore, config: Config) -> Plan:
    """The plan by Ray tasks over the pass-1 parts: the driver reads no row of the pool."""
    found, by_status = duplicates.find(store, config)
    n_ok = by_status.get(schema.OK, 0)
    n_samples = config.budget(n_ok) if n_ok else 0
    entry = selector(config.selector)
    mosaics = entry.unit == "patch"
    chosen = rows.choose(store, found, entry, (config.mosaic if mosaics else 1) * n_samples, n_ok, config)
    patches = chosen.rows
    n = len(patches[C.PATCH_ID])
    selected, reason = np.ones(n, bool), np.full(n, "", dtype=object)
    if mosaics:
        samples, leftover = group_patches(patches[C.SOURCE_ID], patches["cluster"], patches["rank"], config.mosaic, config.seed)
        selected[leftover], reason[leftover] = False, schema.DROP_INCOMPLETE_GROUP
    else:  # one image a sample, in rank order, so that the output never depends on listing order
        patches = C.take(patches, np.argsort(patches["rank"], kind="stable"))
        samples = [[i] for i in range(n)]
    patches.update(selected=selected, reason=reason)
    _assign_samples(patches, samples)
    result = Plan(chosen.sources, patches, samples, grid=config.grid if mosaics else 1,
                  accounting=_accounting(patches, chosen.verdict), chosen=chosen, duplicates=found, by_status=by_status)
    result.accounting.update(n_ok=n_ok, samples_target=n_samples, samples=len(samples))
    if len(samples) < n_samples:
        log.warning(
            "shortfall: the pool gave %d samples of the %d asked for (keep=%s of %d ok sources)",
            len(samples), n_samples, config.keep, n_ok,
        )
    return result


def _assign_samples(patches: dict, samples: list[list[int]]) -> None:
    n = len(patches[C.PATCH_ID])
    keys, slots = np.full(n, "", dtype=object), np.full(n, -1, np.int64)
    for members in samples:
        key = sample_key([patches[C.PATCH_ID][i] for i in members])
        for slot, i in enumerate(members):
            keys[i], slots[i] = key, slot
    patches["sample_key"], patches["slot"] = keys, slots


def _accounting(patches: dict, verdict) -> dict:
    """V-information accounting: hardness (mean conditional entropy, nats/dim) of the pool vs
    the selection, and diversity of the selection over the proxy's clusters. Exact means: the
    same bits whatever the order the parts were summed in."""
    scored = verdict.score_sum is not None and verdict.n
    selected = np.asarray(patches[C.SCORE], dtype=np.float32)[patches["selected"]]
    selected = selected[np.isfinite(selected)]
    out = {
        "pool_mean_entropy_nats": float(exact_mean.mean_of_sums([verdict.score_sum], verdict.n)[0]) if scored else None,
        "selected_mean_entropy_nats": float(exact_mean.mean_of_sums(exact_mean.column_sums(selected.reshape(-1, 1)), len(selected))[0])
        if len(selected) else None,
    }
    if verdict.k:
        out.update(diversity_stats(patches["cluster"][patches["selected"]], verdict.k))
    return out
