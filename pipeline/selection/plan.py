"""The selection's plan, between pass 1 and pass 2: the duplicates found, the budget chosen by
the configured selector over the pass-1 parts (rows.py, engine.py), the chosen patches grouped
into mosaics (an image is a sample of its own), and every sample named. The plan holds a few
fixed-width columns of the chosen rows and each sample's key; pass 2 reads the rest of them and
their sources from the parts (pass_two_rows), and both manifests are written from the parts
(write.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ...manifests import schema
from ...stages import columns as C
from ...stages import exact_mean
from ...stages.compose import group_patches, sample_key
from ...stages.id_table import IdTable, utf8
from .. import raydata
from ..config import Config
from ..partitions import PartStore
from . import duplicates, rows, spool
from .duplicates import Duplicates
from .embeddings import diversity_stats
from .keys import ID
from .selectors import selector

log = logging.getLogger("optidel")


@dataclass
class Plan:
    # The chosen rows by the engine's id (their patch ids; source ids for images): cluster, rank,
    # score, and the plan's selected, sample (its row of `samples`, -1: none) and slot. About
    # 41 B a row, all the driver holds of them; pass 2 reads the rest from the parts
    # (pass_two_rows). A chosen row not selected is one left over by the grouping into full
    # mosaics (schema.DROP_INCOMPLETE_GROUP): its reason is not held per row.
    patches: IdTable
    samples: np.ndarray  # per output sample (a row), its rows of `patches` in slot order
    sample_keys: np.ndarray  # per output sample, its key (UTF-8 bytes)
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
    chosen, keys = rows.choose(store, found, entry, (config.mosaic if mosaics else 1) * n_samples, n_ok, config)
    patches = IdTable(keys.pop(ID), **keys)
    del keys  # held by `patches` alone from here, in its order
    patch_ids, source_ids = (patches.columns.pop(name) for name in (C.PATCH_ID, C.SOURCE_ID))  # for the samples alone
    selected = np.ones(len(patches), bool)
    rank = patches.columns["rank"]
    if mosaics:
        samples, leftover = group_patches(source_ids, patches.columns["cluster"], rank, config.mosaic, config.seed)
        selected[leftover] = False
    else:  # one image a sample, in rank order, so that the output never depends on listing order
        samples = np.argsort(rank, kind="stable").reshape(-1, 1)
    sample_keys, sample, slots = _samples_named(patch_ids, samples)
    patches.add(selected=selected, sample=sample, slot=slots)
    result = Plan(patches, samples, sample_keys, grid=config.grid if mosaics else 1,
                  accounting=_accounting(patches, chosen.verdict), chosen=chosen, duplicates=found, by_status=by_status)
    result.accounting.update(n_ok=n_ok, samples_target=n_samples, samples=len(samples))
    raydata.freed_heap_to_the_os()  # the selection's working arrays, freed: before the manifests' peak
    if len(samples) < n_samples:
        log.warning(
            "shortfall: the pool gave %d samples of the %d asked for (keep=%s of %d ok sources)",
            len(samples), n_samples, config.keep, n_ok,
        )
    return result


def pass_two_rows(plan: Plan, config: Config) -> tuple[dict, dict]:
    """The chosen rows' plan columns (with cluster and rank), aligned with plan.patches, and their
    sources' rows (C.SOURCE_COLUMNS): what pass 2 reads, read again from the parts by tasks (the
    plan does not hold them)."""
    chosen, run = plan.chosen, partial(spool.run_through_files, output=plan.chosen.unit.store.output, config=config.ray)
    calls = [(chosen.unit, group, plan.patches, *chosen.ranks.of(g)) for g, group in enumerate(chosen.ranks.groups)]
    chosen_rows, sources = (C.concat(list(pieces)) for pieces in zip(*run(rows.chosen_rows, calls)))
    return C.take(chosen_rows, np.argsort(plan.patches.find(chosen_rows[chosen.unit.id_column]))), sources


def _samples_named(patch_ids: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each sample's key (from its patch ids in slot order), and each row's sample and slot (-1
    for a row in no sample). int32, as patches.parquet's slot: the driver holds them for every
    chosen row."""
    keys = [sample_key(np.char.decode(patch_ids[members], "utf-8").tolist()) for members in samples]
    sample, slots = np.full(len(patch_ids), -1, np.int32), np.full(len(patch_ids), -1, np.int32)
    for s, members in enumerate(samples):
        sample[members] = s
        slots[members] = np.arange(len(members))
    return utf8(np.asarray(keys, dtype=object)), sample, slots


def _accounting(patches: IdTable, verdict) -> dict:
    """V-information accounting: hardness (mean conditional entropy, nats/dim) of the pool vs
    the selection, and diversity of the selection over the proxy's clusters. Exact means: the
    same bits whatever the order the parts were summed in."""
    scored = verdict.score_sum is not None and verdict.n
    columns = patches.columns
    selected = np.asarray(columns[C.SCORE], dtype=np.float32)[columns["selected"]]
    selected = selected[np.isfinite(selected)]
    out = {
        "pool_mean_entropy_nats": float(exact_mean.mean_of_sums([verdict.score_sum], verdict.n)[0]) if scored else None,
        "selected_mean_entropy_nats": float(exact_mean.mean_of_sums(exact_mean.column_sums(selected.reshape(-1, 1)), len(selected))[0])
        if len(selected) else None,
    }
    if verdict.k:
        out.update(diversity_stats(columns["cluster"][columns["selected"]], verdict.k))
    return out
