"""Execution settings as grid axes: ``--stop-loss 0.02:0.10:0.02`` runs every parameter set once
per stop-loss value, each task keyed by its own settings (so a task of the grid has the key a
plain ``--stop-loss 0.04`` run gives it), the axes shown like parameters."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from backtest.errors import StrategyError, UsageError

#: the settings that may be given several values, in the order their axes vary (the last fastest)
AXIS_SETTINGS = ("commission", "slippage", "stop_loss", "take_profit", "trailing_stop")


def parse_setting(name: str, text: str | None) -> list[float] | None:
    """``--stop-loss`` text → its values (one or more), in the forms ``--param`` takes:
    ``0.05``, ``0.05,0.1`` or ``0.02:0.10:0.02`` (inclusive); None when the flag was not given."""
    if text is None:
        return None
    from backtest.strategy import _parse_values

    flag = "--" + name.replace("_", "-")
    if not text.strip():
        raise UsageError(f"{flag} is empty; give a value (0.05), a list (0.05,0.1) or a range (0.02:0.10:0.02)")
    forms = "give a value (0.05), a list (0.05,0.1) or a range (0.02:0.10:0.02)"
    if ":" not in text:
        items = [item.strip() for item in text.split(",")]
        for item in items:
            try:
                float(item)
            except ValueError:
                what = "an empty value" if not item else f'"{item}" is not a number'
                raise UsageError(f"cannot read {flag} {text}: {what}; {forms}") from None
        return list(dict.fromkeys(float(item) for item in items))
    try:
        values = _parse_values(object, name, 0.0, text)
    except StrategyError as exc:
        why = str(exc).split("; accepted forms")[0].replace(f'"{name}={text}"', f"{flag} {text}")
        raise UsageError(f"{why}; {forms}") from None
    return list(dict.fromkeys(values))


def split_settings(given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The request's settings → (the settings every task shares, as ``SimSettings.to_dict``; the
    axes: setting name → its canonical values). Each value is checked as the setting it is."""
    from dataclasses import replace

    from backtest.engine.settings import SimSettings

    scalars = {k: v for k, v in given.items() if not isinstance(v, list)}
    lists = {k: v for k, v in given.items() if isinstance(v, list)}
    for k, v in lists.items():
        if not v:
            raise UsageError(f"--{k.replace('_', '-')} is empty; give a value (0.05), a list or a range")
        if len(v) == 1:
            scalars[k] = v[0]
    base = SimSettings(**scalars)
    axes: dict[str, list[Any]] = {}
    for k in AXIS_SETTINGS:
        if len(lists.get(k, ())) > 1:
            axes[k] = list(dict.fromkeys(getattr(replace(base, **{k: v}), k) for v in lists[k]))
    return base.to_dict(), axes


def with_axes(params_list: Sequence[dict[str, Any]], warmups: Sequence[int],
              axes: dict[str, list[Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """Every parameter set once per combination of the axes' values (the axes vary fastest), the
    values beside the strategy's parameters; a strategy parameter named like an axis is an error."""
    if not axes:
        return list(params_list), list(warmups)
    clash = sorted({k for p in params_list for k in p} & set(axes))
    if clash:
        raise UsageError(f"the strategy has a parameter named {clash[0]}, like the setting --{clash[0].replace('_', '-')} "
                         "given several values; rename the parameter or give the setting one value")
    names = list(axes)
    combos = list(itertools.product(*(axes[n] for n in names)))
    out_p: list[dict[str, Any]] = []
    out_w: list[int] = []
    for p, w in zip(params_list, warmups, strict=True):
        for combo in combos:
            out_p.append({**p, **dict(zip(names, combo, strict=True))})
            out_w.append(w)
    return out_p, out_w
