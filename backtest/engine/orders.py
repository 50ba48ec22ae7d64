"""Small scalar kernels used by the simulation loop, and the conversion of its trade rows.

They take numbers, not arrays (an array argument costs numba reference counting at each call),
and are inlined into ``sim._run_nb``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

TRADE_COLUMNS = (
    "entry_index",
    "exit_index",
    "side",
    "closed",
    "size",
    "entry_price",
    "exit_price",
    "pnl",
    "return",
    "fees",
)
"""Columns of the float64 trade rows the simulation loop writes."""


@njit(cache=True, error_model="numpy", inline="always")
def merge_nb(
    mean: float, m2: float, count: int, s1: float, s2: float, n: int, shift: float
) -> tuple[float, float, int]:
    """Chan et al.'s pairwise update: (mean, m2, count) of a sample merged with a block of ``n``
    values given as s1 = Σ(v − shift), s2 = Σ(v − shift)²."""
    b_mean = shift + s1 / n
    b_m2 = max(s2 - s1 * s1 / n, 0.0)
    if count == 0:
        return b_mean, b_m2, n
    total = count + n
    delta = b_mean - mean
    return mean + delta * n / total, m2 + b_m2 + delta * delta * count * n / total, total


@njit(cache=True, error_model="numpy", inline="always")
def triggers_nb(side: int, sl_px: float, tp_px: float, sl_on: bool, tp_on: bool) -> tuple[float, float]:
    """(lo, hi): while holding, a bar with low ≤ lo or high ≥ hi may fill a stop."""
    lo = -np.inf
    hi = np.inf
    if side > 0:
        if sl_on:
            lo = sl_px
        if tp_on:
            hi = tp_px
    else:
        if tp_on:
            lo = tp_px
        if sl_on:
            hi = sl_px
    return lo, hi


@njit(cache=True, error_model="numpy", inline="always")
def stop_fill_nb(side: int, o: float, h: float, lw: float, sl_px: float, tp_px: float, sl_on: bool, tp_on: bool) -> float:
    """The raw price a stop fills at on this bar, or −1: a gap through a level fills at the open;
    else the stop (the stop-loss or trailing level, the tighter) if the bar reaches it (it wins a
    tie), else the take-profit."""
    if side > 0:
        if sl_on and o <= sl_px:
            return o
        if tp_on and o >= tp_px:
            return o
        if sl_on and lw <= sl_px:
            return sl_px
        if tp_on and h >= tp_px:
            return tp_px
    else:
        if sl_on and o >= sl_px:
            return o
        if tp_on and o <= tp_px:
            return o
        if sl_on and h >= sl_px:
            return sl_px
        if tp_on and lw <= tp_px:
            return tp_px
    return -1.0


@njit(cache=True, error_model="numpy")
def trade_records_nb(rows: np.ndarray, k: int, ts: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` (``TRADE_DTYPE``, length k) from the first k rows; times from ``ts``."""
    for j in range(k):
        entry = np.int64(rows[j, 0])
        exit_ = np.int64(rows[j, 1])
        rec = out[j]
        rec["entry_time"] = ts[entry]
        rec["exit_time"] = ts[exit_]
        rec["side"] = np.int8(rows[j, 2])
        rec["size"] = rows[j, 4]
        rec["entry_price"] = rows[j, 5]
        rec["exit_price"] = rows[j, 6]
        rec["pnl"] = rows[j, 7]
        rec["return"] = rows[j, 8]
        rec["fees"] = rows[j, 9]
        rec["bars"] = exit_ - entry
        rec["entry_index"] = entry
        rec["exit_index"] = exit_
        rec["closed"] = rows[j, 3] != 0.0
        rec["mae"] = np.nan
        rec["mfe"] = np.nan


@njit(cache=True, error_model="numpy")
def excursions_nb(records: np.ndarray, high: np.ndarray, low: np.ndarray) -> None:
    """Each trade's ``mae`` and ``mfe``: the worst and best price its position saw, from the highs
    and lows of the bars from its entry bar to its exit bar (both included), as a fraction of its
    entry price: for a long, lowest low / entry − 1 and highest high / entry − 1; for a short,
    1 − highest high / entry and 1 − lowest low / entry. ``high``/``low`` are the bars' (one
    symbol's), or bars × symbols for portfolio trades (the column is each record's
    ``symbol_index``)."""
    for j in range(records.shape[0]):
        rec = records[j]
        col = 0 if high.ndim == 1 else rec["symbol_index"]
        top = -np.inf
        bottom = np.inf
        for b in range(rec["entry_index"], rec["exit_index"] + 1):
            h = high[b] if high.ndim == 1 else high[b, col]
            lw = low[b] if low.ndim == 1 else low[b, col]
            if h > top:
                top = h
            if lw < bottom:
                bottom = lw
        entry = rec["entry_price"]
        if rec["side"] > 0:
            rec["mae"] = bottom / entry - 1.0
            rec["mfe"] = top / entry - 1.0
        else:
            rec["mae"] = 1.0 - top / entry
            rec["mfe"] = 1.0 - bottom / entry


@njit(cache=True)
def stored_records_nb(trades: np.ndarray, out: np.ndarray) -> bool:
    """Copy ``trades`` (``TRADE_DTYPE``) into ``out`` (``results.STORED_TRADE_DTYPE``, as long): the
    fields a result file keeps, ``bars`` narrowed to int32. False if a holding period does not fit
    (then ``out`` is not to be used). A tenth of the time of numpy's field-by-field copy.
    """
    for j in range(trades.shape[0]):
        r = trades[j]
        o = out[j]
        if r.bars > 2147483647:
            return False
        o.entry_time = r.entry_time
        o.exit_time = r.exit_time
        o.side = r.side
        o.size = r.size
        o.entry_price = r.entry_price
        o.exit_price = r.exit_price
        o.pnl = r.pnl
        o.fees = r.fees
        o.bars = np.int32(r.bars)
        o.closed = r.closed
    return True
