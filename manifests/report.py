"""`optidel report OUT`: an HTML audit report a reviewer opens offline in any browser.

OUT/report/index.html shows the run at a glance (pool, statuses, outputs, keep ratio, models
with checkpoint hashes, time per stage), a contact sheet of the output mosaics (each opens its
lineage: `lineage.draw_lineage`'s drawing plus each patch's score, cluster and rank), charts,
the dropped-patch reasons and the bad sources. Images are files under OUT/report/. Large
outputs show a sample of the mosaics (see `report_data.choose_samples`) and say so.
No torch: auditors run this on laptops.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from optidel import imageio

from . import layout, lineage, report_charts, report_data, report_html
from .report_data import ReportError, RunFacts

__all__ = ["DEFAULT_MAX_SAMPLES", "REPORT_DIR", "ReportError", "build_report"]

log = logging.getLogger("optidel")

REPORT_DIR = "report"
DEFAULT_MAX_SAMPLES = 200  # mosaics on the contact sheet, each with a lineage drawing (~0.2 s, ~60 KB)
THUMB_SIDE = 128
JPEG_QUALITY = 85
LINEAGE_WORKERS = min(4, os.cpu_count() or 1)  # decoding and resizing release the GIL


def build_report(out: str, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int | None = None) -> str:
    """Write OUT/report/ (replacing an earlier report) and return the path of its index.html.
    seed picks the randomly shown samples of a large output; default: the run's seed."""
    facts = report_data.load(out)
    output = layout.Output(out)
    shown = report_data.choose_samples([s["sample_key"] for s in facts.samples], max_samples,
                                       facts.seed if seed is None else seed)
    log.info("report: %s", shown.describe())
    if output.exists(REPORT_DIR):
        output.fs.rm(output.path(REPORT_DIR), recursive=True)

    views = report_data.sample_views(facts, shown)
    thumbs = _write_thumbnails(output, facts, shown)
    failed = _write_lineage_images(output, views)
    charts = _write_charts(output, facts)
    notes = [facts.run_note] if facts.run_note else []
    shortfall = (facts.run.get("counts") or {}).get("shortfall")
    if shortfall:
        notes.append(f"shortfall: the pool gave {shortfall} samples fewer than the budget asked for")
    if failed:
        notes.append(f"{failed} of {len(views)} lineage drawings failed (sources moved or changed?); "
                     "their views list the reason")

    page = report_html.render(
        facts, shown, views, thumbs, charts,
        reasons=report_data.reason_counts(facts.patches),
        statuses=report_data.status_counts(facts.sources),
        bad=report_data.bad_sources(facts.sources),
        notes=notes,
    )
    output.write_bytes(f"{REPORT_DIR}/index.html", page.encode())
    index = output.path(REPORT_DIR, "index.html")
    log.info("report: %s", index)
    return index


def _write_thumbnails(output: layout.Output, facts: RunFacts, shown: report_data.Shown) -> dict[str, str | None]:
    """thumbs/KEY.jpg per shown sample, each shard streamed once; key -> relative path (None
    when its image member is missing from the shard)."""
    by_shard: dict[str, dict[str, dict]] = defaultdict(dict)
    for i in shown.indices:
        sample = facts.samples[i]
        images = [m for m in sample["members"] if m.rsplit(".", 1)[-1].lower() in lineage.IMAGE_EXTENSIONS]
        if images:
            by_shard[sample["shard"]][images[0]] = sample
    thumbs: dict[str, str | None] = {facts.samples[i]["sample_key"]: None for i in shown.indices}
    for shard, wanted in sorted(by_shard.items()):
        path = output.path(layout.SHARDS_DIR, shard)
        try:
            with output.fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
                for member in tar:
                    sample = wanted.get(member.name)
                    if sample is None:
                        continue
                    key = sample["sample_key"]
                    thumb = _thumbnail(tar.extractfile(member).read(), sample, f"{path}: {member.name}")
                    if thumb is not None:
                        relpath = f"thumbs/{key}.jpg"
                        output.write_bytes(f"{REPORT_DIR}/{relpath}", thumb)
                        thumbs[key] = relpath
        except (OSError, tarfile.TarError) as exc:
            log.warning("report: %s: cannot read shard: %s", path, exc)
    missing = sum(v is None for v in thumbs.values())
    if missing:
        log.warning("report: %d shown samples have no readable image in their shard", missing)
    return thumbs


def _thumbnail(data: bytes, sample: dict, where: str) -> bytes | None:
    decoded = imageio.decode(data, max_pixels=max(1, sample["width"] * sample["height"]), min_side=1)
    if decoded.image is None:
        log.warning("report: %s: cannot decode: %s", where, decoded.error)
        return None
    image = Image.fromarray(decoded.image)
    image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    return _jpeg(image)


def _write_lineage_images(output: layout.Output, views: dict[str, dict]) -> int:
    """lineage/KEY.jpg per shown sample via lineage.draw_lineage; sets each view's "image" and
    "error"; returns how many failed. A moved or changed source fails only its own view."""
    keys = list(views)

    def draw(key: str) -> tuple[str, bytes | None, str | None]:
        png = io.BytesIO()
        try:
            lineage.draw_lineage(output.url, key, png)
        except (OSError, ValueError, KeyError) as exc:
            return key, None, str(exc)
        return key, _jpeg(Image.open(png)), None

    failed = 0
    step = max(1, len(keys) // 10)
    with ThreadPoolExecutor(LINEAGE_WORKERS) as pool:
        for done, (key, jpeg, error) in enumerate(pool.map(draw, keys), start=1):
            views[key]["image"] = None
            views[key]["error"] = error
            if jpeg is None:
                failed += 1
                log.warning("report: lineage of sample %s not drawn: %s", key, error)
            else:
                relpath = f"lineage/{key}.jpg"
                output.write_bytes(f"{REPORT_DIR}/{relpath}", jpeg)
                views[key]["image"] = relpath
            if done % step == 0 or done == len(keys):
                log.info("report: lineage drawings %d/%d", done, len(keys))
    return failed


def _write_charts(output: layout.Output, facts: RunFacts) -> list[tuple[str, str, str | None, str]]:
    """(title, caption, relative path or None, note when not drawn) per chart."""
    pool_scores, selected_scores = report_data.scores(facts.patches)
    pool_clusters, selected_clusters = report_data.clusters(facts.patches)
    candidates, chosen = report_data.patches_per_source(facts)
    accounting = facts.run.get("v_information") or {}
    pool = report_data.in_pool(facts.patches)
    left_out = int((~pool).sum())
    pool_words = f" The pool is the {int(pool.sum()):,} candidate patches of distinct sources" + (
        f"; the {left_out:,} of byte-duplicate sources were never eligible (see Bad sources)." if left_out else "."
    )
    specs = [
        ("scores", "Score: pool vs selection",
         "Each candidate patch's conditional-entropy estimate under the proxy (a differential entropy, so it "
         "may be negative); the selection should sit to the right." + pool_words,
         lambda: report_charts.score_histogram(pool_scores, selected_scores),
         "no scores: this run's selector scores nothing (whole images picked at random)"),
        ("clusters", "Cluster coverage",
         "Share of the pool's and of the selection's patches in each k-means cluster of proxy embeddings." + pool_words,
         lambda: report_charts.cluster_coverage(pool_clusters, selected_clusters),
         "no clusters: this run's selector does not cluster"),
        ("per_source", "Patches per source",
         "Left: candidates each ok source gave. Right: selected patches each contributing source gave.",
         lambda: report_charts.patches_per_source(candidates, chosen),
         "no ok sources"),
        ("v_information", "V-information accounting",
         "run.json's accounting: harder (higher H(Y|X)) and more diverse (cluster entropy near ln k) selections raise V-information.",
         lambda: report_charts.v_information(accounting),
         "not recorded: run.json has no V-information values for this run"),
    ]
    charts = []
    for name, title, caption, draw, note in specs:
        png = draw()
        relpath = None
        if png is not None:
            relpath = f"charts/{name}.png"
            output.write_bytes(f"{REPORT_DIR}/{relpath}", png)
        charts.append((title, caption, relpath, note))
    return charts


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()

