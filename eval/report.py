"""The evaluation's outputs: results.json, a Markdown table (results.md) and a plot
(results.png, drawn with matplotlib's object API: no pyplot state, no GUI backend)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .artefacts import KINDS

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"


def write(out: str | Path, results: dict) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / RESULTS_JSON, (json.dumps(results, indent=2) + "\n").encode())
    _atomic(out / RESULTS_MD, markdown(results).encode())
    _atomic(out / RESULTS_PNG, plot(results))


def markdown(results: dict) -> str:
    """One row per arm: R, images seen, the probe's mIoU (primary) and the fine-tune's
    (secondary) as mean +- std, each arm's paired differences against random, full and scratch
    with their bootstrap 95% intervals, and NormDEL; then the positive control's verdict."""
    config = results["config"]
    split = results["split"]
    lines = [
        f"**{split} split**, pool: {results['pool']}",
        "",
        "| arm | R | images seen | probe mIoU | vs random | vs full | vs scratch "
        f"| fine-tune mIoU | fine-tune vs random | NormDEL (alpha={results['alpha']:g}) | seeds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, arm in results["arms"].items():
        r = "—" if arm["retained_fraction"] is None else f"{arm['retained_fraction']:.3f}"
        lines.append(
            f"| {name} | {r} | {arm['images_seen']} | {_pm(arm['miou_mean'], arm['miou_std'])} | "
            f"{_diff(arm.get('vs_random'))} | {_diff(arm.get('vs_full'))} | {_diff(arm.get('vs_scratch'))} | "
            f"{_pm(arm['finetune_miou_mean'], arm['finetune_miou_std'])} | {_diff(arm.get('finetune_vs_random'))} | "
            f"{_pm(arm['normdel_mean'], arm['normdel_std'])} | {len(arm['seeds'])} |"
        )
    control = results["positive_control"]
    if control["holds"] is None:
        verdict = f"Positive control not run ({control['note']}): no ranking of the arms is meaningful."
    elif control["holds"]:
        verdict = f"Positive control holds: full beats scratch by {_diff(control)}."
    else:
        verdict = (
            f"**Positive control fails**: full vs scratch is {_diff(control)}, an interval that does not "
            "exclude zero from below. Pre-training does not show at this scale: no ranking of the arms is meaningful."
        )
    labeled = results["labeled"]
    lines += [
        "",
        verdict,
        "",
        _headroom_verdict(results["headroom"]),
        "",
        "Differences are paired (same seed: same init, masks and data order), mean over seeds of the mIoU "
        "difference, [bootstrap 95% interval over seeds and held-out images].",
        f"{config['model']} MAE at {config['size']} px, {config['steps']} pre-training steps x "
        f"{config['batch_size']} images; probe: linear on frozen patch tokens, L-BFGS "
        f"{config['probe_iterations']} iterations, trained on {labeled['train']} train pairs; fine-tune: "
        f"{config['finetune_steps']} steps x {config['finetune_batch_size']} on {labeled['finetune_subset']}, "
        f"first {config['finetune_seeds']} seeds; {labeled['held_out']} {split} pairs ({labeled['split']}); "
        f"device {results['device']}; {results['seconds']:.0f} s.",
        "",
    ]
    table = composition_markdown(results)
    return "\n".join(lines) + ("\n" + table if table else "")


def composition_markdown(results: dict) -> str:
    """What each arm's selection contains on a dirty pool (composition.py): the clean share, each
    artefact family and kind, clip and frame coverage, the mean proxy score beside the pool's.
    Empty when no arm has a composition."""
    rows = {name: arm["composition"] for name, arm in results["arms"].items() if arm.get("composition")}
    if not rows:
        return ""
    pool = results["pool_composition"]
    versus = results.get("versus")
    head = ["arm", "unit", "patches", "clean [95% CI]", "clean vs random", *([f"clean vs {versus}"] if versus else []),
            "easy", "hard", *KINDS, "clips", "frames", "score (pool)"]
    lines = [
        f"**Composition** on the dirty pool ({results['pool']}): the share of "
        "selected patches by what they show (a patch missing a local artefact's mask is clean)",
        "",
        "| " + " | ".join(head) + " |",
        "| --- | --- |" + " ---: |" * (len(head) - 2),
        "| pool (distinct frames) | frame | " + f"{pool['frames']} | {pool['clean']:.3f} | "
        + "— | " * (2 if versus else 1)
        + " | ".join(f"{pool[k]:.3f}" for k in ("easy", "hard", *KINDS))
        + f" | {pool['clips']} | {pool['frames']} | — |",
    ]
    for name, c in rows.items():
        score = "—" if c["score"] is None else f"{c['score']:.4f} ({c['pool_score']:.4f})"
        low, high = c["clean_ci95"]
        lines.append(
            f"| {name} | {c['unit']} | {c['patches']} | {c['clean']:.3f} [{low:.3f}, {high:.3f}] | "
            f"{_diff(c.get('clean_vs_random'))} | "
            + (f"{_diff(c.get(f'clean_vs_{versus}'))} | " if versus else "")
            + " | ".join(f"{c[k]:.3f}" for k in ("easy", "hard", *KINDS))
            + f" | {c['clips']} | {c['frames']} | {score} |"
        )
    lines += [
        "",
        "Intervals: a bootstrap over the pool's clips, paired across arms (every arm's share over the same "
        "drawn clips); the selections themselves are deterministic.",
    ]
    return "\n".join(lines) + "\n"


def _headroom_verdict(headroom: dict) -> str:
    if headroom["holds"] is None:
        return f"Headroom not measured ({headroom['note']})."
    if headroom["holds"]:
        return (f"Headroom: full beats random by {_diff(headroom)}, so data limits pre-training here and a "
                "selection can beat random.")
    return (
        f"**No headroom**: full vs random is {_diff(headroom)}. A random subset pre-trains as well as the whole "
        "pool at this compute, so no selector is expected to beat random here; one can still lose to it by "
        "shifting what the encoder sees away from the downstream images."
    )


def plot(results: dict) -> bytes:
    """Left: the probe's mIoU per arm, a diamond at the mean, whiskers at +- std, one dot per
    seed (markers, not bars: the axis is zoomed to the spread). Right: each arm's paired
    difference against the first baseline present (random, full, scratch) with its bootstrap
    95% interval, which is what says whether an arm is better."""
    names = list(results["arms"])
    rows = [results["arms"][n] for n in names]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 1.3 * len(names) + 2), 3.4), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    means = [r["miou_mean"] for r in rows]
    stds = [r["miou_std"] or 0.0 for r in rows]
    left.errorbar(x, means, yerr=stds, fmt="D", color="#1f6fb4", capsize=5, markersize=7)
    for i, r in enumerate(rows):
        left.plot([i + 0.12] * len(r["miou"]), r["miou"], "o", color="black", markersize=3, alpha=0.7)
    low, high = min(min(r["miou"]) for r in rows), max(max(r["miou"]) for r in rows)
    pad = max(0.02, 0.5 * (high - low))
    left.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    left.set_ylabel(f"probe mIoU ({results['split']} split)")

    baseline = next((b for b in ("random", "full", "scratch") if b in results["arms"]), None)
    for i, r in enumerate(rows):
        versus = r.get(f"vs_{baseline}")
        if versus is not None:
            lo, hi = versus["ci95"]
            err = [[versus["diff"] - lo], [hi - versus["diff"]]]
            right.errorbar([i], [versus["diff"]], yerr=err, fmt="D", color="#1f6fb4", capsize=5, markersize=7)
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_ylabel(f"mIoU minus {baseline}, paired [95% CI]")
    for ax in (left, right):
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(x, names, rotation=20)
    config = results["config"]
    fig.suptitle(
        f"{config['model']} MAE, {config['size']} px, "
        f"{config['steps']} x {config['batch_size']} images pre-training per arm; "
        f"{results['split']}: {results['labeled']['held_out']} pairs",
        fontsize=9,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _diff(comparison: dict | None) -> str:
    if comparison is None:
        return "—"
    low, high = comparison["ci95"]
    return f"{comparison['diff']:+.4f} [{low:+.4f}, {high:+.4f}]"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
