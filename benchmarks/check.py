"""The answer check: engines must agree before any time is reported.

``compare(expected, actual)`` compares final equity (relative tolerance, default 1e-9) and trade
count (exactly) task by task; ``require_agreement`` raises ``AnswerMismatch`` on any disagreement,
which fails the benchmark. ``reference_sma_long_only`` is the slow, obvious implementation of the
benchmark's semantics (plain Python loops) that the self-test holds vectorbt and backtesting.py to,
so the check itself, and the claim that the peers implement the stated semantics, are tested.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common import CASH, COMMISSION, TaskKey

RTOL = 1e-9


class AnswerMismatch(Exception):
    """Two engines disagree on some task's answer: the benchmark's times mean nothing."""


@dataclass
class CheckReport:
    expected: str
    actual: str
    compared: int = 0
    max_rel_equity: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.compared > 0 and not self.mismatches

    def summary(self) -> str:
        head = f"{self.actual} vs {self.expected}: {self.compared} tasks compared, max relative equity difference {self.max_rel_equity:.2e}"
        if self.ok:
            return head + ", all agree"
        if not self.compared:
            return head + ": nothing to compare"
        more = f" (+{len(self.mismatches) - 5} more)" if len(self.mismatches) > 5 else ""
        return head + f"; {len(self.mismatches)} DISAGREE: " + "; ".join(self.mismatches[:5]) + more


def rel_diff(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def sample_keys(keys: Iterable[TaskKey], n: int | None, seed: int = 0) -> list[TaskKey]:
    """All keys (sorted) if ``n`` is None or 0 or at least their number, else a seeded sample of ``n``."""
    ks = sorted(keys)
    if not n or n >= len(ks):
        return ks
    return sorted(random.Random(seed).sample(ks, n))


def compare(
    expected: Mapping[TaskKey, Mapping[str, Any]],
    actual: Mapping[TaskKey, Mapping[str, Any]],
    *,
    names: tuple[str, str] = ("expected", "actual"),
    keys: Sequence[TaskKey] | None = None,
    rtol: float = RTOL,
    fields: Sequence[str] = ("final_equity", "trades"),
) -> CheckReport:
    """Compare answers of ``keys`` (default: every key of ``actual``); a key missing on either side is a mismatch."""
    rep = CheckReport(*names)
    for key in sorted(actual) if keys is None else keys:
        e, a = expected.get(key), actual.get(key)
        if e is None or a is None:
            rep.mismatches.append(f"{key}: missing from {names[0] if e is None else names[1]}")
            continue
        rep.compared += 1
        for f in fields:
            if f == "final_equity":
                d = rel_diff(float(e[f]), float(a[f]))
                rep.max_rel_equity = max(rep.max_rel_equity, d)
                if not d <= rtol:
                    rep.mismatches.append(f"{key}: final_equity {e[f]!r} vs {a[f]!r} (rel {d:.1e})")
            elif int(e[f]) != int(a[f]):
                rep.mismatches.append(f"{key}: {f} {e[f]} vs {a[f]}")
    return rep


def require_agreement(
    expected: Mapping[TaskKey, Mapping[str, Any]],
    actual: Mapping[TaskKey, Mapping[str, Any]],
    **kwargs: Any,
) -> CheckReport:
    """``compare``, raising ``AnswerMismatch`` unless at least one task was compared and all agree."""
    rep = compare(expected, actual, **kwargs)
    if not rep.ok:
        raise AnswerMismatch(rep.summary())
    return rep


# ---------------------------------------------------------------------------------------------
# The slow, obvious reference


def _sma(x: Sequence[float], n: int) -> list[float]:
    """out[t] = mean of x[t-n+1 .. t] (a fresh sum per bar); NaN for t < n-1."""
    return [math.nan] * (n - 1) + [sum(x[t - n + 1 : t + 1]) / n for t in range(n - 1, len(x))]


def reference_sma_long_only(
    open_: Sequence[float],
    close: Sequence[float],
    fast: int,
    slow: int,
    *,
    cash: float = CASH,
    commission: float = COMMISSION,
    units: str = "fractional",
) -> dict[str, Any]:
    """The benchmark's long-only SMA cross, bar by bar, exactly as docs/engine.md states bt's semantics.

    At bar t (after the fills at its open): a cross up (f[t-1] < s[t-1] and f[t] > s[t]; a NaN
    compares false) while flat orders a buy, a cross down while long orders a sell; orders fill at
    open[t+1] (an order at the last bar never fills). A buy puts all cash in: units =
    cash / (price·(1 + commission)), floored for ``units="integer"`` (no trade if that is 0); each
    side pays commission·units·price. Final equity = cash + units·close[-1].
    """
    f, s = _sma(close, fast), _sma(close, slow)
    units_held = 0.0
    pending = None
    trades = closed = 0
    for t in range(len(close)):
        price = open_[t]
        if pending == "buy":
            size = cash / (price * (1.0 + commission))
            if units == "integer":
                size = float(math.floor(size))
            if size > 0:
                cash -= size * price + size * price * commission
                units_held = size
                trades += 1
        elif pending == "sell":
            cash += units_held * price - units_held * price * commission
            units_held = 0.0
            closed += 1
        pending = None
        if t == 0:
            continue
        if units_held == 0.0 and f[t - 1] < s[t - 1] and f[t] > s[t]:
            pending = "buy"
        elif units_held > 0.0 and s[t - 1] < f[t - 1] and s[t] > f[t]:
            pending = "sell"
    return {"final_equity": float(cash + units_held * close[-1]), "trades": trades, "closed_trades": closed}


def self_check_comparator() -> None:
    """The comparator must flag a 1e-8 relative equity difference, a trade off by one and a missing task."""
    base = {("S000", 5, 20): {"final_equity": 12345.678, "trades": 10}}
    require_agreement(base, {("S000", 5, 20): {"final_equity": 12345.678 * (1 + 5e-10), "trades": 10}})
    for bad in (
        {("S000", 5, 20): {"final_equity": 12345.678 * (1 + 1e-8), "trades": 10}},
        {("S000", 5, 20): {"final_equity": 12345.678, "trades": 11}},
        {("S000", 5, 40): {"final_equity": 12345.678, "trades": 10}},
        {("S000", 5, 20): {"final_equity": math.nan, "trades": 10}},
        {},
    ):
        try:
            require_agreement(base, bad)
        except AnswerMismatch:
            continue
        raise AssertionError(f"comparator accepted {bad}")
