"""Value types: `dispatches` builds the same values as the constructor."""

from __future__ import annotations

import pytest
from sbs.scheduler.core.types import Dispatch, dispatches


def test_dispatches_equal_constructed_ones() -> None:
    built = dispatches([7, 3, 9], 2, [0, 5, 1], [1, 0, 1], [4, 4, 0], "staggered")
    assert built == [
        Dispatch(7, 2, 0, 1, 4, "staggered"),
        Dispatch(3, 2, 5, 0, 4, "staggered"),
        Dispatch(9, 2, 1, 1, 0, "staggered"),
    ]
    assert [hash(d) for d in built] == [hash(Dispatch(*d)) for d in built]
    assert repr(built[0]) == repr(Dispatch(7, 2, 0, 1, 4, "staggered"))
    assert dispatches([], 0, [], [], [], "") == []


def test_dispatches_stay_frozen() -> None:
    d = dispatches([1], 0, [0], [0], [0], "bypass")[0]
    with pytest.raises(AttributeError):
        d.rid = 2  # type: ignore[misc]
    assert type(d) is Dispatch and d.priority is None and d.reason == "bypass"
