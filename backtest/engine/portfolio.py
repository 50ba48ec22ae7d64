"""The portfolio kernel: target weights of many symbols, one account, shared cash.

Semantics (the full statement is in docs/engine.md, "Portfolio strategies"):

- Weights decided at bar t's close execute at bar t+1's open (``fill_close``: at bar t's close).
  Rows before ``start`` are warm-up and never execute. NaN leaves a symbol's position as it is; a
  row that is all NaN sends no orders.
- At an executing bar the account's value V is computed once, before any order: cash plus every
  position valued at this bar's unslipped fill price (a symbol without a bar here: its last close).
  Each symbol with a weight w gets the order w·V/price − units held.
- Orders run sells first: by order value (w·V − units·price) ascending, ties in symbol order. A buy
  fills at price·(1 + slippage) and is cut to what the cash left can pay, costs included:
  (cash − fee)/(1 + commission)/fill units. A sell fills at price·(1 − slippage). Commission is
  charged on every fill's notional and ``fee`` per order. Integer units round each order's size
  toward zero (after the cash cut, for buys). A symbol without a bar at the executing bar cannot
  trade: its order is skipped and counted.
- Floating-point noise is treated as vectorbt treats it, so that both agree to the last bits that
  matter: an order of at most 1e-12 units is no order; a cost within 1e-9 (relative) of the cash
  left is payable; cash or a position that an order brings within 1e-9 (relative) of zero is zero.
- Equity at every bar is cash plus positions marked at that bar's close (the last close for a
  symbol without a bar). Trades are FIFO lots per symbol, as for one symbol; an order that takes a
  position across zero closes every lot and opens one on the other side, its costs shared by units.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from backtest.engine.metrics import equity_stats_nb, metrics_nb
from backtest.engine.orders import trade_records_nb

REL_TOL = 1e-9
ABS_TOL = 1e-12


@njit(cache=True, error_model="numpy", inline="always")
def _close_nb(a: float, b: float) -> bool:
    if a == b:
        return True
    return abs(a - b) <= max(REL_TOL * max(abs(a), abs(b)), ABS_TOL)


@njit(cache=True, error_model="numpy", inline="always")
def _add_nb(a: float, b: float) -> float:
    """a + b, or exactly 0 when they cancel to within the tolerance."""
    if np.sign(a) != np.sign(b):
        if _close_nb(abs(a), abs(b)):
            return 0.0
    elif _close_nb(a + b, 0.0):
        return 0.0
    return a + b


@njit(cache=True, error_model="numpy")
def portfolio_nb(
    ts: np.ndarray,
    open_: np.ndarray,
    close: np.ndarray,
    weights: np.ndarray,
    start: int,
    cash0: float,
    commission: float,
    fee: float,
    slippage: float,
    fill_close: bool,
    integer_units: bool,
    bars_per_year: float,
    buy_and_hold: float,
    equity_out: np.ndarray,
    trade_dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Simulate ``weights`` (bars × symbols) over bars ``start … n−1`` (module docstring: the
    semantics). ``equity_out`` (length n − start) receives the equity at every close.

    Returns ``(trades, metrics, orders, skipped)``: ``trade_dtype`` (``PORTFOLIO_TRADE_DTYPE``)
    records, with the index of each trade's symbol, ``METRIC_NAMES`` values (``buy_and_hold_return`` is
    ``buy_and_hold``), the number of orders filled and the number skipped for want of a bar.

    Reference: ``reference.simulate_portfolio`` (a plain Python loop) in the tests, and vectorbt's
    ``Portfolio.from_orders`` with cash sharing in the benchmarks.
    """
    n, m = close.shape
    lot_cap = 16
    trade_cap = 64 + 2 * m
    while True:
        trades = np.empty((trade_cap, 11))
        lots = np.empty((m, lot_cap, 4))
        status, k, orders, skipped, exposed = _run_nb(
            open_, close, weights, start, cash0, commission, fee, slippage, fill_close, integer_units,
            equity_out, trades, lots,
        )
        if status == 0:
            break
        if status == 1:
            trade_cap *= 8
        else:
            lot_cap *= 8
    records = np.empty(k, dtype=trade_dtype)
    trade_records_nb(trades, k, ts, records)
    for j in range(k):
        records[j]["symbol_index"] = np.int32(trades[j, 10])
    count, mean, m2, down2, max_dd, max_under, curve = equity_stats_nb(equity_out, cash0, ts[start:])
    final = equity_out[equity_out.shape[0] - 1] if equity_out.shape[0] > 0 else cash0
    metrics = metrics_nb(cash0, final, count, mean, m2, down2, max_dd, max_under, exposed, bars_per_year,
                         trades, k, 1.0, 1.0, curve)
    metrics[18] = buy_and_hold
    return records, metrics, orders, skipped


@njit(cache=True, error_model="numpy")
def _run_nb(
    open_: np.ndarray,
    close: np.ndarray,
    weights: np.ndarray,
    start: int,
    cash0: float,
    commission: float,
    fee: float,
    slippage: float,
    fill_close: bool,
    integer_units: bool,
    equity_out: np.ndarray,
    trades: np.ndarray,
    lots: np.ndarray,
) -> tuple[int, int, int, int, int]:
    """The bar loop. Returns (status, trades written, orders, skipped, exposed bars): status 0 done,
    1 out of room in ``trades``, 2 out of room in ``lots`` (the caller retries with more).

    ``lots[j]`` is symbol j's ring of open lots (units, entry fill price, entry costs not yet
    attributed to a trade, entry bar), from ``head[j]`` to ``tail[j]`` (counters, modulo the
    ring's size). ``trades`` rows: entry bar, exit bar, side, closed, size, entry price, exit
    price, pnl, return, fees, symbol."""
    n, m = close.shape
    cap = lots.shape[1]
    units = np.zeros(m)
    last_px = np.full(m, np.nan)
    head = np.zeros(m, np.int64)
    tail = np.zeros(m, np.int64)
    value_of = np.empty(m)
    want = np.empty(m)
    seq = np.empty(m, np.int64)
    cash = cash0
    k = 0
    orders = 0
    skipped = 0
    exposed = 0
    for i in range(n):
        d = i if fill_close else i - 1  # the row of weights that executes at this bar
        if d >= start:
            row = weights[d]
            px = close[i] if fill_close else open_[i]
            active = False
            for j in range(m):
                if not np.isnan(row[j]):
                    active = True
                    break
            if active:
                value = cash
                for j in range(m):
                    if units[j] != 0.0:
                        p = px[j]
                        value += units[j] * (p if not np.isnan(p) else last_px[j])
                for j in range(m):
                    seq[j] = j
                    w = row[j]
                    p = px[j]
                    if np.isnan(w):
                        value_of[j] = np.nan
                    elif np.isnan(p):
                        value_of[j] = np.nan
                        skipped += 1
                    else:
                        want[j] = w * value / p - units[j]
                        value_of[j] = w * value - units[j] * p
                # sells first: insertion sort by order value, stable, NaN (no order) last
                for a in range(1, m):
                    v = value_of[a]
                    s = seq[a]
                    b = a - 1
                    while b >= 0 and (value_of[b] > v or np.isnan(value_of[b])):
                        value_of[b + 1] = value_of[b]
                        seq[b + 1] = seq[b]
                        b -= 1
                    value_of[b + 1] = v
                    seq[b + 1] = s
                for a in range(m):
                    if np.isnan(value_of[a]):
                        break
                    j = seq[a]
                    delta = want[j]
                    p = px[j]
                    held = units[j]
                    if delta > 0.0:
                        fill = p * (1.0 + slippage)
                        size = np.floor(delta) if integer_units else delta
                        req = size * fill
                        paid = req * commission + fee
                        spend = req + paid
                        if not (_close_nb(spend, cash) or spend < cash):
                            room = _add_nb(cash, -fee) / (1.0 + commission)
                            if room <= 0.0:
                                continue
                            size = room / fill
                            if integer_units:
                                size = np.floor(size)
                                req = size * fill
                                paid = req * commission + fee
                                spend = req + paid
                            else:
                                paid = cash - room
                                spend = cash
                        if not size > ABS_TOL:
                            continue
                        cash = _add_nb(cash, -spend)
                        after = _add_nb(held, size)
                    else:
                        fill = p * (1.0 - slippage)
                        size = -delta
                        if integer_units:
                            size = np.floor(size)
                        if not size > ABS_TOL:
                            continue
                        req = size * fill
                        paid = req * commission + fee
                        got = _add_nb(req, -paid)
                        if got < 0.0:
                            continue
                        cash = cash + got
                        after = _add_nb(held, -size)
                    orders += 1
                    units[j] = after
                    # the lots: what the order closes (oldest first), then what it opens
                    if held != 0.0 and (after == 0.0 or (after > 0.0) != (held > 0.0)):
                        closed_amt = abs(held)
                        opened = abs(after)
                    elif abs(after) < abs(held):
                        closed_amt = abs(held) - abs(after)
                        opened = 0.0
                    else:
                        closed_amt = 0.0
                        opened = abs(after) - abs(held)
                    total = closed_amt + opened
                    side = 1.0 if held > 0.0 else -1.0
                    close_all = closed_amt == abs(held)
                    left = closed_amt
                    while left > 0.0 and head[j] < tail[j]:
                        if k >= trades.shape[0]:
                            return 1, k, orders, skipped, exposed
                        slot = head[j] % cap
                        lot_units = lots[j, slot, 0]
                        take = lot_units if (close_all or left >= lot_units) else left
                        entry_px = lots[j, slot, 1]
                        entry_fees = lots[j, slot, 2] if take == lot_units else lots[j, slot, 2] * (take / lot_units)
                        exit_fees = paid * (take / total)
                        pnl = side * take * (fill - entry_px) - entry_fees - exit_fees
                        trades[k, 0] = lots[j, slot, 3]
                        trades[k, 1] = i
                        trades[k, 2] = side
                        trades[k, 3] = 1.0
                        trades[k, 4] = take
                        trades[k, 5] = entry_px
                        trades[k, 6] = fill
                        trades[k, 7] = pnl
                        trades[k, 8] = pnl / (take * entry_px)
                        trades[k, 9] = entry_fees + exit_fees
                        trades[k, 10] = j
                        k += 1
                        if take == lot_units:
                            head[j] += 1
                        else:
                            lots[j, slot, 0] = lot_units - take
                            lots[j, slot, 2] -= entry_fees
                        left -= take
                    if close_all:
                        head[j] = tail[j]
                    if opened > 0.0:
                        if tail[j] - head[j] >= cap:
                            return 2, k, orders, skipped, exposed
                        slot = tail[j] % cap
                        lots[j, slot, 0] = opened
                        lots[j, slot, 1] = fill
                        lots[j, slot, 2] = paid * (opened / total)
                        lots[j, slot, 3] = i
                        tail[j] += 1
        holding = False
        eq = cash
        for j in range(m):
            c = close[i, j]
            if not np.isnan(c):
                last_px[j] = c
            if units[j] != 0.0:
                holding = True
                eq += units[j] * last_px[j]
        if i >= start:
            equity_out[i - start] = eq
            if holding:
                exposed += 1
    for j in range(m):  # open positions: marked to the last close, no exit costs
        side = 1.0 if units[j] > 0.0 else -1.0
        for c in range(head[j], tail[j]):
            if k >= trades.shape[0]:
                return 1, k, orders, skipped, exposed
            slot = c % cap
            pnl = side * lots[j, slot, 0] * (last_px[j] - lots[j, slot, 1]) - lots[j, slot, 2]
            trades[k, 0] = lots[j, slot, 3]
            trades[k, 1] = n - 1
            trades[k, 2] = side
            trades[k, 3] = 0.0
            trades[k, 4] = lots[j, slot, 0]
            trades[k, 5] = lots[j, slot, 1]
            trades[k, 6] = last_px[j]
            trades[k, 7] = pnl
            trades[k, 8] = pnl / (lots[j, slot, 0] * lots[j, slot, 1])
            trades[k, 9] = lots[j, slot, 2]
            trades[k, 10] = j
            k += 1
    return 0, k, orders, skipped, exposed
