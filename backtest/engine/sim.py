"""The simulation kernel: target positions → fills, trades, equity and metrics in one pass.

Semantics (the full statement is in docs/engine.md):

- An order is sent only when the target changes (``target[t] != target[t-1]``; before ``start``
  the target counts as 0). With ``fill_close=False`` it fills at bar t+1's open, else at bar t's
  close. A position closed by a stop stays flat until the target changes again.
- Reaching a target: if the position is on the other side (or the target is 0) it is closed first,
  as its own order. Then units = (E − fee)·|target| / (p·(1 + commission)) with E = cash plus the
  position marked at the raw fill price and p the fill price of an entry on the target's side;
  integer units take the floor. The difference to the current units is bought or sold.
- Fill prices: buys at price·(1 + slippage), sells at price·(1 − slippage). Each fill pays
  commission·units·fill price, and each order the fixed ``fee``.
- Trades are FIFO lots: every increase opens a lot, every decrease closes the oldest lots first.
- Stops (fractions of the position's size-weighted average entry price), checked on every bar
  the position is held from its open: a gap through a level fills at the open; otherwise if the
  low reaches the stop it fills at the stop, else if the high reaches the take-profit it fills
  there (stop-loss wins a tie). Mirrored for shorts.
- If equity at a close is ≤ 0 the position is closed at that close and no further order is sent.
- The position open at the end is reported as a trade with ``closed`` False, marked to the last
  close without exit costs, and equity is marked the same way.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from backtest.engine.metrics import DAY_NS, N_METRICS, metrics_nb, period_end_nb, tail_ratio_nb
from backtest.engine.orders import (
    TRADE_COLUMNS,
    excursions_nb,
    merge_nb,
    stop_fill_nb,
    trade_records_nb,
    triggers_nb,
)

__all__ = ["TRADE_COLUMNS", "simulate_nb"]


@njit(cache=True, error_model="numpy")
def simulate_nb(
    ts: np.ndarray,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    target: np.ndarray,
    start: int,
    cash0: float,
    commission: float,
    fee: float,
    slippage: float,
    fill_close: bool,
    integer_units: bool,
    stop_loss: float,
    take_profit: float,
    trailing_stop: float,
    bars_per_year: float,
    equity_out: np.ndarray,
    day_ends: np.ndarray,
    excursions: bool,
    trade_dtype: np.dtype,
) -> tuple[int, np.ndarray, np.ndarray]:
    """Simulate one target series over bars ``start … n−1`` (module docstring: the semantics).

    ``stop_loss`` / ``take_profit`` / ``trailing_stop`` of 0 mean off. ``equity_out`` receives
    E[start …] when its length is ``n − start``; pass an empty array to skip it. ``day_ends``: the
    index of each day's last bar from ``start`` on (``metrics.day_ends``; empty when every bar is a
    day of its own), for the tail ratio over daily returns. ``excursions``: fill the trades'
    ``mae``/``mfe`` (``orders.excursions_nb``, after the loop: a grid leaves them NaN, and a report
    that shows them computes its task again), else they are NaN. ``trade_dtype`` is ``TRADE_DTYPE``
    (an argument: kernels use no module globals). Returns ``(bad, trades, metrics)``: ``bad`` is
    −1, or the first bar index ≥ start whose target is not a finite number in [−1, 1] (then the
    rest is empty/NaN); ``trades`` is a ``trade_dtype`` array; ``metrics`` follows
    ``METRIC_NAMES`` (see ``metrics_nb``).

    Reference: ``reference.simulate`` (an object-per-lot, bar-by-bar Python simulator) — trades,
    equity and metrics must match it.
    """
    # Buffers: an order needs at most four rows (a change sends ≤ 2 orders, a stop exit needs a
    # position opened by a change, one bankruptcy), so a quarter of the bars' count covers a
    # target that changes on one bar in sixteen (an SMA cross on minute bars: one in sixty). Out of
    # room, the loop stops at once and is rerun with eight times more; rows never written are
    # never touched, so the unused part costs no memory, only address space (capped at 2**20 rows,
    # 117 MB, for very long series). (Counting the changes first to size them exactly was a fifth
    # of the time of the whole simulation.)
    capacity = min(max(close.shape[0] - start, 0) // 4, 1 << 20) + 16
    # The tail ratio's returns: each bar's with ``day_ends`` empty (kept where the loop computes
    # one; the bars skipped as flat are zeros, counted), else each day's (equity at its last bar).
    by_day = day_ends.shape[0] > 0
    tail_rets = np.empty(day_ends.shape[0] if by_day else max(close.shape[0] - start, 0))
    while True:
        trades = np.empty((capacity, 10))
        lots = np.empty((capacity, 4))
        status, k, acc, curve = _run_nb(
            ts, open_, high, low, close, target, start, cash0, commission, fee, slippage,
            fill_close, integer_units, stop_loss, take_profit, trailing_stop, equity_out, trades, lots,
            day_ends, tail_rets,
        )
        if status != -2:
            break
        capacity *= 8
    records = np.empty(k if status == -1 else 0, dtype=trade_dtype)
    if status >= 0:
        return status, records, np.full(N_METRICS, np.nan)
    trade_records_nb(trades, k, ts, records)
    if excursions:
        excursions_nb(records, high, low)
    final_eq, count, mean, m2, down2, max_dd, max_under, exposed, n_tail = acc
    if by_day:  # day-end equities → the days' returns
        prev = cash0
        for d in range(n_tail):
            e = tail_rets[d]
            tail_rets[d] = (e - prev) / prev if prev > 0.0 else 0.0
            prev = e
    zeros = 0 if by_day else count - n_tail
    curve[5] = tail_ratio_nb(tail_rets, n_tail, zeros, np.empty(2 * n_tail))
    n = close.shape[0]
    first_close = close[start] if start < n else np.nan
    last_close = close[n - 1] if n > 0 else np.nan
    metrics = metrics_nb(
        cash0, final_eq, count, mean, m2, down2, max_dd, max_under, exposed, bars_per_year,
        trades, k, first_close, last_close, curve,
    )
    return -1, records, metrics


@njit(cache=True, error_model="numpy")
def _run_nb(
    ts: np.ndarray,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    target: np.ndarray,
    start: int,
    cash0: float,
    commission: float,
    fee: float,
    slippage: float,
    fill_close: bool,
    integer_units: bool,
    stop_loss: float,
    take_profit: float,
    trail: float,
    equity_out: np.ndarray,
    trades: np.ndarray,
    lots: np.ndarray,
    day_ends: np.ndarray,
    tail_rets: np.ndarray,
) -> tuple[int, int, tuple[float, int, float, float, float, float, int, int, int], np.ndarray]:
    """The bar loop. Returns (status, n_trades, accumulators, ``metrics.CURVE_FIELDS`` values
    but the tail ratio); status −1 done, −2 out of room in ``trades``/``lots``, else the index of
    a bad target. For the tail ratio ``tail_rets[:m]`` (m the last accumulator) receives, with
    ``day_ends`` empty, the returns of the bars not skipped as flat (a skipped bar's return is 0),
    else the equity at each bar of ``day_ends`` (ascending indices ≥ ``start``, the last bar of
    each day): every path below that settles a bar's equity writes it when the bar is a day end,
    and the holding loop stops after one so that it can.

    ``lots`` rows: units, entry fill price, entry costs not yet attributed to a trade, entry bar
    (live rows head … tail−1); ``trades`` rows follow ``TRADE_COLUMNS``. Everything that touches
    an array is written out here rather than in helpers: passing an array to a function costs
    numba two reference-count calls, which at every order was most of the time of a change.
    """
    n = close.shape[0]
    k = 0
    head = 0
    tail = 0
    cash = cash0
    side = 0
    units = 0.0
    pos = 0.0  # side · units
    last = 0.0  # the target acted on (0 before start)
    pending = False  # a change decided at the previous close waits for this open
    bankrupt = False
    sl_on = stop_loss > 0.0 or trail > 0.0  # the stop level is the tighter of the two
    tp_on = take_profit > 0.0
    stops = sl_on or tp_on
    trailing = trail > 0.0
    sl_px = 0.0
    fixed_sl = 0.0  # the stop-loss level alone (±inf when off)
    tp_px = 0.0
    best = 0.0  # the highest high (lowest low for a short) since the position opened
    lo = -np.inf  # while holding, a low ≤ lo or a high ≥ hi may trigger a stop
    hi = np.inf
    keep_equity = equity_out.shape[0] > 0
    no_curve = np.zeros(6)
    kept = 0  # returns or day-end equities written to tail_rets
    by_day = day_ends.shape[0] > 0
    n_days = day_ends.shape[0]
    down1 = 0.0
    dd_sum = 0.0
    dd_n = 0
    dd_bars = 0
    dd_ns = 0
    # Bar returns are summed shifted by the running mean in blocks of 4096 and merged with Chan's
    # formula (no cancellation in the variance). Bars skipped as a flat stretch have r = 0
    # exactly and are merged in at the end from their count alone.
    prev_eq = cash0
    peak = cash0
    trough = cash0
    max_dd = 0.0
    peak_i = start - 1  # the last bar at the running peak (the starting cash counts as one)
    max_under = 0
    exposed = 0
    shift = 0.0
    b_n = 0
    b_s1 = 0.0
    b_s2 = 0.0
    count = 0
    mean = 0.0
    m2 = 0.0
    down2 = 0.0
    one = np.uint64(1)  # unsigned indices: numba then emits no negative-index wraparound code
    i = start
    while i < n:
        if not pending and side == 0:
            # Flat, nothing to fill: equity stays at cash until the target changes.
            u = np.uint64(i)
            u_n = np.uint64(n)
            while u + np.uint64(4) <= u_n:  # four at a time: one branch per four bars
                if (
                    (target[u] != last)
                    | (target[u + one] != last)
                    | (target[u + np.uint64(2)] != last)
                    | (target[u + np.uint64(3)] != last)
                ):
                    break
                u += np.uint64(4)
            while u < u_n and target[u] == last:
                u += one
            j = int(np.int64(u))
            if j < n and not fill_close:
                # A change decided at bar j's close fills at the next open: bar j is flat too.
                x = target[j]
                if not (x >= -1.0 and x <= 1.0):
                    return j, k, (0.0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0), no_curve
                last = x
                pending = True
                j += 1
            if j > i:
                if keep_equity:
                    equity_out[i - start : j - start] = cash
                while kept < n_days and day_ends[kept] < j:
                    tail_rets[kept] = cash
                    kept += 1
                if cash >= peak:
                    peak_i = j - 1
                i = j
                if i >= n:
                    break
                if pending:
                    continue
        elif not pending:
            # Holding, nothing to fill: mark to each close until the target changes (with
            # next-open fills the change's own bar is marked here too), a stop level may be
            # touched, or equity reaches 0 (such bars take the full path below).
            i0 = i
            u = np.uint64(i)
            block_end = min(n, i + 4096 - b_n)  # the end of the current block of returns
            if kept < n_days:  # or of the day, to note its last equity (always past i: no stall)
                block_end = min(block_end, max(day_ends[kept], i) + 1)
            u_limit = np.uint64(block_end)
            if stops:  # a bar that may fill a stop takes the full path; with a trailing level every
                v = u  # bar does, the level moving with each (tested here, not before: cheaper)
                while v < u_limit and not trailing and low[v] > lo and high[v] < hi:
                    v += one
                u_limit = v
            u_start = np.uint64(start)
            while u < u_limit:
                x = target[u]
                changed = x != last
                if changed and fill_close:
                    break  # the order fills at this close: the full path
                eq = cash + pos * close[u]
                if eq <= 0.0:
                    break
                if keep_equity:
                    equity_out[u - u_start] = eq
                r = (eq - prev_eq) / prev_eq
                if not by_day:
                    tail_rets[kept] = r
                    kept += 1
                d = r - shift
                b_s1 += d
                b_s2 += d * d
                neg = min(r, 0.0)
                down2 += neg * neg
                down1 += neg
                prev_eq = eq
                if eq >= peak:
                    ui = int(np.int64(u))
                    if trough < peak:
                        max_dd = min(max_dd, trough / peak - 1.0)
                        max_under = max(max_under, ui - peak_i - 1)
                        dd_sum, dd_n, dd_bars, dd_ns = period_end_nb(
                            dd_sum, dd_n, dd_bars, dd_ns, trough / peak - 1.0, ui - peak_i - 1,
                            ts[ui] - ts[max(peak_i, start)])
                    peak = eq
                    trough = eq
                    peak_i = ui
                else:
                    trough = min(trough, eq)
                u += one
                if changed:  # decided at this close, filled at the next open
                    if not (x >= -1.0 and x <= 1.0):
                        return int(np.int64(u)) - 1, k, (0.0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0), no_curve
                    last = x
                    pending = True
                    break
            i = int(np.int64(u))
            if i > i0 and kept < n_days and day_ends[kept] == i - 1:
                tail_rets[kept] = prev_eq
                kept += 1
            exposed += i - i0
            b_n += i - i0
            if b_n == 4096:
                mean, m2, count = merge_nb(mean, m2, count, b_s1, b_s2, b_n, shift)
                shift = mean
                b_n = 0
                b_s1 = 0.0
                b_s2 = 0.0
            if i == block_end and i < n:
                continue  # only the block (or day) ended: keep holding
            if i >= n:
                break
        # The full path. Up to four orders in a bar, in this order: the fill at the open of the
        # change decided on the previous bar, a stop, the decision at the close (fill="close"),
        # and the liquidation when equity reaches 0.
        opened_close = False  # a position opened at this close: this bar's range came before it
        for phase in range(4):
            tgt = 0.0
            raw = -1.0
            if phase == 0:
                if not pending:
                    continue
                pending = False
                tgt = last
                raw = open_[i]
            elif phase == 1:
                if not stops or side == 0:
                    continue
                raw = stop_fill_nb(side, open_[i], high[i], low[i], sl_px, tp_px, sl_on, tp_on)
            elif phase == 2:
                x = target[i]
                if x == last:
                    continue
                if not (x >= -1.0 and x <= 1.0):
                    return i, k, (0.0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0), no_curve
                last = x
                if not fill_close:
                    pending = True
                    continue
                tgt = x
                raw = close[i]
            else:
                if bankrupt or cash + pos * close[i] > 0.0:
                    continue
                bankrupt = True
                raw = close[i]
            if raw < 0.0 or (side == 0 and tgt == 0.0) or (phase != 3 and bankrupt):
                continue
            if k + (tail - head) + 2 > trades.shape[0] or tail + 1 >= lots.shape[0]:
                return -2, k, (0.0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0), no_curve
            # The order: at most one close (FIFO over the lots) and one new lot.
            was = side
            c_qty = 0.0
            c_px = 0.0
            c_side = side
            c_all = False
            if side != 0 and (tgt == 0.0 or (tgt > 0.0) != (side > 0)):
                c_qty = units  # the other side, or flat: close everything first (its own order)
                c_px = raw * (1.0 - side * slippage)
                c_all = True
                cash += side * units * c_px - units * c_px * commission - fee
                side = 0
                units = 0.0
            o_qty = 0.0
            o_px = 0.0
            o_cost = 0.0
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
                    o_qty = want - units
                    o_px = px_in
                    o_cost = o_qty * px_in * commission + fee
                    cash -= tside * o_qty * px_in + o_cost
                    side = tside
                    units = want
                elif want < units:
                    c_qty = units - want
                    c_px = raw * (1.0 - tside * slippage)
                    c_side = tside
                    c_all = want == 0.0
                    cash += tside * c_qty * c_px - c_qty * c_px * commission - fee
                    units = want
                    if c_all:
                        side = 0
            if c_qty > 0.0:  # oldest lots first; the order's fee is shared by units
                left = c_qty
                while head < tail:
                    lot_units = lots[head, 0]
                    take = lot_units if (c_all or left >= lot_units) else left
                    if take <= 0.0:
                        break
                    entry_px = lots[head, 1]
                    entry_fees = lots[head, 2] if take == lot_units else lots[head, 2] * (take / lot_units)
                    exit_fees = take * c_px * commission + fee * (take / c_qty)
                    pnl = c_side * take * (c_px - entry_px) - entry_fees - exit_fees
                    trades[k, 0] = lots[head, 3]
                    trades[k, 1] = i
                    trades[k, 2] = c_side
                    trades[k, 3] = 1.0
                    trades[k, 4] = take
                    trades[k, 5] = entry_px
                    trades[k, 6] = c_px
                    trades[k, 7] = pnl
                    trades[k, 8] = pnl / (take * entry_px)
                    trades[k, 9] = entry_fees + exit_fees
                    k += 1
                    if take == lot_units:
                        head += 1
                    else:
                        lots[head, 0] = lot_units - take
                        lots[head, 2] -= entry_fees
                    left -= take
                    if not c_all and left <= 0.0:
                        break
            if o_qty > 0.0:
                lots[tail, 0] = o_qty
                lots[tail, 1] = o_px
                lots[tail, 2] = o_cost
                lots[tail, 3] = i
                tail += 1
            pos = side * units
            if stops and side != 0:  # levels from the lots' size-weighted entry price
                value = 0.0
                held = 0.0
                for j in range(head, tail):
                    value += lots[j, 0] * lots[j, 1]
                    held += lots[j, 0]
                avg = value / held
                if was != side:  # a new position: the trailing stop starts from its entry price
                    best = avg
                    opened_close = phase == 2
                fixed_sl = avg * (1.0 - side * stop_loss) if stop_loss > 0.0 else -side * np.inf
                tp_px = avg * (1.0 + side * take_profit)
                sl_px = fixed_sl
                if trailing:
                    lvl = best * (1.0 - side * trail)
                    sl_px = max(fixed_sl, lvl) if side > 0 else min(fixed_sl, lvl)
                lo, hi = triggers_nb(side, sl_px, tp_px, sl_on, tp_on)
        if trailing and side != 0 and not opened_close:  # this bar's extreme moves the level for the next
            if side > 0:
                if high[i] > best:
                    best = high[i]
                    lvl = best * (1.0 - trail)
                    if lvl > lo:
                        lo = lvl
                        sl_px = lvl
            elif low[i] < best:
                best = low[i]
                lvl = best * (1.0 + trail)
                if lvl < hi:
                    hi = lvl
                    sl_px = lvl
        eq = cash + pos * close[i]
        if side != 0:
            exposed += 1
        if keep_equity:
            equity_out[i - start] = eq
        r = (eq - prev_eq) / prev_eq if prev_eq > 0.0 else 0.0
        if not by_day:
            tail_rets[kept] = r
            kept += 1
        elif kept < n_days and day_ends[kept] == i:
            tail_rets[kept] = eq
            kept += 1
        d = r - shift
        b_s1 += d
        b_s2 += d * d
        neg = min(r, 0.0)
        down2 += neg * neg
        down1 += neg
        b_n += 1
        if b_n == 4096:
            mean, m2, count = merge_nb(mean, m2, count, b_s1, b_s2, b_n, shift)
            shift = mean
            b_n = 0
            b_s1 = 0.0
            b_s2 = 0.0
        prev_eq = eq
        if eq >= peak:
            if trough < peak:
                max_dd = min(max_dd, trough / peak - 1.0)
                max_under = max(max_under, i - peak_i - 1)
                dd_sum, dd_n, dd_bars, dd_ns = period_end_nb(dd_sum, dd_n, dd_bars, dd_ns, trough / peak - 1.0,
                                                             i - peak_i - 1, ts[i] - ts[max(peak_i, start)])
            peak = eq
            trough = eq
            peak_i = i
        else:
            trough = min(trough, eq)
        i += 1
    if b_n > 0:
        mean, m2, count = merge_nb(mean, m2, count, b_s1, b_s2, b_n, shift)
    n_returns = max(n - start, 0)
    if count < n_returns:  # the skipped flat bars: r = 0
        mean, m2, count = merge_nb(mean, m2, count, 0.0, 0.0, n_returns - count, 0.0)
    if trough < peak:
        max_dd = min(max_dd, trough / peak - 1.0)
        dd_sum, dd_n, dd_bars, dd_ns = period_end_nb(dd_sum, dd_n, dd_bars, dd_ns, trough / peak - 1.0,
                                                     n - 1 - peak_i, ts[n - 1] - ts[max(peak_i, start)])
    max_under = max(max_under, n - 1 - peak_i)
    curve = np.array([down1, dd_sum, float(dd_n), float(dd_bars), dd_ns / DAY_NS, np.nan])
    if side != 0:  # the open position: marked to the last close, no exit costs
        if k + (tail - head) > trades.shape[0]:
            return -2, k, (0.0, 0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0), no_curve
        last_px = close[n - 1]
        for j in range(head, tail):
            pnl = side * lots[j, 0] * (last_px - lots[j, 1]) - lots[j, 2]
            trades[k, 0] = lots[j, 3]
            trades[k, 1] = n - 1
            trades[k, 2] = side
            trades[k, 3] = 0.0
            trades[k, 4] = lots[j, 0]
            trades[k, 5] = lots[j, 1]
            trades[k, 6] = last_px
            trades[k, 7] = pnl
            trades[k, 8] = pnl / (lots[j, 0] * lots[j, 1])
            trades[k, 9] = lots[j, 2]
            k += 1
    return -1, k, (prev_eq, count, mean, m2, down2, max_dd, max_under, exposed, kept), curve
