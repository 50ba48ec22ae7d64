"""Slow, obvious reference implementations that the engine's kernels must equal.

Written for reading, not speed: plain Python loops over bars and windows, one object per lot.
Each kernel's docstring names its reference here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------------- indicators


def sma(x, n):
    out = np.full(len(x), np.nan)
    for t in range(n - 1, len(x)):
        out[t] = np.mean(x[t - n + 1 : t + 1])
    return out


def ema(x, n):
    alpha = 2.0 / (n + 1.0)
    out = np.full(len(x), np.nan)
    e = None
    seen = 0
    for t, v in enumerate(x):
        if math.isnan(v):
            continue
        e = v if e is None else e + alpha * (v - e)
        seen += 1
        if seen >= n:
            out[t] = e
    return out


def rolling_std(x, n, ddof):
    out = np.full(len(x), np.nan)
    for t in range(n - 1, len(x)):
        out[t] = np.std(x[t - n + 1 : t + 1], ddof=ddof)
    return out


def zscore(x, n):
    out = np.full(len(x), np.nan)
    for t in range(n - 1, len(x)):
        w = x[t - n + 1 : t + 1]
        sd = np.std(w)
        if sd > 0:
            out[t] = (x[t] - np.mean(w)) / sd
    return out


def bollinger(x, n, k):
    mid = sma(x, n)
    sd = rolling_std(x, n, 0)
    return mid, mid + k * sd, mid - k * sd


def rsi(x, n):
    out = np.full(len(x), np.nan)
    if len(x) <= n:
        return out
    changes = [x[t] - x[t - 1] for t in range(1, len(x))]
    gain = sum(max(d, 0.0) for d in changes[:n]) / n
    loss = sum(max(-d, 0.0) for d in changes[:n]) / n
    for t in range(n, len(x)):
        if t > n:
            d = changes[t - 1]
            gain = (gain * (n - 1) + max(d, 0.0)) / n
            loss = (loss * (n - 1) + max(-d, 0.0)) / n
        out[t] = (100.0 if gain > 0 else 50.0) if loss == 0 else 100.0 - 100.0 / (1.0 + gain / loss)
    return out


def atr(high, low, close, n):
    out = np.full(len(close), np.nan)
    tr = [max(high[t] - low[t], abs(high[t] - close[t - 1]), abs(low[t] - close[t - 1])) for t in range(1, len(close))]
    if len(close) <= n:
        return out
    value = sum(tr[:n]) / n
    out[n] = value
    for t in range(n + 1, len(close)):
        value = (value * (n - 1) + tr[t - 1]) / n
        out[t] = value
    return out


def highest(x, n):
    out = np.full(len(x), np.nan)
    for t in range(n - 1, len(x)):
        out[t] = max(x[t - n + 1 : t + 1])
    return out


def lowest(x, n):
    out = np.full(len(x), np.nan)
    for t in range(n - 1, len(x)):
        out[t] = min(x[t - n + 1 : t + 1])
    return out


def crossover(a, b):
    """backtesting.py's ``crossover(a[:t+1], b[:t+1])`` at every bar t."""
    return np.array([t > 0 and a[t - 1] < b[t - 1] and a[t] > b[t] for t in range(len(a))])


def crossunder(a, b):
    return crossover(b, a)


def events_target(long_entry, long_exit, short_entry, short_exit):
    state = 0.0
    out = []
    for t in range(len(long_entry)):
        if state > 0 and (long_exit[t] or short_entry[t]):
            state = 0.0
        if state < 0 and (short_exit[t] or long_entry[t]):
            state = 0.0
        if state == 0:
            state = 1.0 if long_entry[t] else -1.0 if short_entry[t] else 0.0
        out.append(state)
    return np.array(out)


def cross_target(a, b, short):
    up, down = crossover(a, b), crossunder(a, b)
    no = np.zeros(len(a), dtype=bool)
    return events_target(up, down, down if short else no, up if short else no)


# ---------------------------------------------------------------------------------- simulation


@dataclass
class Lot:
    units: float
    price: float
    fees: float
    index: int


@dataclass
class Account:
    """The trading semantics of docs/engine.md written out bar by bar (see backtest/engine/sim.py for the statement)."""

    cash: float
    commission: float
    fee: float
    slippage: float
    integer: bool

    def __post_init__(self):
        self.side = 0
        self.lots: list[Lot] = []
        self.trades: list[dict] = []

    @property
    def units(self):
        return sum(lot.units for lot in self.lots)

    def _close(self, qty, price, i, order_fee, everything):
        left = qty
        while self.lots and (everything or left > 0):
            lot = self.lots[0]
            take = lot.units if everything or left >= lot.units else left
            entry_fees = lot.fees if take == lot.units else lot.fees * take / lot.units
            exit_fees = take * price * self.commission + order_fee * take / qty
            pnl = self.side * take * (price - lot.price) - entry_fees - exit_fees
            self.trades.append(
                dict(entry_index=lot.index, exit_index=i, side=self.side, closed=True, size=take,
                     entry_price=lot.price, exit_price=price, pnl=pnl, ret=pnl / (take * lot.price),
                     fees=entry_fees + exit_fees)
            )
            if take == lot.units:
                self.lots.pop(0)
            else:
                lot.units -= take
                lot.fees -= entry_fees
            left -= take

    def order(self, target, raw, i, units_now):
        """Move to ``target`` at raw price ``raw``; ``units_now`` is the position's unit count."""
        if self.side != 0 and (target == 0 or (target > 0) != (self.side > 0)):
            px = raw * (1 - self.side * self.slippage)
            self.cash += self.side * units_now * px - units_now * px * self.commission - self.fee
            self._close(units_now, px, i, self.fee, True)
            self.side, units_now = 0, 0.0
        if target != 0:
            tside = 1 if target > 0 else -1
            px_in = raw * (1 + tside * self.slippage)
            equity = self.cash + self.side * units_now * raw
            want = (equity - self.fee) * abs(target) / (px_in * (1 + self.commission))
            if self.integer:
                want = math.floor(want)
            want = max(want, 0.0)
            if want > units_now:
                dq = want - units_now
                cost = dq * px_in * self.commission + self.fee
                self.cash -= tside * dq * px_in + cost
                self.lots.append(Lot(dq, px_in, cost, i))
                self.side, units_now = tside, want
            elif want < units_now:
                dq = units_now - want
                px_out = raw * (1 - tside * self.slippage)
                self.cash += tside * dq * px_out - dq * px_out * self.commission - self.fee
                self._close(dq, px_out, i, self.fee, want == 0)
                units_now = want
                if want == 0:
                    self.side = 0
        return units_now


def simulate(o, h, lo, c, target, start=0, cash=100_000.0, commission=0.0, fee=0.0, slippage=0.0,
             fill="next_open", units="fractional", stop_loss=None, take_profit=None, trailing_stop=0.0):
    """Returns (trades as a list of dicts, equity list from ``start``) or raises ValueError(index)
    for a bad target. Each trade dict also has ``mae``/``mfe`` (from the highs and lows of the bars
    from its entry to its exit, both included) and ``bars``.

    Trailing stop (a fraction ``trailing_stop``, 0/None: off): its reference price ``best`` starts at
    the position's size-weighted average entry price when a position opens (or flips side); after
    each bar the position is held through (not the bar whose close opened it), ``best`` moves to that
    bar's high if higher (long; the low if lower, short); the level best·(1 ∓ trail) applies from the
    next bar on. The stop checked is the tighter of the stop-loss and the trailing level."""
    acct = Account(cash, commission, fee, slippage, units == "integer")
    trail = trailing_stop or 0.0
    held = 0.0  # units
    last = 0.0
    pending = None
    bankrupt = False
    stop_px = take_px = None
    best = None  # the trailing stop's reference price
    equity = []

    def avg_entry():
        return sum(lot.units * lot.price for lot in acct.lots) / sum(lot.units for lot in acct.lots)

    def levels():
        avg = avg_entry()
        s = acct.side
        return (avg * (1 - s * stop_loss) if stop_loss else None, avg * (1 + s * take_profit) if take_profit else None)

    for i in range(start, len(c)):
        opened_at_close = False
        if pending is not None:
            if not bankrupt:
                before = acct.side
                held = acct.order(pending, o[i], i, held)
                if acct.side:
                    stop_px, take_px = levels()
                    if acct.side != before:
                        best = avg_entry()
            pending = None
        if acct.side and (stop_loss or take_profit or trail):
            s = acct.side
            stop = stop_px
            if trail:
                trailing_level = best * (1 - s * trail)
                if stop is None:
                    stop = trailing_level
                else:
                    stop = max(stop, trailing_level) if s > 0 else min(stop, trailing_level)
            fill_px = None
            beyond = (lambda p, lvl: p <= lvl) if s > 0 else (lambda p, lvl: p >= lvl)
            reached = (lambda p, lvl: p >= lvl) if s > 0 else (lambda p, lvl: p <= lvl)
            worst, favourable = (lo[i], h[i]) if s > 0 else (h[i], lo[i])
            if stop is not None and beyond(o[i], stop):
                fill_px = o[i]  # gapped through the stop
            elif take_px is not None and reached(o[i], take_px):
                fill_px = o[i]
            elif stop is not None and beyond(worst, stop):
                fill_px = stop  # the stop wins a tie with the take-profit
            elif take_px is not None and reached(favourable, take_px):
                fill_px = take_px
            if fill_px is not None:
                held = acct.order(0.0, fill_px, i, held)
        x = target[i]
        if x != last:
            if not (-1 <= x <= 1):
                raise ValueError(i)
            last = x
            if fill == "close":
                if not bankrupt:
                    before = acct.side
                    held = acct.order(x, c[i], i, held)
                    if acct.side:
                        stop_px, take_px = levels()
                        if acct.side != before:
                            best = avg_entry()
                            opened_at_close = True
            else:
                pending = x
        eq = acct.cash + acct.side * held * c[i]
        if eq <= 0 and not bankrupt:
            bankrupt = True
            if acct.side:
                held = acct.order(0.0, c[i], i, held)
                eq = acct.cash
        if trail and acct.side and not opened_at_close:
            best = max(best, h[i]) if acct.side > 0 else min(best, lo[i])
        equity.append(eq)
    for lot in acct.lots:
        pnl = acct.side * lot.units * (c[-1] - lot.price) - lot.fees
        acct.trades.append(
            dict(entry_index=lot.index, exit_index=len(c) - 1, side=acct.side, closed=False, size=lot.units,
                 entry_price=lot.price, exit_price=c[-1], pnl=pnl, ret=pnl / (lot.units * lot.price), fees=lot.fees)
        )
    for t in acct.trades:
        top = max(h[t["entry_index"] : t["exit_index"] + 1])
        bottom = min(lo[t["entry_index"] : t["exit_index"] + 1])
        if t["side"] > 0:
            t["mae"], t["mfe"] = bottom / t["entry_price"] - 1, top / t["entry_price"] - 1
        else:
            t["mae"], t["mfe"] = 1 - top / t["entry_price"], 1 - bottom / t["entry_price"]
        t["bars"] = t["exit_index"] - t["entry_index"]
    return acct.trades, equity


def exposure(trades, start, n):
    """Share of the closes of bars ``start … n−1`` that find a position open, from the trades: a
    closed trade is held at the closes of its entry bar up to the bar before its exit (it leaves at
    that bar's open, inside it, or at its close), the open one up to the last bar."""
    held = set()
    for t in trades:
        held.update(range(t["entry_index"], t["exit_index"] if t["closed"] else n))
    return len([i for i in held if i >= start]) / (n - start)


def _mean_or_nan(values):
    return float(np.mean(values)) if len(values) else np.nan


def daily_returns(equity, cash, ts=None):
    """The returns of the equity at each UTC calendar day's last bar (the cash before the first day),
    grouping by day with pandas-free numpy; without ``ts`` each bar is a day."""
    eq = np.asarray(equity, dtype=float)
    if ts is not None and len(eq):
        day = np.asarray(ts, dtype=np.int64) // (86_400 * 10**9)
        last = [t for t in range(len(eq)) if t == len(eq) - 1 or day[t] != day[t + 1]]
        eq = eq[last]
    prev = np.concatenate([[cash], eq[:-1]])
    return (eq - prev) / prev


def metrics(equity, trades, cash, bars_per_year, close_start, close_end, ts=None, exposed=None):
    """The output contract's metrics from an equity list and trade dicts, with numpy, as docs/engine.md states.

    ``ts`` (the times of the equity's bars) adds ``max_drawdown_days``; ``exposed`` (the exposure,
    see ``exposure``) adds ``exposure`` and ``exposure_adjusted_return``. Without them those keys
    are left out."""
    eq = np.asarray(equity, dtype=float)
    prev = np.concatenate([[cash], eq[:-1]])
    r = (eq - prev) / prev
    n = len(r)
    out = {}
    out["total_return"] = eq[-1] / cash - 1
    out["cagr"] = (eq[-1] / cash) ** (bars_per_year / n) - 1
    sd = np.std(r, ddof=1)
    out["volatility"] = sd * np.sqrt(bars_per_year)
    out["sharpe"] = np.mean(r) / sd * np.sqrt(bars_per_year) if sd > 0 else np.nan
    down = np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)) * np.sqrt(bars_per_year)
    out["sortino"] = np.mean(r) * bars_per_year / down if down > 0 else np.nan
    curve = np.concatenate([[cash], eq])
    peaks = np.maximum.accumulate(curve)
    dd = curve / peaks - 1
    out["max_drawdown"] = dd.min()
    out["calmar"] = out["cagr"] / abs(dd.min()) if dd.min() < 0 else np.nan
    longest = run = 0
    for below in curve[1:] < peaks[1:]:
        run = run + 1 if below else 0
        longest = max(longest, run)
    out["max_drawdown_duration"] = float(longest)
    if exposed is not None:
        out["exposure"] = exposed
    pnl = np.array([t["pnl"] for t in trades])
    ret = np.array([t["ret"] for t in trades])
    k = len(trades)
    out["trades"] = float(k)
    out["win_rate"] = np.mean(pnl > 0) if k else np.nan
    out["best_trade"] = ret.max() if k else np.nan
    out["worst_trade"] = ret.min() if k else np.nan
    out["avg_trade"] = ret.mean() if k else np.nan
    loss = -pnl[pnl < 0].sum()
    win = pnl[pnl > 0].sum()
    out["profit_factor"] = win / loss if loss > 0 else (np.inf if win > 0 else np.nan)
    out["expectancy"] = pnl.mean() if k else np.nan
    sd_pnl = np.std(pnl, ddof=1) if k >= 2 else 0.0
    out["sqn"] = np.sqrt(k) * pnl.mean() / sd_pnl if sd_pnl > 0 else np.nan
    out["final_equity"] = eq[-1]
    out["buy_and_hold_return"] = close_end / close_start - 1

    # Drawdown periods: maximal runs of bars (equity indices a … b) below the running peak.
    below = list(eq < peaks[1:])
    periods = []
    a = 0
    while a < n:
        if not below[a]:
            a += 1
            continue
        b = a
        while b + 1 < n and below[b + 1]:
            b += 1
        periods.append((a, b))
        a = b + 1
    depths = [min(eq[a : b + 1]) / peaks[a + 1] - 1 for a, b in periods]  # peaks[a + 1]: the peak at bar a
    out["avg_drawdown"] = _mean_or_nan(depths)
    out["avg_drawdown_duration"] = _mean_or_nan([b - a + 1 for a, b in periods])
    if ts is not None:
        day = 86_400 * 10**9
        spans = [(ts[min(b + 1, n - 1)] - ts[max(a - 1, 0)]) / day for a, b in periods]
        out["max_drawdown_days"] = float(max(spans)) if spans else 0.0
    gains = sum(x for x in r if x > 0)
    losses = sum(-x for x in r if x < 0)
    out["omega"] = gains / losses if losses > 0 else (np.inf if gains > 0 else np.nan)
    daily = daily_returns(eq, cash, ts)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["tail_ratio"] = abs(np.percentile(daily, 95)) / abs(np.percentile(daily, 5)) if n else np.nan
    winners = [t for t in trades if t["pnl"] > 0]
    losers = [t for t in trades if t["pnl"] < 0]
    if winners and losers:
        w = len(winners) / k
        ratio = np.mean([t["pnl"] for t in winners]) / abs(np.mean([t["pnl"] for t in losers]))
        out["kelly"] = w - (1 - w) / ratio
    else:
        out["kelly"] = np.nan
    out["avg_win"] = _mean_or_nan([t["ret"] for t in winners])
    out["avg_loss"] = _mean_or_nan([t["ret"] for t in losers])
    for name, sign in (("max_consecutive_wins", 1), ("max_consecutive_losses", -1)):
        longest = run = 0
        for t in trades:
            run = run + 1 if np.sign(t["pnl"]) == sign else 0
            longest = max(longest, run)
        out[name] = float(longest)
    held = [t["exit_index"] - t["entry_index"] for t in trades]
    out["max_trade_duration"] = float(max(held)) if held else np.nan
    out["avg_trade_duration"] = _mean_or_nan(held)
    if exposed is not None:
        out["exposure_adjusted_return"] = out["total_return"] / exposed if exposed > 0 else np.nan
    return out


# ---------------------------------------------------------------------------------- portfolios

TOL_REL = 1e-9
TOL_ABS = 1e-12


def _near(a, b):
    return a == b or abs(a - b) <= max(TOL_REL * max(abs(a), abs(b)), TOL_ABS)


def _plus(a, b):
    """a + b, or 0 when the two cancel to within the tolerance (docs/engine.md, "Portfolio strategies")."""
    if (a > 0) != (b > 0) and a != 0 and b != 0:
        return 0.0 if _near(abs(a), abs(b)) else a + b
    return 0.0 if _near(a + b, 0.0) else a + b


@dataclass
class SymbolBook:
    """One symbol of a portfolio: its units (signed) and its open lots, oldest first."""

    units: float = 0.0
    lots: list = None
    last_close: float = math.nan

    def __post_init__(self):
        self.lots = []


def simulate_portfolio(o, c, w, start=0, cash=100_000.0, commission=0.0, fee=0.0, slippage=0.0,
                       fill="next_open", units="fractional"):
    """Target weights → (trades as dicts with a ``symbol`` index, equity list from ``start``, orders
    filled, orders skipped), by the portfolio semantics of docs/engine.md, one bar at a time."""
    n, m = len(c), len(c[0])
    books = [SymbolBook() for _ in range(m)]
    trades, equity = [], []
    orders = skipped = 0
    for i in range(n):
        row_i = i if fill == "close" else i - 1
        prices = [c[i][j] if fill == "close" else o[i][j] for j in range(m)]
        if row_i >= start and not all(math.isnan(x) for x in w[row_i]):
            value = cash
            for j, b in enumerate(books):
                if b.units != 0:
                    value += b.units * (prices[j] if not math.isnan(prices[j]) else b.last_close)
            wanted = []  # (order value, symbol, units to trade)
            for j, b in enumerate(books):
                x = w[row_i][j]
                if math.isnan(x):
                    continue
                if math.isnan(prices[j]):
                    skipped += 1
                    continue
                wanted.append((x * value - b.units * prices[j], j, x * value / prices[j] - b.units))
            wanted.sort(key=lambda t: (t[0], t[1]))  # sells first; ties in symbol order
            for _, j, delta in wanted:
                b = books[j]
                p = prices[j]
                if delta > 0:
                    px = p * (1 + slippage)
                    size = math.floor(delta) if units == "integer" else delta
                    paid = size * px * commission + fee
                    spend = size * px + paid
                    if not (_near(spend, cash) or spend < cash):  # cut to what the cash can pay
                        room = _plus(cash, -fee) / (1 + commission)
                        if room <= 0:
                            continue
                        size = room / px
                        if units == "integer":
                            size = math.floor(size)
                            paid = size * px * commission + fee
                            spend = size * px + paid
                        else:
                            paid = cash - room
                            spend = cash
                    if size <= TOL_ABS:
                        continue
                    cash = _plus(cash, -spend)
                    after = _plus(b.units, size)
                else:
                    px = p * (1 - slippage)
                    size = -delta
                    if units == "integer":
                        size = math.floor(size)
                    if size <= TOL_ABS:
                        continue
                    paid = size * px * commission + fee
                    got = _plus(size * px, -paid)
                    if got < 0:
                        continue
                    cash += got
                    after = _plus(b.units, -size)
                orders += 1
                before = b.units
                crosses = before != 0 and (after == 0 or (after > 0) != (before > 0))
                closed = abs(before) if crosses else max(abs(before) - abs(after), 0.0)
                opened = abs(after) if crosses else max(abs(after) - abs(before), 0.0)
                side = 1 if before > 0 else -1
                left = closed
                while left > 0 and b.lots:
                    lot = b.lots[0]
                    take = lot.units if (closed == abs(before) or left >= lot.units) else left
                    entry_fees = lot.fees if take == lot.units else lot.fees * take / lot.units
                    exit_fees = paid * take / (closed + opened)
                    pnl = side * take * (px - lot.price) - entry_fees - exit_fees
                    trades.append(dict(symbol=j, entry_index=lot.index, exit_index=i, side=side, closed=True,
                                       size=take, entry_price=lot.price, exit_price=px, pnl=pnl,
                                       ret=pnl / (take * lot.price), fees=entry_fees + exit_fees))
                    if take == lot.units:
                        b.lots.pop(0)
                    else:
                        lot.units -= take
                        lot.fees -= entry_fees
                    left -= take
                if closed == abs(before):
                    b.lots = []
                if opened > 0:
                    b.lots.append(Lot(opened, px, paid * opened / (closed + opened), i))
                b.units = after
        eq = cash
        for j, b in enumerate(books):
            if not math.isnan(c[i][j]):
                b.last_close = c[i][j]
            if b.units != 0:
                eq += b.units * b.last_close
        if i >= start:
            equity.append(eq)
    for j, b in enumerate(books):
        side = 1 if b.units > 0 else -1
        for lot in b.lots:
            pnl = side * lot.units * (b.last_close - lot.price) - lot.fees
            trades.append(dict(symbol=j, entry_index=lot.index, exit_index=n - 1, side=side, closed=False,
                               size=lot.units, entry_price=lot.price, exit_price=b.last_close, pnl=pnl,
                               ret=pnl / (lot.units * lot.price), fees=lot.fees))
    return trades, equity, orders, skipped
