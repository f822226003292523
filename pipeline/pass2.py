"""Pass 2: re-read only the sources that contributed a selected patch, cut the tiles, compose
and encode the mosaics (Ray tasks), and stream them in sample order into the shard writer."""

from __future__ import annotations

import math

import ray

from ..manifests import schema
from ..manifests.layout import Output
from ..stages import columns as C
from ..stages.compose import Compose
from ..stages.write import ShardWriter
from . import raydata
from .barrier import Plan
from .config import Config

# Samples per Ray task: enough to amortise the task, small enough to stream.
SAMPLES_PER_TASK = 16


def sample_rows(plan: Plan) -> list[dict]:
    """One row per output sample, slots in order, with where each slot's source bytes are."""
    src = plan.sources
    where = {sid: i for i, sid in enumerate(src[C.SOURCE_ID]) if src[C.STATUS][i] == schema.OK}
    p = plan.patches
    rows = []
    for members in plan.samples:
        s = [where[p["source_id"][i]] for i in members]
        rows.append(
            {
                "sample_key": p["sample_key"][members[0]],
                "patch_ids": [p["patch_id"][i] for i in members],
                "source_ids": [p["source_id"][i] for i in members],
                "uris": [src[C.URI][j] for j in s],
                "members": [src[C.MEMBER][j] for j in s],
                "offsets": [int(src[C.OFFSET][j]) for j in s],
                "lengths": [int(src[C.LENGTH][j]) for j in s],
                "boxes": [[int(p[c][i]) for c in C.BOX_COLUMNS] for i in members],
                "scores": [float(p["score"][i]) for i in members],
            }
        )
    return rows


def compose_and_write(plan: Plan, config: Config, output: Output) -> tuple[dict, list]:
    """Returns the samples.parquet columns and the shard records."""
    rows = sample_rows(plan)
    samples: dict[str, list] = {f.name: [] for f in schema.SAMPLES}
    # On an error the open shard's temporary file is dropped; finished shards stay.
    with ShardWriter(output, config.output.shard_max_count, config.output.shard_max_bytes) as writer:
        if rows:
            _stream(rows, plan, config, writer, samples)
        records = writer.close()
    return samples, records


def _stream(rows, plan: Plan, config: Config, writer: ShardWriter, samples: dict) -> None:
    """Compose on Ray in sample order (preserve_order), writing each sample as it arrives."""
    ctx = ray.data.DataContext.get_current()
    keep_order, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
    try:
        ds = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / SAMPLES_PER_TASK))
        ds = raydata.map_task(
            ds,
            Compose,
            {
                "config": config.output,
                "grid": plan.grid,
                "max_pixels": config.ingest.max_pixels,
                "min_side": config.ingest.min_side,
            },
            batch_size=SAMPLES_PER_TASK,
            config=config.ray,
        )
        by_key = {r["sample_key"]: r for r in rows}
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["sample_key"])):
                _write_one(writer, batch, i, by_key, plan.grid, config.output.format, samples)
    finally:
        ctx.execution_options.preserve_order = keep_order


def _write_one(writer, batch, i, by_key, grid, fmt, samples) -> None:
    key = batch["sample_key"][i]
    loc = writer.write(key, [(fmt, batch["image"][i]), ("json", batch["json"][i])])
    row = by_key[key]
    samples["sample_key"].append(key)
    samples["shard"].append(loc.shard)
    samples["index_in_shard"].append(loc.index_in_shard)
    samples["members"].append(list(loc.members))
    samples["image_sha256"].append(batch["image_sha256"][i])
    samples["image_bytes"].append(len(batch["image"][i]))
    samples["width"].append(int(batch["width"][i]))
    samples["height"].append(int(batch["height"][i]))
    samples["grid"].append(grid)
    samples["patch_ids"].append(row["patch_ids"])
    samples["source_ids"].append(row["source_ids"])
    samples["boxes"].append(row["boxes"])
    samples["slots"].append(list(range(len(row["patch_ids"]))))
    samples["scores"].append([s if math.isfinite(s) else None for s in row["scores"]])
