"""The rows' sort keys, (primary, id) ascending: minus the score (hardest first) or a seeded hash of
the id (the draw), ties broken by id, so no order depends on how the pool was listed or split."""

from __future__ import annotations

import hashlib

import numpy as np

from optidel import seeding

from .selectors import Selector

Key = tuple  # (primary, id)
# The engine's names for a row's columns; a unit's loader (rows.py) maps them to its part's.
ID, SOURCE, SCORE, EMBEDDING = "id", "source", "score", "embedding"


def order_of(selector: Selector, seed: int):
    """The order rows are taken in, as `primary` reads it: "hardness", or ("draw", seed)."""
    return ("draw", seed) if selector.order == "draw" else "hardness"


def rank_order(selector: Selector, seed: int):
    """The order the `rank` column gives: hardness whenever the rows are scored (0 = hardest),
    otherwise the draw."""
    return "hardness" if selector.needs_scores else ("draw", seed)


def ids_of(rows: dict) -> np.ndarray:
    return np.asarray(rows[ID], dtype=object).astype(str)


def primary(rows: dict, ids: np.ndarray, by) -> np.ndarray:
    """The first sort key of each row: minus its score (checked finite), or for ("draw", seed)
    its seeded hash."""
    if by == "hardness":
        scores = np.asarray(rows[SCORE], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            raise ValueError(f"scores: non-finite score for {ids[bad[0]]!r} ({bad.size} rows)")
        return -scores
    _, seed = by
    return np.array([seeding.derive(seed, "draw", i) for i in ids.tolist()], dtype=np.uint64)


def part_keys(load, part, by) -> tuple[np.ndarray, np.ndarray]:
    """A part's (primary, id) keys in the `by` order, read from their columns alone."""
    rows = load(part, (ID, SCORE) if by == "hardness" else (ID,))
    ids = ids_of(rows)
    return primary(rows, ids, by), ids


def key_order(primary: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row indices sorted by (primary, id)."""
    by_id = np.argsort(ids, kind="stable")
    return by_id[np.argsort(primary[by_id], kind="stable")]


def split_by(values: np.ndarray, n: int) -> list[np.ndarray]:
    """The positions of each value 0..n-1 in `values` (ints in that range), each ascending, by one
    stable sort: np.unique's would add a sorted copy, an inverse and a mask."""
    order = np.argsort(values, kind="stable")
    return np.split(order, np.searchsorted(values[order], np.arange(1, n)))


def at_or_before(primary: np.ndarray, ids: np.ndarray, key: Key) -> np.ndarray:
    first, last_id = key
    return (primary < first) | ((primary == first) & (ids <= last_id))


def source_digests(groups: np.ndarray) -> np.ndarray:
    """The per-source cap's groups (text) as 16-byte digests (blake2b), fixed width: what the
    driver holds of them for every shortlisted row, in place of text of any length. Two groups
    share a digest by chance with probability about n^2 / 2^129 (1e-21 for 10^9 of them)."""
    digests = b"".join(hashlib.blake2b(str(group).encode(), digest_size=16).digest() for group in groups.tolist())
    return np.frombuffer(digests, dtype="S16").copy() if digests else np.zeros(0, "S16")
