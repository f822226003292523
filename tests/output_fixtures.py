"""A small but real output directory for tests of verify, lineage and anything that reads OUT.

Built from real kvasir-seg images: each source gives one selected patch (the bounding box of
its polyp mask, with the mask as COCO RLE of its size) and one dropped whole-image candidate; every
grid*grid selected patches are cut with stages.crops.crop_resize into a JPEG mosaic. Shards
come from stages.write.ShardWriter and manifests from Output.write_manifest, so the directory
is exactly what the pipeline's last step produces, minus run.json. Scores are NaN (null):
there is no proxy model here.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from optidel.manifests import layout, schema
from optidel.stages import write
from optidel.stages.crops import crop_resize


@dataclass
class FixtureOutput:
    out: str
    records: list[write.ShardRecord]
    samples: list[dict]  # samples.parquet rows, in write order
    source_files: dict[str, Path]  # source_id -> image file


def _polyp_box(mask_file: Path, width: int, height: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
    mask = np.asarray(Image.open(mask_file).convert("L")) > 127
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, width, height), mask
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), mask


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_output(
    out_dir: str | Path,
    kvasir: Path,
    *,
    n_samples: int = 5,
    grid: int = 2,
    tile: int = 32,
    max_count: int = 3,
    max_bytes: int = 1 << 30,
    duplicates: int = 0,
) -> FixtureOutput:
    """Write OUT with n_samples mosaics of grid*grid kvasir polyps, max_count per shard; the
    first `duplicates` images are listed again, as byte-identical copies beside OUT (sources
    rows with status duplicate and the same source_id, as a run records them)."""
    m = grid * grid
    files = sorted((kvasir / "images").glob("*.jpg"))[: n_samples * m]
    output = layout.Output(str(out_dir))
    sources: dict[str, list] = {f.name: [] for f in schema.SOURCES}
    patches: dict[str, list] = {f.name: [] for f in schema.PATCHES}
    selected: list[tuple[str, str, tuple[int, int, int, int], np.ndarray]] = []  # patch_id, source_id, box, image
    mask_sizes: list[tuple[int, int]] = []  # (height, width) of each patch's source, the mask's size

    for i, path in enumerate(files):
        data = path.read_bytes()
        source_id = hashlib.sha256(data).hexdigest()
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        height, width = image.shape[:2]
        row = dict(input_index=i, source_id=source_id, uri=str(path), member=None, byte_size=len(data),
                   width=width, height=height, mode="RGB", format="JPEG", status=schema.OK, error=None,
                   duplicate_of=None)
        for name, column in sources.items():
            column.append(row.get(name))  # a column this fixture does not know stays null
        box, mask = _polyp_box(kvasir / "masks" / path.name, width, height)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
        for box_, rle_, is_polyp in ((box, rle, True), ((0, 0, width, height), "", False)):
            patch_id = hashlib.sha256(f"{source_id}|{box_}".encode()).hexdigest()[:16]
            patch = dict(patch_id=patch_id, source_id=source_id, x0=box_[0], y0=box_[1], x1=box_[2], y1=box_[3],
                         mask_area=int(mask.sum()) if is_polyp else -1, predicted_iou=float("nan"),
                         stability_score=float("nan"), mask_rle=rle_, score=float("nan"), cluster=-1, rank=-1,
                         selected=is_polyp, reason=None if is_polyp else schema.DROP_BUDGET, sample_key=None, slot=-1)
            for name, column in patches.items():
                column.append(patch.get(name))  # a column this fixture does not know stays null
            mask_sizes.append((height, width))
            if is_polyp:
                selected.append((patch_id, source_id, box_, image))

    copies = Path(out_dir).parent / "duplicates"
    for path in files[:duplicates]:
        copies.mkdir(exist_ok=True)
        copy = copies / path.name
        copy.write_bytes(path.read_bytes())
        original = sources["uri"].index(str(path))
        row = {name: column[original] for name, column in sources.items()}
        row.update(input_index=len(sources["uri"]), uri=str(copy), status=schema.DUPLICATE,
                   duplicate_of=row["source_id"])
        for name, column in sources.items():
            column.append(row[name])

    samples: dict[str, list] = {f.name: [] for f in schema.SAMPLES}
    rows: list[dict] = []
    with write.ShardWriter(output, max_count, max_bytes) as writer:
        for s in range(n_samples):
            group = selected[s * m : (s + 1) * m]
            patch_ids = [g[0] for g in group]
            key = hashlib.sha256("|".join(patch_ids).encode()).hexdigest()[:20]
            tiles = [crop_resize(g[3], g[2], tile) for g in group]
            mosaic = np.concatenate([np.concatenate(tiles[r * grid : (r + 1) * grid], axis=1) for r in range(grid)])
            jpg = _jpeg(mosaic)
            meta = {"sample_key": key, "patch_ids": patch_ids, "source_ids": [g[1] for g in group],
                    "boxes": [list(g[2]) for g in group], "slots": list(range(m))}
            loc = writer.write(key, [("jpg", jpg), ("json", write.sample_json(meta))])
            row = dict(sample_key=key, shard=loc.shard, index_in_shard=loc.index_in_shard, members=loc.members,
                       image_sha256=hashlib.sha256(jpg).hexdigest(), image_bytes=len(jpg), width=mosaic.shape[1],
                       height=mosaic.shape[0], grid=grid, patch_ids=patch_ids, source_ids=meta["source_ids"],
                       boxes=meta["boxes"], slots=meta["slots"], scores=[None] * m)
            rows.append(row)
            for name, value in row.items():
                samples[name].append(value)
            for slot, patch_id in enumerate(patch_ids):
                j = patches["patch_id"].index(patch_id)
                patches["sample_key"][j] = key
                patches["slot"][j] = slot
    records = writer.records

    output.write_manifest("sources", schema.to_table("sources", sources))
    patches["mask_rle"] = schema.mask_rle_array(patches["mask_rle"], *zip(*mask_sizes))
    output.write_manifest("patches", schema.to_table("patches", patches))
    output.write_manifest("samples", schema.to_table("samples", samples))
    output.write_manifest("shards", write.shards_table(records))
    source_files = {sid: Path(uri) for sid, uri, status in zip(sources["source_id"], sources["uri"], sources["status"])
                    if status == schema.OK}
    return FixtureOutput(str(out_dir), records, rows, source_files)
