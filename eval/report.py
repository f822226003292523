"""The evaluation's outputs: results.json, a Markdown table (results.md) and a plot
(results.png, drawn with matplotlib's object API: no pyplot state, no GUI backend)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

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
    return "\n".join(lines)


def plot(results: dict) -> bytes:
    """mIoU and NormDEL per arm: a diamond at the mean, whiskers at +- std, one dot per seed.
    Markers, not bars, because the axis is zoomed to the spread of the values."""
    names = list(results["arms"])
    fig = Figure(figsize=(max(6.0, 1.3 * len(names) + 2), 3.4), dpi=100, layout="constrained")
    for ax, metric, label in zip(
        fig.subplots(1, 2), ("miou", "normdel"), (f"probe mIoU ({results['split']} split)", f"NormDEL (alpha={results['alpha']:g})")
    ):
        x = np.arange(len(names))
        rows = [results["arms"][n] for n in names]
        means = [np.nan if r[f"{metric}_mean"] is None else r[f"{metric}_mean"] for r in rows]
        stds = [0.0 if r[f"{metric}_std"] is None else r[f"{metric}_std"] for r in rows]
        ax.errorbar(x, means, yerr=stds, fmt="D", color="#1f6fb4", capsize=5, markersize=7)
        for i, r in enumerate(rows):
            if r[metric] is not None:
                ax.plot([i + 0.12] * len(r[metric]), r[metric], "o", color="black", markersize=3, alpha=0.7)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(x, names, rotation=20)
        ax.set_ylabel(label)
        if any(np.isfinite(means)):  # zoom to the differences, which are what the table is about
            low = min(min(r[metric]) for r in rows if r[metric] is not None)
            high = max(max(r[metric]) for r in rows if r[metric] is not None)
            pad = max(0.02, 0.5 * (high - low))
            ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
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
