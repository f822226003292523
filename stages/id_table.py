"""Columns keyed by id, as arrays sorted by id: what the driver hands every task over the parts
when each needs the rows of its own parts alone (the selection's reasons, the chosen rows'
clusters, the plan's word on them).

A dict of the budget's ids, passed to every task, is unpickled whole by each: O(tasks x budget)
work and memory. Fixed-width numpy arrays reach a Ray task zero-copy from the object store, and
a task finds its rows in them by binary search: O(its rows x log budget)."""

from __future__ import annotations

import numpy as np


class IdTable:
    """Columns aligned with `ids` (unique), found by id."""

    def __init__(self, ids, **columns):
        ids = np.asarray(ids, dtype=str)  # fixed width: the longest id's
        order = np.argsort(ids, kind="stable")
        if len(ids) > 1 and (ids[order][1:] == ids[order][:-1]).any():
            raise ValueError("IdTable: an id occurs twice")
        columns = {name: _fixed(values) for name, values in columns.items()}
        for name, values in columns.items():
            if len(values) != len(ids):
                raise ValueError(f"IdTable: column {name!r} has {len(values)} rows for {len(ids)} ids")
        self.ids = ids[order]
        self.columns = {name: values[order] for name, values in columns.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, ids) -> np.ndarray:
        """Per id, its row here, or -1."""
        ids = np.asarray(ids, dtype=object)
        found = np.full(len(ids), -1, dtype=np.int64)
        if not len(self.ids) or not len(ids):
            return found
        width = self.ids.dtype.itemsize // np.dtype("U1").itemsize
        # A longer id cannot be here; cast to this width it would be cut, and might match.
        fits = np.fromiter((len(i) <= width for i in ids.tolist()), dtype=bool, count=len(ids))
        wanted = ids.astype(self.ids.dtype)
        at = np.searchsorted(self.ids, wanted).clip(max=len(self.ids) - 1)
        hit = fits & (self.ids[at] == wanted)
        found[hit] = at[hit]
        return found

    def get(self, name: str, ids, default) -> np.ndarray:
        """Column `name` for `ids` (object values), `default` where an id is not here."""
        found = self.find(ids)
        out = np.full(len(found), default, dtype=object)
        out[found >= 0] = self.columns[name][found[found >= 0]].tolist()
        return out


def _fixed(values) -> np.ndarray:
    """A column as a fixed-width array (strings: unicode of the longest one's width)."""
    values = np.asarray(values)
    return values.astype(str) if values.dtype == object else values
