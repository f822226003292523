"""What the audit report shows, read from OUT's manifests and run.json (pyarrow + numpy only).

Counts come from the manifests, which are the record of what was written; run.json adds what
only the run knew (config, models, timings, V-information accounting) and may be missing, for
example when the run stopped before its end.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from optidel import seeding

from . import layout, schema

# patches.parquet columns the report needs; mask_rle (large) is read only by the lineage drawing.
PATCH_COLUMNS = ["patch_id", "source_id", "score", "cluster", "rank", "selected", "reason"]
SELECTED = "selected"  # the reasons table's row for patches that were kept

REASONS = {
    SELECTED: "kept: composed into an output sample",
    schema.DROP_BUDGET: "ranked below the budget",
    schema.DROP_DUPLICATE: "cosine-near a harder selected patch of its cluster",
    schema.DROP_QUOTA: "its cluster's quota was full",
    schema.DROP_SOURCE_CAP: "its source already gave the per-source maximum",
    schema.DROP_OUTLIER: "in the trimmed extreme top tail of scores (usually noise)",
    schema.DROP_DUPLICATE_SOURCE: "its source is a byte duplicate of another",
    schema.DROP_INCOMPLETE_GROUP: "left over after grouping into full mosaics",
}


class ReportError(ValueError):
    """OUT cannot be reported on (missing or foreign manifests, bad arguments); says which file."""


@dataclass
class RunFacts:
    out: str
    run: dict  # run.json's content; {} when missing
    run_note: str | None  # why run.json is missing or incomplete, else None
    sources: pa.Table  # sources.parquet
    patches: pa.Table  # patches.parquet, PATCH_COLUMNS only
    samples: list[dict]  # samples.parquet rows in output order (shard, index_in_shard)
    shards: pa.Table  # shards.parquet

    @property
    def seed(self) -> int:
        return int(self.run.get("seed") or 0)


def load(out: str) -> RunFacts:
    """Read OUT's manifests and run.json; ReportError naming the file when one is unusable."""
    output = layout.Output(out)
    samples = read_manifest(output, "samples").to_pylist()
    samples.sort(key=lambda s: (s["shard"], s["index_in_shard"]))
    run, note = _run_json(output)
    return RunFacts(
        out=out,
        run=run,
        run_note=note,
        sources=read_manifest(output, "sources"),
        patches=read_manifest(output, "patches", PATCH_COLUMNS),
        samples=samples,
        shards=read_manifest(output, "shards"),
    )


def read_manifest(output: layout.Output, name: str, columns: list[str] | None = None) -> pa.Table:
    try:
        return output.read_manifest(name, columns=columns)
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise ReportError(str(exc)) from exc


def _run_json(output: layout.Output) -> tuple[dict, str | None]:
    path = output.path(layout.RUN_JSON)
    if not output.fs.exists(path):
        return {}, f"{path} is missing: config, models, timings and V-information are not known"
    try:
        run = output.read_json(layout.RUN_JSON)
    except (OSError, json.JSONDecodeError) as exc:
        return {}, f"{path}: cannot read ({exc}): config, models, timings and V-information are not known"
    if run.get("status") != "complete":
        return run, f"{path}: run status is {run.get('status')!r}, not 'complete'"
    return run, None


def status_counts(sources: pa.Table) -> list[tuple[str, int]]:
    """(status, sources) in schema order, then any status this optidel does not know."""
    counts = {row["values"]: row["counts"] for row in pc.value_counts(sources["status"]).to_pylist()}
    known = [(s, counts.pop(s)) for s in schema.STATUSES if s in counts]
    return known + sorted(counts.items())


def reason_counts(patches: pa.Table) -> list[tuple[str, int]]:
    """(reason, patches): SELECTED first, then drop reasons by count (ties by name)."""
    dropped = patches.filter(pc.invert(patches["selected"]))["reason"]
    counts = [(row["values"] or "(none recorded)", row["counts"]) for row in pc.value_counts(dropped).to_pylist()]
    n_selected = patches.num_rows - len(dropped)
    return [(SELECTED, n_selected)] + sorted(counts, key=lambda kv: (-kv[1], kv[0]))


def bad_sources(sources: pa.Table) -> list[dict]:
    """Sources not ok, in input order: status, where, error; a duplicate also gets
    `duplicate_of_where`, the file (and tar member) of the source it repeats, which is what an
    auditor looks for, rather than that source's id."""
    bad = sources.filter(pc.not_equal(sources["status"], schema.OK)).sort_by("input_index").to_pylist()
    kept_ids = pa.array(sorted({s["duplicate_of"] for s in bad if s.get("duplicate_of")}), pa.string())
    # A source's id is its content hash, so the duplicates share it: the kept one is the one that is not a duplicate.
    kept = sources.filter(
        pc.and_(pc.is_in(sources["source_id"], kept_ids), pc.not_equal(sources["status"], schema.DUPLICATE))
    ).to_pylist()
    where = {s["source_id"]: schema.source_where(s) for s in kept}
    for source in bad:
        if source.get("duplicate_of"):
            source["duplicate_of_where"] = where.get(source["duplicate_of"], source["duplicate_of"])
    return bad


def finite(values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def in_pool(patches: pa.Table) -> np.ndarray:
    """The candidates the selection chose among: every patch but those of byte-duplicate
    sources, which were never eligible (the report counts them apart, so that both charts
    describe the same pool)."""
    reason = patches["reason"].fill_null("").to_numpy(zero_copy_only=False)
    return reason != schema.DROP_DUPLICATE_SOURCE


def scores(patches: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Finite scores of the pool's candidate patches and of the selected ones."""
    score = patches["score"].to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    selected = patches["selected"].to_numpy(zero_copy_only=False)
    return finite(score[in_pool(patches)]), finite(score[selected])


def clusters(patches: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels (nulls dropped) of the pool's candidate patches and of the selected ones."""
    cluster = patches["cluster"].fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    selected = patches["selected"].to_numpy(zero_copy_only=False)
    clustered = in_pool(patches) & (cluster >= 0)
    return cluster[clustered], cluster[selected & clustered]


def patches_per_source(facts: RunFacts) -> tuple[np.ndarray, np.ndarray]:
    """Candidate patches per ok source (zeros included), selected patches per contributing source."""
    per = facts.patches.group_by("source_id").aggregate([("selected", "count"), ("selected", "sum")])
    ok = facts.sources.filter(pc.equal(facts.sources["status"], schema.OK))["source_id"]
    row_of_ok = pc.index_in(ok, value_set=per["source_id"])
    candidates = pc.take(per["selected_count"], row_of_ok).fill_null(0)
    selected = per["selected_sum"].to_numpy(zero_copy_only=False)
    return candidates.to_numpy(zero_copy_only=False).astype(np.int64), selected[selected > 0].astype(np.int64)


@dataclass
class Shown:
    indices: list[int]  # positions in RunFacts.samples, in output order
    first: int  # how many are the first in output order
    random: int  # how many are a seeded random choice among the rest
    total: int
    seed: int  # of the random choice

    def describe(self) -> str:
        if self.random == 0:
            return f"all {self.total} samples, in output order"
        return (
            f"{len(self.indices)} of {self.total} samples: the first {self.first} in output order and "
            f"a seeded random {self.random} of the other {self.total - self.first} (seed {self.seed})"
        )


def choose_samples(keys: list[str], max_samples: int, seed: int) -> Shown:
    """All samples when they fit; else the first half of max_samples plus the rest drawn at
    random from the remainder. The draw ranks each key by a hash of (seed, key), so the same
    output shows the same samples however often the report is rebuilt."""
    if max_samples < 1:
        raise ReportError(f"max_samples must be at least 1, got {max_samples}")
    total = len(keys)
    if total <= max_samples:
        return Shown(list(range(total)), total, 0, total, seed)
    first = math.ceil(max_samples / 2)
    rest = sorted(range(first, total), key=lambda i: seeding.derive(seed, "report-sample", keys[i]))
    picked = sorted(rest[: max_samples - first])
    return Shown(list(range(first)) + picked, first, len(picked), total, seed)


def sample_views(facts: RunFacts, shown: Shown) -> dict[str, dict]:
    """Per shown sample, what its lineage view lists: the sample's place, each slot's patch
    (score, cluster, rank, box, source) and its sources in order of first use."""
    rows = [facts.samples[i] for i in shown.indices]
    wanted = {p for s in rows for p in s["patch_ids"]}
    patches = facts.patches.filter(pc.is_in(facts.patches["patch_id"], pa.array(sorted(wanted), pa.string())))
    by_patch = {p["patch_id"]: p for p in patches.to_pylist()}
    used = pa.array(sorted({i for s in rows for i in s["source_ids"]}), pa.string())
    by_source = {s["source_id"]: s for s in facts.sources.filter(pc.is_in(facts.sources["source_id"], used)).to_pylist()}
    views = {}
    for s in rows:
        slots = []
        for slot, patch_id, source_id, box, score in zip(
            s["slots"], s["patch_ids"], s["source_ids"], s["boxes"], s["scores"]
        ):
            p = by_patch.get(patch_id, {})
            slots.append({
                "slot": slot, "patch_id": patch_id, "source_id": source_id, "box": list(box),
                "score": _json_number(score), "cluster": p.get("cluster"), "rank": p.get("rank"),
            })
        sources = []
        for source_id in dict.fromkeys(s["source_ids"]):
            src = by_source.get(source_id, {})
            sources.append({
                "source_id": source_id, "uri": src.get("uri"), "member": src.get("member"),
                "width": src.get("width"), "height": src.get("height"),
            })
        views[s["sample_key"]] = {
            "shard": s["shard"], "index_in_shard": s["index_in_shard"], "grid": s["grid"],
            "width": s["width"], "height": s["height"], "slots": slots, "sources": sources,
        }
    return views


def _json_number(value):
    # JSON has no NaN: an unscored patch is null, shown as "-".
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value
