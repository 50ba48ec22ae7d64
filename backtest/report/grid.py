"""A metric over the parameter grid: is the best set on a plateau or a lone spike?

``surface`` lays a metric over one or two parameters: the median across symbols per grid point,
and one map per symbol. Parameters other than the axes are held at the best set's values, so each
cell is one parameter set (per symbol), never an average over unrelated sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backtest.errors import UsageError, did_you_mean


@dataclass
class Surface:
    metric: str
    x: str
    y: str | None  # None: one varying parameter, a line over x
    xs: list[Any]
    ys: list[Any]  # [None] for a line
    median: np.ndarray  # shape (len(ys), len(xs)); NaN where no task ran
    per_symbol: dict[str, np.ndarray]
    fixed: dict[str, Any] = field(default_factory=dict)  # the other varying parameters' values
    #: each symbol's task key per cell ("" where no task ran), shape (len(ys), len(xs)): every value
    #: shown traces back to the result that made it
    keys: dict[str, np.ndarray] = field(default_factory=dict)


def varying(records: Sequence[dict[str, Any]]) -> list[str]:
    """Parameters taking more than one value among ``records``, in the strategy's order."""
    values: dict[str, set[str]] = {}
    for r in records:
        for k, v in r["params"].items():
            values.setdefault(k, set()).add(repr(v))
    return [k for k, vs in values.items() if len(vs) > 1]


def axes(records: Sequence[dict[str, Any]], x: str | None, y: str | None) -> tuple[str | None, str | None]:
    """The heatmap's axes: the ones given (checked), else the first two varying parameters."""
    vary = varying(records)
    known = list(dict.fromkeys(k for r in records for k in r["params"]))
    for flag, name in (("--x", x), ("--y", y)):
        if name is None:
            continue
        if name not in known:
            raise UsageError(f'{flag} {name}: not a parameter of this run.{did_you_mean(name, known)} '
                             f'Parameters: {", ".join(known) or "none"}')
        if name not in vary:
            raise UsageError(f"{flag} {name}: the parameter has one value in this run, so there is nothing to plot "
                             f"along it; varying: {', '.join(vary) or 'none'}")
    if x is not None and x == y:
        raise UsageError(f"--x and --y are both {x}; give two different parameters")
    rest = [k for k in vary if k not in (x, y)]
    if x is None:
        x = rest.pop(0) if rest else None
    if y is None and rest:
        y = rest.pop(0)
    return x, y


def _sorted_values(values: set[Any]) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=repr)


def surface(records: Sequence[dict[str, Any]], metric: str, x: str, y: str | None,
            best: dict[str, Any]) -> Surface:
    """``metric`` over ``x`` (and ``y``) among the done ``records``; the other parameters that
    vary are held at their values in ``best`` (a parameter set)."""
    vary = varying(records)
    fixed = {k: best[k] for k in vary if k not in (x, y)}
    done = [r for r in records if r["status"] == "done"
            and all(r["params"].get(k) == v for k, v in fixed.items())]
    xs = _sorted_values({r["params"][x] for r in done})
    ys = _sorted_values({r["params"][y] for r in done}) if y else [None]
    xi = {repr(v): i for i, v in enumerate(xs)}
    yi = {repr(v): i for i, v in enumerate(ys)}
    symbols = sorted({r["symbol"] for r in done})
    cube = np.full((len(symbols), len(ys), len(xs)), np.nan)
    keys = np.full((len(symbols), len(ys), len(xs)), "", dtype=object)
    si = {s: i for i, s in enumerate(symbols)}
    for r in done:
        v = r["metrics"].get(metric)
        if v is None:
            continue
        cell = (si[r["symbol"]], yi[repr(r["params"][y]) if y else repr(None)], xi[repr(r["params"][x])])
        cube[cell] = v
        keys[cell] = r.get("key", "")
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
            median = np.nanmedian(cube, axis=0) if symbols else np.full((len(ys), len(xs)), np.nan)
    return Surface(metric, x, y, xs, ys, median, {s: cube[i] for s, i in si.items()}, fixed,
                   {s: keys[i] for s, i in si.items()})
