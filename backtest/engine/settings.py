"""Execution settings of a simulation: cash, costs, fill mode, units, stops."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from backtest.errors import UsageError

FILLS = ("next_open", "close")
UNITS = ("fractional", "integer")


def _number(name: str, value: Any, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number ({hint}), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SimSettings:
    """How orders are filled and charged; part of every task key (see ``to_dict``).

    - ``cash``: starting equity.
    - ``commission``: fraction of traded notional, charged on every fill (both sides).
    - ``fee``: fixed amount charged per order.
    - ``slippage``: fraction of price against the trader: buys fill at price·(1+s), sells at
      price·(1−s).
    - ``fill``: ``"next_open"`` (a change decided at bar t fills at bar t+1's open) or ``"close"``
      (at bar t's close). ``"next-open"`` is accepted and stored as ``"next_open"``.
    - ``units``: ``"fractional"`` or ``"integer"`` (floor of the all-in size).
    - ``stop_loss`` / ``take_profit``: fractions of the position's entry price, or None.
    - ``trailing_stop``: a fraction below the highest high since the position opened (above the
      lowest low for a short), or None. Left out of ``to_dict`` when None.
    - ``leverage``: for portfolio strategies, the most the sum of |weight| over the symbols may be
      (1.0: no leverage). Left out of ``to_dict`` at 1.0, so that it changes no key then.
    """

    cash: float = 100_000.0
    commission: float = 0.0
    fee: float = 0.0
    slippage: float = 0.0
    fill: str = "next_open"
    units: str = "fractional"
    stop_loss: float | None = None
    take_profit: float | None = None
    leverage: float = 1.0
    trailing_stop: float | None = None

    def __post_init__(self) -> None:
        cash = _number("cash", self.cash, "e.g. --cash 100000")
        if cash <= 0:
            raise UsageError(f"cash must be positive (e.g. --cash 100000), got {self.cash!r}")
        commission = _number("commission", self.commission, "a fraction, e.g. 0.001 for 0.1 %")
        if not 0.0 <= commission < 1.0:
            raise UsageError(
                f"commission must be a fraction in [0, 1), e.g. 0.001 for 0.1 %, got {self.commission!r}"
            )
        fee = _number("fee", self.fee, "a fixed amount per order, e.g. 1.0")
        if fee < 0:
            raise UsageError(f"fee must be zero or positive (a fixed amount per order), got {self.fee!r}")
        slippage = _number("slippage", self.slippage, "a fraction of price, e.g. 0.0005")
        if not 0.0 <= slippage < 1.0:
            raise UsageError(
                f"slippage must be a fraction of price in [0, 1), e.g. 0.0005, got {self.slippage!r}"
            )
        fill = self.fill.replace("-", "_") if isinstance(self.fill, str) else self.fill
        if fill not in FILLS:
            raise UsageError(f"fill must be next-open or close, got {self.fill!r}")
        if self.units not in UNITS:
            raise UsageError(f"units must be fractional or integer, got {self.units!r}")
        stops: dict[str, float | None] = {}
        for name in ("stop_loss", "take_profit", "trailing_stop"):
            value = getattr(self, name)
            if value is not None:
                flag = "--" + name.replace("_", "-")
                of = "the best price since entry" if name == "trailing_stop" else "the entry price"
                value = _number(name, value, f"a fraction of {of}, e.g. {flag} 0.05")
                upper = math.inf if name == "take_profit" else 1.0
                if not 0.0 < value < upper:
                    bound = "positive" if name == "take_profit" else "in (0, 1)"
                    raise UsageError(
                        f"{name} must be a fraction of {of} {bound}, e.g. {flag} 0.05, got {getattr(self, name)!r}"
                    )
            stops[name] = value
        leverage = _number("leverage", self.leverage, "the largest sum of |weight|, e.g. --leverage 2")
        if not leverage > 0:
            raise UsageError(f"leverage must be positive (the largest sum of |weight|, e.g. 1.5), got {self.leverage!r}")
        object.__setattr__(self, "leverage", leverage)
        # Canonical types, so that equal settings give equal task keys (100000 == 100000.0).
        object.__setattr__(self, "cash", cash)
        object.__setattr__(self, "commission", commission)
        object.__setattr__(self, "fee", fee)
        object.__setattr__(self, "slippage", slippage)
        object.__setattr__(self, "fill", fill)
        object.__setattr__(self, "stop_loss", stops["stop_loss"])
        object.__setattr__(self, "take_profit", stops["take_profit"])
        object.__setattr__(self, "trailing_stop", stops["trailing_stop"])

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able, with canonical types (floats as floats, None for no stop); the
        leverage only when it is not 1.0 and the trailing stop only when set (they were added
        later: the settings of a run made before have the same dict)."""
        out = asdict(self)
        if out["leverage"] == 1.0:
            del out["leverage"]
        if out["trailing_stop"] is None:
            del out["trailing_stop"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimSettings:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise UsageError(f"unknown simulation setting(s): {', '.join(sorted(unknown))}")
        return cls(**data)
