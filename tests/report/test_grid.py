"""The metric over the parameter grid: medians across symbols, other parameters held at the best set's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from backtest.errors import UsageError
from backtest.report.grid import axes, surface


def rec(symbol: str, metric: float | None, status: str = "done", **params: Any) -> dict[str, Any]:
    key = f"{symbol}-" + "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    return {"key": key, "symbol": symbol, "params": params, "status": status,
            "metrics": {"sharpe": metric} if status == "done" else {}}


def grid() -> list[dict[str, Any]]:
    out = []
    for s, bump in (("AAA", 0.0), ("BBB", 1.0), ("CCC", 10.0)):
        for fast in (5, 10):
            for slow in (20, 50, 100):
                for short in (False, True):
                    out.append(rec(s, fast + slow / 10 + bump + (100 if short else 0), fast=fast, slow=slow, short=short))
    return out


def test_median_across_symbols_with_the_other_parameter_held_at_the_best_sets() -> None:
    records = grid()
    best = {"fast": 10, "slow": 100, "short": True}
    s = surface(records, "sharpe", "fast", "slow", best)
    assert s.xs == [5, 10] and s.ys == [20, 50, 100]
    assert s.fixed == {"short": True}
    # median of bumps 0, 1, 10 is 1; short=True adds 100
    assert s.median[0, 0] == pytest.approx(5 + 2 + 1 + 100)
    assert s.median[2, 1] == pytest.approx(10 + 10 + 1 + 100)
    assert set(s.per_symbol) == {"AAA", "BBB", "CCC"}
    assert s.per_symbol["CCC"][1, 0] == pytest.approx(5 + 5 + 10 + 100)
    # each cell names the task that made it
    assert s.keys["CCC"][1, 0] == "CCC-fast5-shortTrue-slow50"


def test_missing_and_failed_cells_are_nan_not_zero() -> None:
    records = [r for r in grid() if not (r["params"]["fast"] == 5 and r["params"]["slow"] == 20)]
    records.append(rec("AAA", None, status="failed", fast=5, slow=20, short=False))
    s = surface(records, "sharpe", "fast", "slow", {"short": False})
    assert np.isnan(s.median[0, 0]) and np.isfinite(s.median[0, 1])
    assert s.keys["AAA"][0, 0] == "" and s.keys["AAA"][0, 1] == "AAA-fast10-shortFalse-slow20"


def test_one_varying_parameter_gives_a_line() -> None:
    records = [rec("AAA", float(n), n=n, k=1) for n in (1, 2, 3)]
    x, y = axes(records, None, None)
    assert (x, y) == ("n", None)
    s = surface(records, "sharpe", "n", None, records[0]["params"])
    assert s.median.shape == (1, 3) and s.median[0].tolist() == [1.0, 2.0, 3.0]


def test_default_axes_are_the_first_two_varying_parameters() -> None:
    assert axes(grid(), None, None) == ("fast", "slow")
    assert axes(grid(), "short", None) == ("short", "fast")
    assert axes(grid(), None, "fast") == ("slow", "fast")


@pytest.mark.parametrize(("x", "y", "message"), [
    ("fsat", None, 'not a parameter of this run. Did you mean "fast"?'),
    (None, "slo", 'Did you mean "slow"?'),
    ("k", None, "has one value in this run"),
    ("fast", "fast", "both fast"),
])
def test_bad_axes_are_one_clear_line(x: str | None, y: str | None, message: str) -> None:
    records = [{**r, "params": {**r["params"], "k": 1}} for r in grid()]
    with pytest.raises(UsageError, match=message.replace("?", r"\?").replace(".", r"\.")):
        axes(records, x, y)
