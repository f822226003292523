"""IdTable (stages/id_table.py): columns found by id in sorted fixed-width arrays, as the tasks
over the parts look up the selection's and the plan's rows."""

from __future__ import annotations

import numpy as np
import pytest

from optidel.stages.id_table import IdTable


def test_finds_each_id_and_only_those_it_holds():
    ids = np.array(["p-b", "p-a", "p-ccc", "p-é"], dtype=object)
    table = IdTable(ids, reason=np.array(["", "duplicate", "", "source_cap"], dtype=object), slot=[3, -1, 0, 7])
    # "p-cc" and "p-cccc": a prefix of a held id, and one longer than every held id (which,
    # cut to the table's width, would read "p-ccc").
    asked = np.array(["p-é", "p-cc", "p-a", "p-cccc", "p-b", "p-ccc", "zz"], dtype=object)
    found = table.find(asked)
    assert (found >= 0).tolist() == [True, False, True, False, True, True, False]
    assert table.get("reason", asked, None).tolist() == ["source_cap", None, "duplicate", None, "", "", None]
    assert table.get("slot", asked, -9).tolist() == [7, -9, -1, -9, 3, 0, -9]
    assert all(type(v) is str for v in table.get("reason", ids, None).tolist())
    assert table.columns["slot"].dtype == np.int64  # numeric columns keep their type
    # Text is held as UTF-8 bytes, the longest's width ("p-ccc"; "p-é" is 4 bytes), not as
    # numpy's unicode of 4 bytes a character: the plan's rows are the size of the budget.
    assert table.ids.dtype == np.dtype("S5") and table.columns["reason"].dtype == np.dtype("S10")


def test_an_empty_table_finds_nothing_and_a_repeated_id_is_refused():
    assert IdTable([], reason=[]).find(np.array(["a"], dtype=object)).tolist() == [-1]
    assert len(IdTable(["a", "b"]).find(np.array([], dtype=object))) == 0
    with pytest.raises(ValueError, match="twice"):
        IdTable(["a", "b", "a"])
    with pytest.raises(ValueError, match="rows"):
        IdTable(["a", "b"], reason=[""])
