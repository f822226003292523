"""The selectors, each a set of traits that the engine (engine.py) reads; it never reads a name.

OptiDEL maximises V-information I_V(X->Y) = H_V(Y|empty) - H_V(Y|X): hard patches (high
conditional entropy under the proxy) raise the second term, diverse ones the first. So `optidel`
takes the hardest patches under diversity constraints (cluster quotas, a near-duplicate rule
within each cluster, a per-source cap) once the hardest tail, noise more than signal, is
dropped; `hard` is the hardness-only baseline; `random` and `dedup` (SemDeDup, arXiv
2401.17542) the whole-image ones. The config, the CLI and the engine read SELECTORS: a new
selector is one register_selector call, here or in a plugin module, and runs at every scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Unit = Literal["patch", "image"]
# "draw": a seeded hash of each id, so a row keeps its place as the pool grows; "hardness": the
# proxy's score, hardest first; "window": hardness once the hardest select.trim_top_frac is dropped.
Order = Literal["draw", "hardness", "window"]


@dataclass(frozen=True)
class Selector:
    name: str
    unit: Unit  # what one row is: a candidate patch (M to a mosaic), or a whole source image
    order: Order  # the order rows are taken in
    clusters: bool  # k-means over the embeddings: the diversity accounting, and the quotas' groups
    quotas: bool  # clusters take turns (round-robin); otherwise the order alone
    near_duplicates: bool  # a row too close (select.near_duplicate_cosine) to a kept one of its cluster is refused
    per_source_cap: bool  # at most select.per_source_cap rows from one source

    @property
    def needs_scores(self) -> bool:
        """Whether pass 1 proposes and scores (the proxy's scores and embeddings); otherwise it
        only ingests."""
        return self.order != "draw" or self.clusters

    @property
    def head_is_choice(self) -> bool:
        """No rule between rows: the selection is the first `budget` rows of the order."""
        return not (self.quotas or self.near_duplicates or self.per_source_cap)


SELECTORS: dict[str, Selector] = {}


def register_selector(name: str, *, unit: Unit, order: Order, clusters: bool = False, quotas: bool = False,
                      near_duplicates: bool = False, per_source_cap: bool = False) -> Selector:
    if name in SELECTORS:
        raise ValueError(f"selector {name!r} is already registered")
    if quotas and not clusters or near_duplicates and not quotas:
        raise ValueError(f"selector {name!r}: quotas take turns over clusters, and the near-duplicate rule works within them")
    entry = Selector(name, unit, order, clusters, quotas, near_duplicates, per_source_cap)
    if unit == "patch" and not entry.needs_scores:
        raise ValueError(f"selector {name!r}: patches come from the scored pass; order them by hardness")
    SELECTORS[name] = entry
    return entry


def selector(name: str) -> Selector:
    try:
        return SELECTORS[name]
    except KeyError:
        raise ValueError(f"unknown selector {name!r}; expected one of {', '.join(SELECTORS)}") from None


register_selector("optidel", unit="patch", order="window", clusters=True, quotas=True, near_duplicates=True, per_source_cap=True)
# Clustered for the diversity accounting only: the two patch selectors report on the same footing.
register_selector("hard", unit="patch", order="hardness", clusters=True, per_source_cap=True)
register_selector("random", unit="image", order="draw")
register_selector("dedup", unit="image", order="draw", clusters=True, quotas=True, near_duplicates=True)
