"""The audit report's one HTML page: inline CSS and a few lines of JavaScript, no external
resources, so it opens offline in any browser. Images are files beside it (thumbs/, lineage/,
charts/). Clicking a mosaic opens its lineage view, filled from a JSON block in the page;
`index.html#KEY` (a link or a typed address) opens one directly.
"""

from __future__ import annotations

import html
import json

import pyarrow.compute as pc

from .lineage import SLOT_COLOURS
from .report_data import REASONS, RunFacts, Shown
from .schema import source_where

# Said beside the reasons table and in every lineage view: the two figures auditors misread.
LEGEND = (
    "rank: a patch's place among all candidates by score, 0 = hardest. A patch ranked below the budget "
    "is still kept when harder ones were dropped by the cluster quotas, the near-duplicate rule or the "
    "per-source cap. score: the proxy's conditional entropy H(Y|X), a differential entropy in nats per "
    "dimension; negative values are normal and mean the patch is easy to reconstruct."
)
MAX_BAD_ROWS = 1000  # bad sources listed; the count above the table is always complete
# run.json stores timings with sorted keys; list them in the order the runner runs them.
STAGE_ORDER = ("list", "train_proxy", "pass1", "select", "pass2", "manifests")


def render(facts: RunFacts, shown: Shown, views: dict[str, dict], thumbs: dict[str, str | None],
           charts: list[tuple[str, str, str | None, str]], reasons: list[tuple[str, int]],
           statuses: list[tuple[str, int]], bad: list[dict], notes: list[str]) -> str:
    """The page. views: key -> sample_views entry plus "image" (relative path or None) and
    "error"; thumbs: key -> relative path or None; charts: (title, caption, path or None, note)."""
    run = facts.run
    body = [
        _header(facts),
        "".join(f'<p class="note">{_e(n)}</p>' for n in notes),
        _glance(facts, statuses),
        _contact_sheet(facts, shown, thumbs),
        _charts(charts, run.get("v_information") or {}),
        _reasons(reasons),
        _bad_sources(bad),
        _config(run),
    ]
    data = json.dumps(views).replace("</", "<\\/")
    colours = json.dumps([f"rgb{tuple(c)}" for c in SLOT_COLOURS])
    return PAGE.format(
        title=_e(f"optidel report: {facts.out}"),
        body="\n".join(body),
        data=data,
        script=SCRIPT.replace("__COLOURS__", colours),
        style=STYLE,
        legend=_e(LEGEND),
    )


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _table(headers: list[str], rows: list[list], classes: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    # Cells are already-escaped HTML strings.
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _header(facts: RunFacts) -> str:
    run = facts.run
    bits = [f"output <code>{_e(facts.out)}</code>"]
    if run.get("started"):
        bits.append(f"run {_e(run.get('started'))} &rarr; {_e(run.get('finished', '?'))}")
    if run.get("optidel_version"):
        bits.append(f"optidel {_e(run['optidel_version'])}")
    nav = "".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (("glance", "At a glance"), ("sheet", "Samples"), ("charts", "Charts"),
                     ("reasons", "Dropped patches"), ("bad", "Bad sources"), ("config", "Config"))
    )
    return f'<header><h1>optidel audit report</h1><p>{" &middot; ".join(bits)}</p><nav>{nav}</nav></header>'


def _glance(facts: RunFacts, statuses: list[tuple[str, int]]) -> str:
    run, config = facts.run, facts.run.get("config") or {}
    n_sources = facts.sources.num_rows
    n_ok = dict(statuses).get("ok", 0)
    n_samples = len(facts.samples)
    target = (run.get("counts") or {}).get("samples_target")
    shard_bytes = sum(facts.shards["bytes"].to_pylist())
    selected = pc.sum(facts.patches["selected"]).as_py() or 0
    mosaic = config.get("mosaic")
    cards = [
        ("pool", f"{n_sources:,}", f"sources, {n_ok:,} ok"),
        ("outputs", f"{n_samples:,}", (f"of {target:,} asked for, " if target is not None else "")
         + f"in {facts.shards.num_rows} shard{'' if facts.shards.num_rows == 1 else 's'} ({shard_bytes / 1e6:.1f} MB)"),
        ("keep ratio", f"{n_samples / n_ok:.2%}" if n_ok else "-",
         f"samples per ok source (keep = {config['keep']})" if "keep" in config else "samples per ok source"),
        ("patches", f"{selected:,}", f"selected of {facts.patches.num_rows:,} candidates"),
        ("selector", _e(config.get("selector", "?")), f"mosaic {mosaic}, seed {run.get('seed', '?')}"
         if mosaic else "config unknown"),
    ]
    cards_html = "".join(
        f'<div class="card"><div class="label">{_e(label)}</div><div class="big">{big}</div>'
        f'<div class="small">{_e(small)}</div></div>'
        for label, big, small in cards
    )
    status_rows = [[_e(s), _num(n), f"{n / max(n_sources, 1):.1%}"] for s, n in statuses]
    recorded = run.get("timings_s") or {}
    order = [s for s in STAGE_ORDER if s in recorded] + sorted(set(recorded) - set(STAGE_ORDER))
    timings = {stage: recorded[stage] for stage in order}
    longest = max(timings.values(), default=0) or 1
    timing_rows = [
        [_e(stage), f"{seconds:.1f} s", f'<span class="bar" style="width:{100 * seconds / longest:.0f}%"></span>']
        for stage, seconds in timings.items()
    ]
    if timings:
        timing_rows.append(["<b>total</b>", f"<b>{sum(timings.values()):.1f} s</b>", ""])
    resumed = _resumed(run.get("reused") or {})
    return (
        '<section id="glance"><h2>The run at a glance</h2>'
        f'<div class="cards">{cards_html}</div><div class="cols">'
        f'<div><h3>Sources by status</h3>{_table(["status", "sources", "share"], status_rows, "num")}</div>'
        f'<div><h3>Time per stage</h3>{_table(["stage", "time", ""], timing_rows, "timing") if timings else "<p>not recorded</p>"}'
        f'{resumed}</div>'
        f'</div><h3>Models</h3>{_models(run)}</section>'
    )


def _resumed(reused: dict) -> str:
    """What a resumed run took over from its earlier attempt (run.json "reused")."""
    parts = reused.get("pass1_partitions_reused") or 0
    bits = [f"{parts} of {reused.get('pass1_partitions', '?')} pass-1 partitions"] if parts else []
    if reused.get("proxy"):
        bits.append("the self-trained proxy")
    if not bits:
        return ""
    return f'<p class="small">Resumed: reused {" and ".join(bits)} from an earlier attempt; their time is not counted here.</p>'


def _models(run: dict) -> str:
    models = run.get("models")
    if models is None:
        return "<p>not recorded (run.json missing)</p>"
    if not models:
        return "<p>none: this selector reads whole images and scores nothing</p>"
    rows = []
    proposer = models.get("proposer")
    if proposer:
        rows.append(["proposer", _e(proposer.get("name")), _e(proposer.get("model") or "-"),
                     _e(proposer.get("checkpoint") or "none (no weights)"),
                     f"<code>{_e(proposer.get('checkpoint_sha256') or '-')}</code>"])
    proxy = models.get("proxy")
    if proxy:
        spec = proxy.get("spec") or {}
        trained = proxy.get("trained_on_crops")
        what = "MAE " + ", ".join(f"{k} {v}" for k, v in spec.items() if k in ("image_size", "patch_size", "embed_dim", "depth"))
        if trained is not None:
            what += f"; self-trained on {trained:,} crops"
        rows.append(["proxy", "MAE", _e(what), _e(proxy.get("path")), f"<code>{_e(proxy.get('sha256'))}</code>"])
    return _table(["role", "name", "model", "checkpoint", "sha256"], rows)


def _contact_sheet(facts: RunFacts, shown: Shown, thumbs: dict[str, str | None]) -> str:
    items = []
    for i in shown.indices:
        key = facts.samples[i]["sample_key"]
        thumb = thumbs.get(key)
        picture = f'<img src="{_e(thumb)}" alt="sample {_e(key)}" loading="lazy">' if thumb else '<span class="missing">no image</span>'
        items.append(f'<a class="thumb" href="#{_e(key)}" data-key="{_e(key)}" title="sample {_e(key)}">{picture}<span>{_e(key[:10])}</span></a>')
    more = "" if shown.random == 0 else (
        f' Run <code>optidel report {_e(facts.out)} --max-samples {shown.total}</code> to show every sample.'
    )
    return (
        '<section id="sheet"><h2>Output samples</h2>'
        f'<p>Showing {_e(shown.describe())}.{more} Click a mosaic for its lineage.</p>'
        f'<div class="sheet">{"".join(items) or "<p>no samples were written</p>"}</div></section>'
    )


def _charts(charts: list[tuple[str, str, str | None, str]], accounting: dict) -> str:
    figures = []
    for title, caption, path, note in charts:
        inner = f'<img src="{_e(path)}" alt="{_e(title)}">' if path else f'<p class="empty">{_e(note)}</p>'
        figures.append(f"<figure><h3>{_e(title)}</h3>{inner}<figcaption>{_e(caption)}</figcaption></figure>")
    rows = [[_e(k), _num(v)] for k, v in sorted(accounting.items())]
    numbers = _table(["V-information accounting (run.json)", "value"], rows, "num") if rows else ""
    return f'<section id="charts"><h2>Charts</h2><div class="charts">{"".join(figures)}</div>{numbers}</section>'


def _reasons(reasons: list[tuple[str, int]]) -> str:
    total = sum(n for _, n in reasons) or 1
    rows = [[_e(r), _num(n), f"{n / total:.1%}", _e(REASONS.get(r, ""))] for r, n in reasons]
    return (
        '<section id="reasons"><h2>Candidate patches: kept and dropped</h2>'
        f'{_table(["reason", "patches", "share", "meaning"], rows, "num")}<p class="small">{_e(LEGEND)}</p></section>'
    )


def _bad_sources(bad: list[dict]) -> str:
    if not bad:
        return '<section id="bad"><h2>Bad sources</h2><p>none: every listed source was read and kept in the pool</p></section>'
    rows = []
    for src in bad[:MAX_BAD_ROWS]:
        why = src.get("error") or (f"same bytes as {src['duplicate_of_where']}" if src.get("duplicate_of") else "")
        rows.append([_e(src["status"]), f"<code>{_e(source_where(src))}</code>", _e(why)])
    shown = f" (the first {MAX_BAD_ROWS} in input order)" if len(bad) > MAX_BAD_ROWS else ""
    left_out = "1 source was" if len(bad) == 1 else f"{len(bad):,} sources were"
    return (
        f'<section id="bad"><h2>Bad sources</h2><p>{left_out} left out of the pool{shown}.</p>'
        f'{_table(["status", "source", "reason"], rows, "bad")}</section>'
    )


def _config(run: dict) -> str:
    config = run.get("config")
    if not config:
        return ""
    text = json.dumps({"inputs": run.get("inputs"), "config": config, "versions": run.get("versions")}, indent=2)
    return f'<section id="config"><details><summary>Resolved config, inputs, versions</summary><pre>{_e(text)}</pre></details></section>'


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{style}</style></head>
<body>
{body}
<div id="overlay" hidden><div id="lineage" role="dialog" aria-modal="true">
<button id="close" title="close (Esc)">&times;</button>
<h2 id="lineage-title"></h2><p id="lineage-where"></p>
<p id="lineage-error" class="note" hidden></p>
<img id="lineage-img" alt="mosaic beside its sources">
<p class="small">The mosaic (left) beside its sources; each patch's box and mask outline are drawn in its slot's colour, labelled "slot: score".</p>
<h3>Patches</h3><p class="small">{legend}</p><table><thead><tr><th>slot</th><th>patch</th><th>score</th><th>cluster</th><th>rank</th><th>box (x0, y0, x1, y1)</th><th>source</th></tr></thead><tbody id="lineage-patches"></tbody></table>
<h3>Sources</h3><table><thead><tr><th>source id</th><th>file</th><th>size</th></tr></thead><tbody id="lineage-sources"></tbody></table>
</div></div>
<script type="application/json" id="lineage-data">{data}</script>
<script>{script}</script>
</body></html>
"""

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2329;background:#f4f6f8}
header{background:#1d2329;color:#eef1f4;padding:14px 24px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0 0 8px;color:#b8c2cc}header nav a{color:#8fc3ff;margin-right:16px;text-decoration:none}
section{background:#fff;margin:16px 24px;padding:12px 20px;border-radius:6px;box-shadow:0 1px 3px #0002}
h2{font-size:18px;margin:4px 0 10px}h3{font-size:14px;margin:12px 0 6px}
code{font:12px ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:6px 10px;margin:8px 24px}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{background:#f0f4f8;border-radius:6px;padding:8px 14px;min-width:150px}
.card .label{color:#5b6875;text-transform:uppercase;font-size:11px}.card .big{font-size:24px;font-weight:600}
.card .small,.small{color:#5b6875;font-size:12px}
.cols{display:flex;flex-wrap:wrap;gap:40px}
table{border-collapse:collapse;margin:4px 0 8px}th,td{padding:3px 10px;text-align:left;border-bottom:1px solid #e3e8ed;vertical-align:top}
th{background:#f0f4f8;font-weight:600}table.num td:nth-child(2),table.num td:nth-child(3){text-align:right}
table.timing td:nth-child(3){width:160px}.bar{display:inline-block;height:10px;background:#1f6fb4;border-radius:2px}
.sheet{display:flex;flex-wrap:wrap;gap:8px}
.thumb{display:flex;flex-direction:column;align-items:center;text-decoration:none;color:#5b6875;font:11px ui-monospace,monospace;border:2px solid transparent;border-radius:4px;padding:2px}
.thumb:hover{border-color:#1f6fb4}.thumb img{width:112px;height:112px;object-fit:contain;background:#222}
.missing{display:block;width:112px;height:112px;background:#ddd}
.charts{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0}figure img{max-width:100%;border:1px solid #e3e8ed}
figcaption{color:#5b6875;font-size:12px;max-width:600px}.empty{width:600px;padding:60px 0;text-align:center;background:#f0f4f8;color:#5b6875}
table.bad td:nth-child(2){max-width:700px}pre{font-size:12px;overflow:auto;max-height:400px}
#overlay{position:fixed;inset:0;background:#000a;display:flex;align-items:flex-start;justify-content:center;overflow:auto;z-index:10}
#overlay[hidden]{display:none}
#lineage{background:#fff;margin:24px;padding:14px 20px;border-radius:6px;max-width:96vw;position:relative}
#lineage-img{max-width:100%;display:block;background:#202020}#lineage-img[hidden]{display:none}
#close{position:absolute;right:10px;top:6px;font-size:24px;border:0;background:none;cursor:pointer}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:middle;border:1px solid #0004}
"""

SCRIPT = """
const DATA = JSON.parse(document.getElementById('lineage-data').textContent);
const COLOURS = __COLOURS__;
const overlay = document.getElementById('overlay');
function cell(row, text, code) {
  const td = row.insertCell();
  const el = code ? document.createElement('code') : td;
  el.textContent = (text === null || text === undefined) ? '-' : String(text);
  if (code) td.appendChild(el);
  return td;
}
function openLineage(key) {
  const s = DATA[key];
  if (!s) return false;
  document.getElementById('lineage-title').textContent = 'sample ' + key;
  document.getElementById('lineage-where').textContent =
    s.shard + ' #' + s.index_in_shard + ', ' + s.width + 'x' + s.height + ' px, grid ' + s.grid + 'x' + s.grid;
  const img = document.getElementById('lineage-img');
  img.hidden = !s.image;
  if (s.image) img.src = s.image;
  const err = document.getElementById('lineage-error');
  err.hidden = !s.error;
  err.textContent = s.error ? 'lineage image not drawn: ' + s.error : '';
  const patches = document.getElementById('lineage-patches');
  patches.replaceChildren();
  for (const p of s.slots) {
    const row = patches.insertRow();
    const td = cell(row, p.slot);
    const sw = document.createElement('span');
    sw.className = 'swatch';
    sw.style.background = COLOURS[p.slot % COLOURS.length];
    td.prepend(sw);
    cell(row, p.patch_id, true);
    cell(row, p.score === null ? null : p.score.toFixed(4));
    cell(row, p.cluster); cell(row, p.rank);
    cell(row, '(' + p.box.join(', ') + ')');
    cell(row, p.source_id, true);
  }
  const sources = document.getElementById('lineage-sources');
  sources.replaceChildren();
  for (const src of s.sources) {
    const row = sources.insertRow();
    cell(row, src.source_id, true);
    cell(row, src.uri === null ? null : src.uri + (src.member ? ' :: ' + src.member : ''), true);
    cell(row, src.width === null ? null : src.width + 'x' + src.height);
  }
  overlay.hidden = false;
  overlay.scrollTop = 0;
  return true;
}
function closeLineage() {
  overlay.hidden = true;
  history.replaceState(null, '', location.pathname + location.search);
}
document.querySelectorAll('a.thumb').forEach(a => a.addEventListener('click', e => {
  e.preventDefault();
  if (openLineage(a.dataset.key)) history.replaceState(null, '', '#' + a.dataset.key);
}));
document.getElementById('close').addEventListener('click', closeLineage);
overlay.addEventListener('click', e => { if (e.target === overlay) closeLineage(); });
document.addEventListener('keydown', e => { if (e.key === 'Escape' && !overlay.hidden) closeLineage(); });
function openFromHash() {
  if (location.hash.length > 1) openLineage(decodeURIComponent(location.hash.slice(1)));
}
window.addEventListener('hashchange', openFromHash);
openFromHash();
"""
