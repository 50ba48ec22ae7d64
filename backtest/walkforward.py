"""Walk-forward optimization, the pure part: window specs, folds, and the selection rule.

``--walk-forward train=3y,test=1y[,step=6m]`` splits ``--from``..``--to`` into folds. The first test
window starts at ``--from`` + train; test windows follow each other every ``step`` (default: the
test span) until ``--to``, the last one cut at ``--to``. Rolling (default): each train window is the
train span just before its test window; ``--anchored``: from ``--from``. ``--holdout DATE`` is one
fold: train ``--from``..DATE−1 day, test DATE..``--to``.

Spans are ``Ny`` (years), ``Nm`` (months), ``Nd`` (days): calendar arithmetic on UTC days, each
window whole days; or ``Nb``: bars of the job's timeline (the union of its symbols' bars), each
window from one bar's time to another's. Calendar and bar spans do not mix in one spec.

Selection: per symbol (per universe for a portfolio strategy) and fold, the parameter set with
the best in-sample value of the ``--select`` metric (highest, except ``LOWER_IS_BETTER``), among
the sets that did not fail, have a finite value of the metric, and made at least ``--min-trades``
trades; ties go to the first set in grid order.

This module imports nothing of bt but errors and dates: planning (``backtest.run.walkforward``)
and reports share it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backtest.errors import UsageError, did_you_mean

UNITS = {"y": "years", "m": "months", "d": "days", "b": "bars"}
#: metrics where lower is better (every other metric: higher is better; max_drawdown is negative)
LOWER_IS_BETTER = frozenset({"max_drawdown_duration", "volatility", "avg_drawdown_duration", "max_drawdown_days",
                             "max_consecutive_losses", "tracking_error"})
_DAY = 86_400_000_000_000


@dataclass(frozen=True)
class Span:
    n: int
    unit: str  # y, m, d or b

    def __str__(self) -> str:
        return f"{self.n}{self.unit}"


@dataclass(frozen=True)
class WalkForward:
    """What ``--walk-forward``/``--holdout``, ``--anchored``, ``--select`` and ``--min-trades`` ask."""

    train: Span | None
    test: Span | None
    step: Span | None
    anchored: bool = False
    select: str = "sharpe"
    min_trades: int = 0
    holdout: str | None = None  # the date text of --holdout

    def to_json(self) -> dict[str, Any]:
        return {"train": str(self.train) if self.train else None, "test": str(self.test) if self.test else None,
                "step": str(self.step) if self.step else None, "anchored": self.anchored, "select": self.select,
                "min_trades": self.min_trades, "holdout": self.holdout}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WalkForward:
        spans = {k: parse_span(d[k], k) if d.get(k) else None for k in ("train", "test", "step")}
        return cls(spans["train"], spans["test"], spans["step"], bool(d.get("anchored")), d.get("select", "sharpe"),
                   int(d.get("min_trades") or 0), d.get("holdout"))


@dataclass(frozen=True)
class Fold:
    """One fold's windows, UTC ns, both ends inclusive."""

    index: int
    train_from: int
    train_to: int
    test_from: int
    test_to: int

    def to_json(self) -> list[int]:
        return [self.train_from, self.train_to, self.test_from, self.test_to]


_FORM = "write e.g. train=3y,test=1y (units: y years, m months, d days, b bars; step= defaults to test)"


def parse_span(text: str, name: str) -> Span:
    found = re.fullmatch(r"\s*(\d+)\s*([ymdb])\s*", text or "")
    if not found:
        unit = re.fullmatch(r"\s*\d+\s*(\S+)\s*", text or "")
        why = f'unknown unit "{unit.group(1)}"' if unit else f'cannot read "{text}"'
        raise UsageError(f"--walk-forward {name}={text}: {why}; {_FORM}")
    n = int(found.group(1))
    if n <= 0:
        raise UsageError(f"--walk-forward {name}={text}: a window must be at least 1 {UNITS[found.group(2)][:-1]}; {_FORM}")
    return Span(n, found.group(2))


def parse_walk_forward(text: str | None, holdout: str | None, anchored: bool, select: str | None,
                       min_trades: int | None, metrics: Sequence[str]) -> WalkForward | None:
    """The walk-forward a ``bt run`` asks for, checked (one clear ``UsageError``), or None."""
    if text is None and holdout is None:
        for flag, given in (("--anchored", anchored), ("--select", select is not None),
                            ("--min-trades", min_trades is not None)):
            if given:
                raise UsageError(f"{flag} goes with --walk-forward or --holdout")
        return None
    if text is not None and holdout is not None:
        raise UsageError("give either --walk-forward or --holdout, not both (a holdout is one fold)")
    metric = select or "sharpe"
    if metric not in metrics:
        raise UsageError(f'unknown metric "{metric}" for --select.{did_you_mean(metric, list(metrics))} '
                         f"Known: {', '.join(metrics)}")
    if min_trades is not None and min_trades < 0:
        raise UsageError(f"--min-trades must be 0 or more, not {min_trades}")
    if holdout is not None:
        if anchored:
            raise UsageError("--anchored goes with --walk-forward (a holdout always trains from --from)")
        return WalkForward(None, None, None, False, metric, min_trades or 0, holdout.strip())
    parts: dict[str, Span] = {}
    for item in (text or "").split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ("train", "test", "step"):
            known = did_you_mean(key, ["train", "test", "step"]) if key else ""
            raise UsageError(f'--walk-forward: cannot read "{item.strip()}".{known} {_FORM}')
        if key in parts:
            raise UsageError(f"--walk-forward: {key}= is given twice")
        parts[key] = parse_span(value, key)
    for need in ("train", "test"):
        if need not in parts:
            raise UsageError(f"--walk-forward needs {need}=; {_FORM}")
    spans = [parts["train"], parts["test"], parts.get("step", parts["test"])]
    if len({s.unit == "b" for s in spans}) > 1:
        raise UsageError("--walk-forward: bar counts (b) and calendar spans (y, m, d) do not mix; use one kind")
    return WalkForward(spans[0], spans[1], spans[2], anchored, metric, min_trades or 0)


# ---------------------------------------------------------------------------------------- folds


def _day(ns: int) -> dt.date:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).date()


def _ns(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1_000_000_000


def _add(day: dt.date, span: Span, times: int = 1) -> dt.date:
    n = span.n * times
    if span.unit == "d":
        return day + dt.timedelta(days=n)
    months = n * 12 if span.unit == "y" else n
    y, m = divmod(day.month - 1 + months, 12)
    year, month = day.year + y, m + 1
    last = (dt.date(year + (month == 12), month % 12 + 1, 1) - dt.timedelta(days=1)).day
    return dt.date(year, month, min(day.day, last))


def _sub(day: dt.date, span: Span) -> dt.date:
    return _add(day, Span(-span.n, span.unit))


def fmt_day(ns: int) -> str:
    return _day(ns).isoformat()


def make_folds(wf: WalkForward, start_ns: int, end_ns: int, timeline: Any = None) -> list[Fold]:
    """The folds of ``wf`` over [start_ns, end_ns] (``timeline``: the sorted bar times in that
    range, needed for bar spans). A UsageError when the range holds no test window."""
    if wf.holdout is not None:
        return [_holdout(wf.holdout, start_ns, end_ns)]
    assert wf.train is not None and wf.test is not None and wf.step is not None
    if wf.train.unit == "b":
        return _bar_folds(wf, timeline)
    first, last = _day(start_ns), _day(end_ns)
    out = []
    k = 0
    while True:
        test_from = _add(_add(first, wf.train), wf.step, k)
        if test_from > last:
            break
        test_to = min(_add(test_from, wf.test) - dt.timedelta(days=1), last)
        train_from = first if wf.anchored else _sub(test_from, wf.train)
        out.append(Fold(k, _ns(train_from), _ns(test_from) - 1, _ns(test_from), min(_ns(test_to) + _DAY - 1, end_ns)))
        k += 1
    if not out:
        raise UsageError(f"--walk-forward train={wf.train} leaves no test window: {first}..{last} is not longer than "
                         "the training window; shorten train= or widen --from/--to")
    return out


def _bar_folds(wf: WalkForward, timeline: Any) -> list[Fold]:
    assert wf.train is not None and wf.test is not None and wf.step is not None
    ts = list(int(t) for t in timeline) if timeline is not None else []
    n = len(ts)
    out = []
    k = 0
    while True:
        first_test = wf.train.n + k * wf.step.n
        if first_test >= n:
            break
        last_test = min(first_test + wf.test.n - 1, n - 1)
        train_first = 0 if wf.anchored else first_test - wf.train.n
        out.append(Fold(k, ts[train_first], ts[first_test - 1], ts[first_test], ts[last_test]))
        k += 1
    if not out:
        raise UsageError(f"--walk-forward train={wf.train} leaves no test window: the range has {n} bars; shorten "
                         "train= or widen --from/--to")
    return out


def _holdout(text: str, start_ns: int, end_ns: int) -> Fold:
    try:
        day = dt.date.fromisoformat(text) if len(text) == 10 else dt.date(int(text), 1, 1)
    except ValueError:
        raise UsageError(f'--holdout "{text}" is not a date; give a year (2022) or a day (2022-07-01)') from None
    at = _ns(day)
    if not start_ns < at <= end_ns:
        raise UsageError(f"--holdout {text} is outside the range {fmt_day(start_ns)}..{fmt_day(end_ns)}: both the "
                         "training part before it and the test part from it need bars")
    return Fold(0, start_ns, at - 1, at, end_ns)


# -------------------------------------------------------------------------------------- selection


def choose(candidates: Sequence[tuple[dict[str, float] | None, float]], metric: str, min_trades: int) -> int | None:
    """The index of the chosen set among ``candidates`` (metrics, or None for a failed task; and
    its trade count), in grid order; None when no set is eligible."""
    best = None
    best_value = 0.0
    lower = metric in LOWER_IS_BETTER
    for i, (metrics, trades) in enumerate(candidates):
        if metrics is None:
            continue
        value = metrics.get(metric)
        if value is None or not math.isfinite(value) or trades < min_trades:
            continue  # undefined or infinite (a profit factor with no loss): not comparable
        if best is None or (value < best_value if lower else value > best_value):
            best, best_value = i, value
    return best
