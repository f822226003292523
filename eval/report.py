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
    """One row per arm: R, images seen in pre-training, mIoU and NormDEL as mean +- std."""
    config = results["config"]
    lines = [
        f"| arm | R | images seen | mIoU (mean ± std) | NormDEL (mean ± std, alpha={results['alpha']:g}) | seeds |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, arm in results["arms"].items():
        r = "—" if arm["retained_fraction"] is None else f"{arm['retained_fraction']:.3f}"
        lines.append(
            f"| {name} | {r} | {arm['images_seen']} | {_pm(arm['miou_mean'], arm['miou_std'])} | "
            f"{_pm(arm['normdel_mean'], arm['normdel_std'])} | {len(arm['seeds'])} |"
        )
    labeled = results["labeled"]
    lines += [
        "",
        f"{config['model']} MAE at {config['size']} px, "
        f"{config['steps']} pre-training steps x {config['batch_size']} images, "
        f"{config['finetune_steps']} fine-tuning steps x {config['finetune_batch_size']}; {labeled['train']} train / "
        f"{labeled['test']} test pairs ({labeled['split']}); device {results['device']}; {results['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict) -> bytes:
    """mIoU and NormDEL per arm: a diamond at the mean, whiskers at +- std, one dot per seed.
    Markers, not bars, because the axis is zoomed to the spread of the values."""
    names = list(results["arms"])
    fig = Figure(figsize=(max(6.0, 1.3 * len(names) + 2), 3.4), dpi=100, layout="constrained")
    for ax, metric, label in zip(
        fig.subplots(1, 2), ("miou", "normdel"), ("mIoU (test split)", f"NormDEL (alpha={results['alpha']:g})")
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
        f"test: {results['labeled']['test']} pairs",
        fontsize=9,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
