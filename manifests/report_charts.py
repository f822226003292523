"""The audit report's charts, drawn with matplotlib into PNG bytes.

Each function returns None when the run has nothing to draw (the random selector scores and
clusters nothing), and the report says so in place of the chart. Figures are built with
`matplotlib.figure.Figure`, not pyplot: no global state and no GUI backend on headless hosts.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

POOL = "#9aa5b1"
SELECTION = "#1f6fb4"
SIZE = (6.0, 3.3)  # inches; at DPI, 600 x 330 px: two side by side on a laptop screen
DPI = 100
MAX_LABELLED_CLUSTERS = 16  # cluster ids that fit side by side under a 600-px chart


def score_histogram(pool: np.ndarray, selected: np.ndarray) -> bytes | None:
    """Pool vs selection score distributions on shared bins, each normalised to its own count
    so a selection of a few dozen patches is comparable with a pool of thousands."""
    if pool.size == 0:
        return None
    fig, ax = _figure()
    bins = np.histogram_bin_edges(pool, bins=min(40, max(5, int(math.sqrt(pool.size)))))
    ax.hist(pool, bins=bins, density=True, color=POOL, label=f"pool ({pool.size} patches)")
    if selected.size:
        ax.hist(selected, bins=bins, density=True, color=SELECTION, alpha=0.75, label=f"selection ({selected.size})")
    ax.set_xlabel("score: conditional entropy, nats per dimension")
    ax.set_ylabel("density")
    _legend(fig)
    return _png(fig)


def cluster_coverage(pool: np.ndarray, selected: np.ndarray) -> bytes | None:
    """Share of the pool vs share of the selection per cluster: a diverse selection covers
    every cluster, not only the pool's largest."""
    if pool.size == 0:
        return None
    k = int(max(pool.max(), selected.max() if selected.size else 0)) + 1
    pool_share = np.bincount(pool, minlength=k) / pool.size
    sel_share = np.bincount(selected, minlength=k) / max(selected.size, 1)
    fig, ax = _figure()
    x = np.arange(k)
    ax.bar(x - 0.2, pool_share, width=0.4, color=POOL, label=f"pool ({pool.size} patches)")
    ax.bar(x + 0.2, sel_share, width=0.4, color=SELECTION, label=f"selection ({selected.size})")
    covered = int((np.bincount(selected, minlength=k) > 0).sum())
    ax.set_title(f"{covered} of {k} clusters hold a selected patch", fontsize=10)
    ax.set_xlabel("cluster")
    ax.set_ylabel("share of patches")
    # One label per cluster only while they fit the axis; beyond that, integer ticks matplotlib spaces out.
    if k <= MAX_LABELLED_CLUSTERS:
        ax.set_xticks(x)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(fig)
    return _png(fig)


def patches_per_source(candidates: np.ndarray, selected: np.ndarray) -> bytes | None:
    """How many candidate patches each ok source gave, and how many selected patches each
    contributing source gave (the per-source cap bounds the latter)."""
    if candidates.size == 0:
        return None
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    left, right = fig.subplots(1, 2)
    _count_bars(left, candidates, POOL, f"candidates per ok source ({candidates.size} sources)")
    _count_bars(right, selected, SELECTION, f"selected per contributing source ({selected.size})")
    return _png(fig)


def v_information(accounting: dict) -> bytes | None:
    """run.json's V-information accounting: hardness (mean conditional entropy of pool vs
    selection) and diversity (entropy of the selection's cluster histogram vs its maximum)."""
    pool = accounting.get("pool_mean_entropy_nats")
    chosen = accounting.get("selected_mean_entropy_nats")
    entropy = accounting.get("entropy_nats")
    has_hardness = pool is not None and chosen is not None
    has_diversity = entropy is not None and accounting.get("clusters")
    if not (has_hardness or has_diversity):
        return None
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    left, right = fig.subplots(1, 2)
    if has_hardness:
        left.bar(["pool", "selection"], [pool, chosen], color=[POOL, SELECTION])
        left.set_title("hardness: mean H(Y|X)\n(nats per dimension)", fontsize=10)
        _value_labels(left, [pool, chosen])
    else:
        _empty(left, "no scores")
    if has_diversity:
        maximum = accounting.get("max_entropy_nats") or 0.0
        right.bar(["selection", "maximum ln k"], [entropy, maximum], color=[SELECTION, POOL])
        right.set_title(
            f"diversity: cluster entropy, nats\n({accounting.get('clusters_covered')} of {accounting['clusters']} clusters covered)",
            fontsize=10,
        )
        _value_labels(right, [entropy, maximum])
    else:
        _empty(right, "no clusters")
    return _png(fig)


def _figure():
    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    return fig, fig.subplots()


def _legend(fig: Figure) -> None:
    # Below the axes, not over the bars.
    fig.legend(loc="outside lower center", ncols=2, frameon=False)


def _count_bars(ax, counts: np.ndarray, colour: str, title: str) -> None:
    ax.set_title(title, fontsize=9)
    if counts.size == 0:
        _empty(ax, "none")
        return
    values = np.bincount(counts)
    ax.bar(np.arange(len(values)), values, color=colour)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("patches")
    ax.set_ylabel("sources")


def _value_labels(ax, values) -> None:
    for x, value in enumerate(values):
        ax.annotate(f"{value:.3f}", (x, value), ha="center", va="bottom", fontsize=9)
    ax.margins(y=0.15)


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_axis_off()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No Software/date metadata: the same run gives the same chart bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
