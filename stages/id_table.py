"""Columns keyed by id, as arrays sorted by id: what the driver hands every task over the parts
when each needs the rows of its own parts alone (the selection's reasons, the chosen rows'
clusters, the plan's word on them).

A dict of the budget's ids, passed to every task, is unpickled whole by each: O(tasks x budget)
work and memory. Fixed-width numpy arrays reach a Ray task zero-copy from the object store, and
a task finds its rows in them by binary search: O(its rows x log budget).

Text (the ids, and any text column) is held as UTF-8 bytes of fixed width (numpy "S"), not as
numpy's unicode, which takes 4 bytes a character: the driver holds a table the size of the
budget (the plan's rows), so that is a quarter of the memory for ASCII ids. UTF-8 sorts in code
point order, so the ids sort and are searched as their text would be."""

from __future__ import annotations

import numpy as np


class IdTable:
    """Columns aligned with `ids` (unique), found by id."""

    def __init__(self, ids, **columns):
        ids = utf8(ids)  # fixed width: the longest id's
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        if len(ids) > 1 and (self.ids[1:] == self.ids[:-1]).any():
            raise ValueError("IdTable: an id occurs twice")
        self.columns = {name: self._checked(name, values)[order] for name, values in columns.items()}

    def add(self, **columns) -> None:
        """More columns, aligned with self.ids (in its order, not the order given at first)."""
        self.columns.update({name: self._checked(name, values) for name, values in columns.items()})

    def _checked(self, name: str, values) -> np.ndarray:
        values = _fixed(values)
        if len(values) != len(self.ids):
            raise ValueError(f"IdTable: column {name!r} has {len(values)} rows for {len(self.ids)} ids")
        return values

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, ids) -> np.ndarray:
        """Per id, its row here, or -1."""
        found = np.full(len(ids), -1, dtype=np.int64)
        if not len(self.ids) or not len(ids):
            return found
        asked = utf8(ids)
        # A longer id cannot be here; cast to this width it would be cut, and might match.
        fits = np.char.str_len(asked) <= self.ids.dtype.itemsize
        wanted = asked.astype(self.ids.dtype)
        at = np.searchsorted(self.ids, wanted).clip(max=len(self.ids) - 1)
        hit = fits & (self.ids[at] == wanted)
        found[hit] = at[hit]
        return found

    def column(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Column `name` at `rows` (positions find gave), text as Python strings (objects)."""
        values = self.columns[name][rows]
        return np.char.decode(values, "utf-8").astype(object) if values.dtype.kind == "S" else values

    def get(self, name: str, ids, default) -> np.ndarray:
        """Column `name` for `ids` (object values), `default` where an id is not here."""
        found = self.find(ids)
        out = np.full(len(found), default, dtype=object)
        out[found >= 0] = self.column(name, found[found >= 0]).tolist()
        return out


# Python strings (an object array) are encoded this many at a time: made numpy's unicode whole
# first, they would take 4 B a character of every row at once (the round-robin's reasons, 23 MB
# at 16M candidate patches), where their bytes take one.
_ENCODED_AT_ONCE = 65536


def utf8(text) -> np.ndarray:
    """Text as fixed-width UTF-8 bytes, the longest one's width (bytes already so: as they are)."""
    text = np.asarray(text)
    if text.dtype.kind == "S":
        return text
    if text.dtype.kind == "U" or len(text) <= _ENCODED_AT_ONCE:
        return np.char.encode(text.astype(str), "utf-8")
    # Pieces of other widths concatenate to the widest: the bytes a whole encoding gives.
    return np.concatenate([np.char.encode(text[i : i + _ENCODED_AT_ONCE].astype(str), "utf-8")
                           for i in range(0, len(text), _ENCODED_AT_ONCE)])


def _fixed(values) -> np.ndarray:
    """A column as a fixed-width array (text: utf8)."""
    values = np.asarray(values)
    return utf8(values) if values.dtype == object or values.dtype.kind == "U" else values
