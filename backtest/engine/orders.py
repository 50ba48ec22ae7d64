"""Order execution for the simulation kernel: fills, FIFO lots and trade rows (see ``sim``).

``lots`` rows: units, entry fill price, entry costs not yet attributed to a trade, entry bar;
the live rows are ``head … tail−1``. ``trades`` rows follow ``TRADE_COLUMNS``. Both are written in
place; callers make sure there is room (``simulate_nb`` sizes and retries).
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
"""Columns of the float64 trade rows the kernel returns (``push_trade_nb`` writes this order)."""


@njit(cache=True, error_model="numpy", inline="always")
def push_trade_nb(
    buf: np.ndarray, k: int, entry_i: float, exit_i: float, side: float, closed: float,
    size: float, entry_px: float, exit_px: float, pnl: float, fees: float,
) -> int:
    buf[k, 0] = entry_i
    buf[k, 1] = exit_i
    buf[k, 2] = side
    buf[k, 3] = closed
    buf[k, 4] = size
    buf[k, 5] = entry_px
    buf[k, 6] = exit_px
    buf[k, 7] = pnl
    buf[k, 8] = pnl / (size * entry_px)
    buf[k, 9] = fees
    return k + 1


@njit(cache=True, error_model="numpy", inline="always")
def close_lots_nb(
    lots: np.ndarray, head: int, tail: int, trades: np.ndarray, k: int, qty: float, price: float,
    side: int, order_fee: float, commission: float, i: int, close_all: bool,
) -> tuple[int, int]:
    """Close ``qty`` units (every lot if ``close_all``) oldest first at fill ``price``; the order's
    fixed fee is shared among the closed pieces by units. Returns (head, k)."""
    remaining = qty
    while head < tail:
        units = lots[head, 0]
        take = units if (close_all or remaining >= units) else remaining
        if take <= 0.0:
            break
        entry_px = lots[head, 1]
        entry_fees = lots[head, 2] if take == units else lots[head, 2] * (take / units)
        exit_fees = take * price * commission + order_fee * (take / qty)
        pnl = side * take * (price - entry_px) - entry_fees - exit_fees
        k = push_trade_nb(trades, k, lots[head, 3], i, side, 1.0, take, entry_px, price, pnl, entry_fees + exit_fees)
        if take == units:
            head += 1
        else:
            lots[head, 0] = units - take
            lots[head, 2] -= entry_fees
        remaining -= take
        if not close_all and remaining <= 0.0:
            break
    return head, k


@njit(cache=True, error_model="numpy", inline="always")
def order_nb(
    tgt: float, raw: float, i: int, cash: float, side: int, units: float, lots: np.ndarray,
    head: int, tail: int, trades: np.ndarray, k: int, commission: float, fee: float,
    slippage: float, integer_units: bool,
) -> tuple[float, int, float, int, int, int]:
    """Move the position to target ``tgt`` at raw price ``raw`` on bar ``i``. ``lots`` (rows:
    units, entry fill price, entry costs not yet attributed to a trade, entry bar; live rows
    head … tail−1) and ``trades`` are written in place. Returns (cash, side, units, head, tail, k).
    """
    if side != 0 and (tgt == 0.0 or (tgt > 0.0) != (side > 0)):
        px = raw * (1.0 - side * slippage)
        cash += side * units * px - units * px * commission - fee
        head, k = close_lots_nb(lots, head, tail, trades, k, units, px, side, fee, commission, i, True)
        side = 0
        units = 0.0
    if tgt != 0.0:
        tside = 1 if tgt > 0.0 else -1
        px_in = raw * (1.0 + tside * slippage)
        equity = cash + side * units * raw
        want = (equity - fee) * abs(tgt) / (px_in * (1.0 + commission))
        if integer_units:
            want = np.floor(want)
        if not want > 0.0:
            want = 0.0
        if want > units:
            dq = want - units
            cost = dq * px_in * commission + fee
            cash -= tside * dq * px_in + cost
            lots[tail, 0] = dq
            lots[tail, 1] = px_in
            lots[tail, 2] = cost
            lots[tail, 3] = i
            tail += 1
            side = tside
            units = want
        elif want < units:
            dq = units - want
            px_out = raw * (1.0 - tside * slippage)
            cash += tside * dq * px_out - dq * px_out * commission - fee
            head, k = close_lots_nb(lots, head, tail, trades, k, dq, px_out, tside, fee, commission, i, want == 0.0)
            units = want
            if want == 0.0:
                side = 0
    return cash, side, units, head, tail, k


@njit(cache=True, error_model="numpy", inline="always")
def stop_levels_nb(
    lots: np.ndarray, head: int, tail: int, side: int, stop_loss: float, take_profit: float
) -> tuple[float, float]:
    value = 0.0
    units = 0.0
    for j in range(head, tail):
        value += lots[j, 0] * lots[j, 1]
        units += lots[j, 0]
    avg = value / units
    return avg * (1.0 - side * stop_loss), avg * (1.0 + side * take_profit)


@njit(cache=True, error_model="numpy")
def trade_records_nb(rows: np.ndarray, k: int, ts: np.ndarray, out: np.ndarray) -> None:
    """Fill ``out`` (``TRADE_DTYPE``, length k) from the first k kernel rows; times from ``ts``."""
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
