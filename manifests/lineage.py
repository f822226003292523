"""`optidel inspect`: where one output sample's pixels came from.

`lineage` gathers the sample's manifest rows (sample, patches in slot order, sources in order
of first use); `format_lineage` prints them; `draw_lineage` renders the mosaic beside its
sources, each patch's box and mask outline drawn in its slot's colour. No torch: auditors run
this on laptops.
"""

from __future__ import annotations

import math
import posixpath
import tarfile

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from optidel import imageio

from . import layout, schema
from .masks import decode_mask
from .source_pixels import source_pixels

PANEL_HEIGHT = 256  # every panel (mosaic and sources) is scaled to this height
GAP = 8  # pixels around and between panels
CAPTION = 16  # strip above the panels for their names
CHAR_WIDTH = 6  # about one character of Pillow's default font; captions are cut to their panel
BACKGROUND = (32, 32, 32)
# One colour per slot (up to 16 = the largest mosaic), distinct on endoscopy reds and pinks.
SLOT_COLOURS = [
    (31, 119, 180), (44, 160, 44), (255, 187, 0), (148, 103, 189), (23, 190, 207), (255, 255, 255),
    (188, 189, 34), (127, 127, 127), (0, 0, 255), (0, 255, 0), (255, 127, 14), (174, 199, 232),
    (152, 223, 138), (197, 176, 213), (158, 218, 229), (0, 0, 0),
]
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def lineage(out: str, key: str) -> dict:
    """{"sample": samples.parquet row, "patches": patches.parquet rows in slot order,
    "sources": sources.parquet rows in order of first use}. KeyError for an unknown key."""
    output = layout.Output(out)
    samples = output.read_manifest("samples", filters=[("sample_key", "=", key)])
    if samples.num_rows == 0:
        raise KeyError(f"sample {key!r} not in {output.path(layout.manifest_relpath('samples'))}")
    sample = samples.to_pylist()[0]
    patch_ids = list(sample["patch_ids"])
    patches = output.read_manifest("patches", filters=[("patch_id", "in", patch_ids)]).to_pylist()
    patches = {r["patch_id"]: r for r in patches}
    source_ids = list(dict.fromkeys(sample["source_ids"]))
    sources = output.read_manifest("sources", filters=[("source_id", "in", source_ids)]).to_pylist()
    sources = {r["source_id"]: r for r in sources}
    return {
        "sample": sample,
        "patches": [patches[p] for p in patch_ids if p in patches],
        "sources": [sources[s] for s in source_ids if s in sources],
    }


def format_lineage(info: dict) -> str:
    """The CLI's text form of `lineage`'s result."""
    s = info["sample"]
    patches = {p["patch_id"]: p for p in info["patches"]}
    lines = [
        f"sample {s['sample_key']}: {s['shard']} #{s['index_in_shard']}, members {', '.join(s['members'])}",
        f"  image {s['width']}x{s['height']}, grid {s['grid']}, {s['image_bytes']} bytes, sha256 {s['image_sha256']}",
        "  slot  patch             score     cluster  rank  box (x0, y0, x1, y1)      source",
    ]
    for slot, patch_id, source_id, box, score in zip(
        s["slots"], s["patch_ids"], s["source_ids"], s["boxes"], s["scores"]
    ):
        p = patches.get(patch_id, {})
        lines.append(
            f"  {slot:<4}  {patch_id:<16}  {_number(score):<8}  {_number(p.get('cluster')):<7}  "
            f"{_number(p.get('rank')):<4}  {str(tuple(box)):<24}  {source_id[:16]}"
        )
    missing = [p for p in s["patch_ids"] if p not in patches]
    if missing:
        lines.append(f"  (not in patches.parquet: {', '.join(missing)})")
    lines.append("sources:")
    for src in info["sources"]:
        lines.append(f"  {src['source_id']}  {src['width']}x{src['height']}  {schema.source_where(src)}")
    return "\n".join(lines)


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def draw_lineage(out: str, key: str, png_path: str) -> list[tuple[int, int, int, int]]:
    """Write a PNG: the mosaic (tiles framed in their slot colours), then each source with its
    patches' boxes, mask outlines and "slot: score" labels, all scaled to PANEL_HEIGHT.
    Returns the panels' (x0, y0, x1, y1) on the canvas: the mosaic first, then the sources."""
    info = lineage(out, key)
    sample = info["sample"]
    output = layout.Output(out)
    where = f"{layout.SHARDS_DIR}/{sample['shard']}: sample {key}"
    mosaic = _decode(_mosaic_bytes(output, sample), where, sample["width"], sample["height"])
    sources = [(src, source_pixels(src)) for src in info["sources"]]

    images = [mosaic] + [img for _, img in sources]
    widths = [max(1, round(img.shape[1] * PANEL_HEIGHT / img.shape[0])) for img in images]
    size = (sum(widths) + GAP * (len(widths) + 1), PANEL_HEIGHT + CAPTION + 2 * GAP)
    canvas = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    panels, x = [], GAP
    for width in widths:
        panels.append((x, GAP + CAPTION, x + width, GAP + CAPTION + PANEL_HEIGHT))
        x += width + GAP
    captions = [f"sample {key}"] + [posixpath.basename(src["member"] or src["uri"]) for src, _ in sources]
    for (x0, y0, x1, y1), image, caption in zip(panels, images, captions):
        canvas.paste(Image.fromarray(image).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR), (x0, y0))
        draw.text((x0, GAP), caption[: max(1, (x1 - x0) // CHAR_WIDTH)], fill=(230, 230, 230), font=font)

    _draw_tiles(draw, font, panels[0], sample)
    patches = {p["patch_id"]: p for p in info["patches"]}
    for (src, image), panel in zip(sources, panels[1:]):
        _draw_patches(canvas, draw, font, panel, src, image.shape[:2], sample, patches)
    canvas.save(png_path, format="PNG")
    return panels


def _draw_tiles(draw: ImageDraw.ImageDraw, font, panel: tuple[int, int, int, int], sample: dict) -> None:
    x0, y0, x1, y1 = panel
    grid = sample["grid"]
    for slot in sample["slots"]:
        row, col = divmod(slot, grid)
        tx0, tx1 = x0 + (x1 - x0) * col // grid, x0 + (x1 - x0) * (col + 1) // grid
        ty0, ty1 = y0 + (y1 - y0) * row // grid, y0 + (y1 - y0) * (row + 1) // grid
        colour = SLOT_COLOURS[slot % len(SLOT_COLOURS)]
        draw.rectangle((tx0, ty0, tx1 - 1, ty1 - 1), outline=colour, width=2)
        _label(draw, font, (tx0 + 3, ty0 + 3), str(slot), colour)


def _draw_patches(canvas, draw, font, panel, src: dict, shape: tuple[int, int], sample: dict, patches: dict) -> None:
    x0, y0, x1, y1 = panel
    height, width = shape
    scale = (x1 - x0) / width, (y1 - y0) / height
    for slot, patch_id, source_id, box, score in zip(
        sample["slots"], sample["patch_ids"], sample["source_ids"], sample["boxes"], sample["scores"]
    ):
        if source_id != src["source_id"]:
            continue
        colour = SLOT_COLOURS[slot % len(SLOT_COLOURS)]
        patch = patches.get(patch_id)
        if patch and patch["mask_rle"]:
            mask = decode_mask(patch)
            if mask.shape != (height, width):
                raise ValueError(f"patch {patch_id}: mask is {mask.shape[1]}x{mask.shape[0]}, its source {width}x{height}")
            edges = Image.fromarray(mask.astype(np.uint8) * 255).resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST)
            canvas.paste(colour, (x0, y0, x1, y1), edges.filter(ImageFilter.FIND_EDGES))
        bx0, by0, bx1, by1 = box
        rect = (x0 + bx0 * scale[0], y0 + by0 * scale[1], x0 + bx1 * scale[0] - 1, y0 + by1 * scale[1] - 1)
        draw.rectangle(rect, outline=colour, width=2)
        _label(draw, font, (rect[0] + 3, rect[1] + 3), f"{slot}: {_number(score)}", colour)


def _label(draw: ImageDraw.ImageDraw, font, xy: tuple[float, float], text: str, colour: tuple[int, int, int]) -> None:
    # Dark backing box: labels sit on arbitrary image content.
    draw.rectangle(draw.textbbox(xy, text, font=font), fill=(0, 0, 0))
    draw.text(xy, text, fill=colour, font=font)


def _mosaic_bytes(output: layout.Output, sample: dict) -> bytes:
    """The sample's image member, streamed out of its shard."""
    images = [m for m in sample["members"] if m.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS]
    shard = f"{layout.SHARDS_DIR}/{sample['shard']}"
    if not images:
        raise ValueError(f"{shard}: sample {sample['sample_key']} lists no image member")
    with output.fs.open(output.path(shard), "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:
            if info.name == images[0]:
                return tar.extractfile(info).read()
    raise ValueError(f"{shard}: member {images[0]} not found")


def _decode(data: bytes, where: str, width: int, height: int) -> np.ndarray:
    decoded = imageio.decode(data, max_pixels=max(1, width * height), min_side=1)
    if decoded.image is None:
        raise ValueError(f"{where}: cannot decode: {decoded.status}: {decoded.error}")
    return decoded.image
