"""The report computes its curves in a forked child: answers, errors and a dying child come back."""

from __future__ import annotations

import os

import pytest

from backtest.errors import DataError
from backtest.report.html import _beside


def test_the_childs_answer_comes_back_from_another_process() -> None:
    wait = _beside(lambda: {"pid": os.getpid(), "data": list(range(5))})
    got = wait()
    assert got["data"] == [0, 1, 2, 3, 4] and got["pid"] != os.getpid()


def test_the_childs_error_is_raised_here() -> None:
    def fail() -> None:
        raise DataError("the bars changed")

    with pytest.raises(DataError, match="the bars changed"):
        _beside(fail)()


def test_a_child_that_dies_is_replaced_by_computing_here() -> None:
    parent = os.getpid()

    def die_in_the_child() -> int:
        if os.getpid() != parent:
            os._exit(9)
        return 42

    assert _beside(die_in_the_child)() == 42
