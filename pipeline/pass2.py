"""Pass 2: re-read only the sources that contributed a selected patch, cut the tiles, compose
and encode the mosaics (Ray tasks), and stream them in sample order into the shard writer."""

from __future__ import annotations

import math

import numpy as np

from ..manifests import schema
from ..manifests.layout import Output
from ..stages import columns as C
from ..stages.compose import Compose
from ..stages.write import ShardWriter
from . import progress, raydata
from .selection.plan import Plan, pass_two_rows
from .config import Config
from .resume import RunError


def sample_rows(plan: Plan, config: Config) -> list[dict]:
    """One row per output sample, slots in order, with where each slot's source bytes are."""
    p, src = pass_two_rows(plan, config)
    where = {sid: i for i, sid in enumerate(src[C.SOURCE_ID]) if src[C.STATUS][i] == schema.OK}
    rows = []
    for key, members in zip(plan.sample_keys.tolist(), plan.samples.tolist()):
        s = [where[p["source_id"][i]] for i in members]
        rows.append(
            {
                "sample_key": key.decode(),
                "patch_ids": [p["patch_id"][i] for i in members],
                "source_ids": [p["source_id"][i] for i in members],
                "uris": [src[C.URI][j] for j in s],
                "members": [src[C.MEMBER][j] for j in s],
                "offsets": [int(src[C.OFFSET][j]) for j in s],
                "lengths": [int(src[C.LENGTH][j]) for j in s],
                "frame_times": [float(src[C.FRAME_TIME][j]) for j in s],
                "boxes": [[int(p[c][i]) for c in C.BOX_COLUMNS] for i in members],
                "scores": [float(p["score"][i]) for i in members],
            }
        )
    return rows


def compose_and_write(plan: Plan, config: Config, output: Output) -> tuple[dict, list]:
    """Returns the samples.parquet columns and the shard records."""
    rows = sample_rows(plan, config)
    samples: dict[str, list] = {f.name: [] for f in schema.SAMPLES}
    # On an error the open shard's temporary file is dropped; finished shards stay.
    with ShardWriter(output, config.output.shard_max_count, config.output.shard_max_bytes) as writer:
        if rows:
            _stream(rows, plan, config, writer, samples)
        records = writer.close()
    return samples, records


def _stream(rows, plan: Plan, config: Config, writer: ShardWriter, samples: dict) -> None:
    """Compose on Ray in sample order, writing each sample as it arrives."""
    compose = raydata.Step(
        Compose,
        {
            "config": config.output,
            "grid": plan.grid,
            "max_pixels": config.ingest.max_pixels,
            "min_side": config.ingest.min_side,
        },
    )
    by_key = {r["sample_key"]: r for r in rows}
    batches = raydata.stream(rows, [compose], config.ray, rows_per_block=Compose.execution.batch_size, in_order=True)
    shown = progress.StageProgress("pass 2", len(rows), "samples")
    try:
        for batch in batches:
            shown.add(len(batch["sample_key"]))
            for i in range(len(batch["sample_key"])):
                _write_one(writer, batch, i, by_key[batch["sample_key"][i]], plan.grid, config.output.format, samples)
    except raydata.StageFailure as exc:
        raise RunError(f"pass 2 stopped: {exc}") from exc


def _write_one(writer, batch, i, row, grid, fmt, samples) -> None:
    """Write sample i of a composed batch, and its samples.parquet row: the columns the schema
    says Compose fills come from its batch, the others from the shard writer and the plan."""
    key = batch["sample_key"][i]
    loc = writer.write(key, [(fmt, batch["image"][i]), ("json", batch["json"][i])])
    values = {
        "sample_key": key,
        "grid": grid,
        "patch_ids": row["patch_ids"],
        "source_ids": row["source_ids"],
        "boxes": row["boxes"],
        "slots": list(range(len(row["patch_ids"]))),
        "scores": [s if math.isfinite(s) else None for s in row["scores"]],
        "shard": loc.shard,
        "index_in_shard": loc.index_in_shard,
        "members": list(loc.members),
    }
    values.update((name, _plain(batch[name][i])) for name in schema.filled_by("samples", schema.COMPOSE))
    for name, column in samples.items():
        column.append(values[name])


def _plain(value):
    """A numpy scalar as its Python value, as the rest of the row is."""
    return value.item() if isinstance(value, np.generic) else value
