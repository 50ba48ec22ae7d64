"""Metric definitions (the output contract's names) and the kernel that finishes them after a simulation.

Per-bar quantities are accumulated by ``simulate_nb`` in its single pass; ``metrics_nb`` turns
those accumulators and the trade list into the ``METRIC_NAMES`` values. Definitions:

- Equity E[t] is cash plus the position marked at bar t's close, for t = start … n−1, and
  E[start−1] is the starting cash. Bar returns are r[t] = (E[t] − E[t−1]) / E[t−1], N = n − start
  of them.
- ``total_return`` = E[n−1]/cash − 1. ``final_equity`` = E[n−1].
- ``cagr`` = (E[n−1]/cash)^(1/years) − 1 with years = N / bars_per_year (−1 if equity ≤ 0).
- ``volatility`` = std(r, ddof=1) · √bars_per_year.
- ``sharpe`` = mean(r) / std(r, ddof=1) · √bars_per_year (risk-free rate 0).
- ``sortino`` = mean(r) · bars_per_year / (√mean(min(r, 0)²) · √bars_per_year) (target 0).
- ``max_drawdown`` = min over t of E[t]/max(E[≤t]) − 1, a negative fraction (0: never below a
  peak); the starting cash counts as the first peak. ``calmar`` = cagr / |max_drawdown|.
- ``max_drawdown_duration`` = the longest run of consecutive bars with E below its running peak.
- ``exposure`` = fraction of the N bars whose close finds a position open.
- Trades are FIFO lots; the position still open at the end counts as a trade marked to the last
  close (no exit costs). ``trades`` = their number; ``win_rate`` = share with pnl > 0;
  ``best_trade`` / ``worst_trade`` / ``avg_trade`` = max / min / arithmetic mean of trade returns
  (pnl / (size·entry price)); ``profit_factor`` = Σ positive pnl / |Σ negative pnl| (inf when
  there are wins and no losses); ``expectancy`` = mean trade pnl in cash;
  ``sqn`` = √trades · mean(pnl) / std(pnl, ddof=1).
- ``buy_and_hold_return`` = close[n−1]/close[start] − 1 (no costs).
- Drawdown periods: maximal runs of consecutive bars with E below its running peak (the one still
  open at the end counts). ``avg_drawdown`` = mean over periods of the deepest E/peak − 1 in each;
  ``avg_drawdown_duration`` = mean length in bars; ``max_drawdown_days`` = the longest calendar
  time, in days, from a period's peak bar (the first bar for the starting cash) to the bar that
  regains the peak (the last bar for a period still open).
- ``omega`` = Σ max(r, 0) / Σ max(−r, 0) (threshold 0; inf with gains and no losses).
- ``kelly`` = W − (1 − W) / R, W = win_rate, R = mean pnl of winning trades / |mean pnl of losing
  trades|. ``avg_win`` / ``avg_loss`` = mean return of the trades with pnl > 0 / pnl < 0.
- ``max_consecutive_wins`` / ``_losses`` = the longest run of trades with pnl > 0 / < 0, in the
  order trades close (the open position last); a trade with pnl = 0 ends both runs.
- ``max_trade_duration`` / ``avg_trade_duration`` = max / mean of trade ``bars`` (exit bar − entry bar).
- ``exposure_adjusted_return`` = total_return / exposure.
- ``tail_ratio`` = |P95(r)| / |P5(r)| over the N daily returns: r is the change of the equity at
  each UTC calendar day's last bar from the previous day's (the starting cash before the first
  day), i.e. the bar returns for daily or longer bars. Daily, as empyrical's ``tail_ratio`` takes
  them: the 5 % tails of minute returns measure the bid-ask bounce, not the strategy. P is the
  percentile with linear interpolation between order statistics (numpy's default: P_q = r₍ᵢ₎ +
  g·(r₍ᵢ₊₁₎ − r₍ᵢ₎), i + g = (N − 1)·q/100), computed exactly (``tail_ratio_nb``): bit for bit
  numpy's value. N = 0 gives NaN, N = 1 gives 1 (0/0 = NaN for a zero return); P5 = 0 gives inf
  (NaN when P95 is 0 too).
- A ratio with a zero denominator, or a statistic of too few values, is NaN.

``bars_per_year``: 252 for daily bars (52 weekly, 12 monthly), judged by the median spacing of
consecutive bars; for intraday bars, 252 × the measured average number of bars per UTC calendar
day that has bars.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from backtest.engine.records import METRIC_NAMES

DAY_NS = 86_400 * 10**9


def bars_per_year(ts: np.ndarray) -> float:
    """Annualisation factor for bars with int64 ns timestamps ``ts`` (sorted, unique)."""
    n = int(ts.shape[0])
    if n < 2:
        return 252.0
    # The median spacing of (about 4096, evenly spread) pairs of consecutive bars: enough to tell
    # intraday from daily, weekly or monthly bars, and cheap for long series.
    step = max(1, (n - 1) // 4096)
    spacing_days = median_of_ints(ts[1::step] - ts[:-1:step]) / DAY_NS  # the pairs (1 + i·step − 1, 1 + i·step)
    if spacing_days < 20 / 24:  # intraday: 252 trading days × measured bars per day
        days = ts // DAY_NS
        distinct = 1 + int(np.count_nonzero(days[1:] != days[:-1]))
        return 252.0 * n / distinct
    if spacing_days < 4:
        return 252.0
    if spacing_days < 10:
        return 52.0
    if spacing_days < 45:
        return 12.0
    return 365.25 / spacing_days


def median_of_ints(x: np.ndarray) -> float:
    """``float(np.median(x))`` of a non-empty 1-D integer array, bit for bit (the middle value, or
    the two middle values as floats added and halved, as ``np.mean`` does), without the general
    machinery that makes ``np.median`` cost ~30 µs a call: a worker finds the bar spacing of every
    slice of bars it runs, hundreds a shard."""
    k = x.shape[0] // 2
    if x.shape[0] % 2:
        return float(np.partition(x, k)[k])
    part = np.partition(x, (k - 1, k))
    return (float(part[k - 1]) + float(part[k])) / 2.0


def day_ends(ts: np.ndarray, start: int) -> np.ndarray:
    """The index of each UTC calendar day's last bar from ``start`` on (int64, ascending): where the
    tail ratio reads the equity for its daily returns. Empty when that is every bar from ``start``
    on (daily or longer bars): the kernel then takes its bar returns, which are those days'."""
    n = int(ts.shape[0])
    if n - start <= 0:
        return np.empty(0, dtype=np.int64)
    days = ts[start:] // DAY_NS
    ends = np.flatnonzero(days[1:] != days[:-1]).astype(np.int64)
    if ends.shape[0] == n - start - 1:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([ends + start, np.array([n - 1], dtype=np.int64)])


#: ``curve`` layout of ``metrics_nb``: what the equity pass measures beyond mean, variance and drawdown
CURVE_FIELDS = ("down1", "dd_sum", "dd_count", "dd_bars", "dd_days", "tail_ratio")
N_METRICS = len(METRIC_NAMES)


@njit(cache=True, error_model="numpy", inline="always")
def period_end_nb(dd_sum: float, dd_n: int, dd_bars: int, dd_ns: int, depth: float, bars: int,
                  span_ns: int) -> tuple[float, int, int, int]:
    """The drawdown periods' accumulators (summed depth, count, summed bars, longest span in ns)
    with one more period: ``depth`` (its deepest E/peak − 1), ``bars`` long, ``span_ns`` from its
    peak to the bar that regains it (or the last bar)."""
    return dd_sum + depth, dd_n + 1, dd_bars + bars, max(dd_ns, span_ns)


@njit(cache=True, error_model="numpy")
def metrics_nb(
    cash0: float,
    final_equity: float,
    n_returns: int,
    mean: float,
    m2: float,
    down2: float,
    max_dd: float,
    max_dd_bars: int,
    exposed_bars: int,
    bars_per_year: float,
    trades: np.ndarray,
    n_trades: int,
    first_close: float,
    last_close: float,
    curve: np.ndarray,
) -> np.ndarray:
    """The ``METRIC_NAMES`` values, in that order, from the simulation's accumulators:
    ``mean`` and ``m2`` (sum of squared deviations) of the N bar returns, ``down2`` = Σ min(r, 0)²,
    ``curve`` (``CURVE_FIELDS``: Σ min(r, 0), the drawdown periods' summed depth, count, summed
    bars and longest span in days, the tail ratio) and ``trades`` rows as written by
    ``simulate_nb`` (entry and exit bar in columns 0 and 1, pnl in 7, return in 8).

    Reference: ``reference.metrics`` (numpy over the equity curve and trade list); Sharpe,
    Sortino, max drawdown, CAGR, volatility, omega and the tail ratio are also checked against
    empyrical-reloaded.
    """
    out = np.full(N_METRICS, np.nan)
    nan = np.nan
    out[0] = final_equity / cash0 - 1.0
    cagr = nan
    if n_returns > 0:
        years = n_returns / bars_per_year
        cagr = -1.0 if final_equity <= 0.0 else (final_equity / cash0) ** (1.0 / years) - 1.0
    out[1] = cagr
    root = np.sqrt(bars_per_year)
    if n_returns >= 2:
        std = np.sqrt(m2 / (n_returns - 1))
        out[2] = std * root
        if std > 0.0:
            out[3] = mean / std * root
    if n_returns > 0 and down2 > 0.0:
        out[4] = mean * bars_per_year / (np.sqrt(down2 / n_returns) * root)
    if n_returns > 0:
        if max_dd < 0.0:
            out[5] = cagr / abs(max_dd)
        out[6] = max_dd
        out[7] = max_dd_bars
        out[8] = exposed_bars / n_returns
        if exposed_bars > 0:
            out[30] = out[0] / out[8]
        # omega: Σ max(r, 0) = Σ r − Σ min(r, 0)
        losses = -curve[0]
        gains = mean * n_returns + losses
        if losses > 0.0:
            out[22] = max(gains, 0.0) / losses
        elif gains > 0.0:
            out[22] = np.inf
    if curve[2] > 0:
        out[19] = curve[1] / curve[2]
        out[20] = curve[3] / curve[2]
    out[21] = curve[4]
    out[31] = curve[5]
    out[9] = n_trades
    out[26] = 0.0
    out[27] = 0.0
    if n_trades > 0:
        wins = 0
        losers = 0
        best = -np.inf
        worst = np.inf
        sum_ret = 0.0
        sum_pnl = 0.0
        gross_win = 0.0
        gross_loss = 0.0
        win_ret = 0.0
        loss_ret = 0.0
        run_w = 0
        run_l = 0
        max_w = 0
        max_l = 0
        max_bars = 0.0
        sum_bars = 0.0
        for j in range(n_trades):
            pnl = trades[j, 7]
            ret = trades[j, 8]
            if pnl > 0.0:
                wins += 1
                gross_win += pnl
                win_ret += ret
                run_w += 1
                run_l = 0
            elif pnl < 0.0:
                losers += 1
                gross_loss -= pnl
                loss_ret += ret
                run_l += 1
                run_w = 0
            else:
                run_w = 0
                run_l = 0
            max_w = max(max_w, run_w)
            max_l = max(max_l, run_l)
            best = max(best, ret)
            worst = min(worst, ret)
            sum_ret += ret
            sum_pnl += pnl
            held = trades[j, 1] - trades[j, 0]
            max_bars = max(max_bars, held)
            sum_bars += held
        mean_pnl = sum_pnl / n_trades
        out[10] = wins / n_trades
        out[11] = best
        out[12] = worst
        out[13] = sum_ret / n_trades
        if gross_loss > 0.0:
            out[14] = gross_win / gross_loss
        elif gross_win > 0.0:
            out[14] = np.inf
        out[15] = mean_pnl
        if n_trades >= 2:
            ss = 0.0
            for j in range(n_trades):
                ss += (trades[j, 7] - mean_pnl) ** 2
            std_pnl = np.sqrt(ss / (n_trades - 1))
            if std_pnl > 0.0:
                out[16] = np.sqrt(n_trades) * mean_pnl / std_pnl
        if wins > 0 and losers > 0:
            w = wins / n_trades
            out[23] = w - (1.0 - w) / ((gross_win / wins) / (gross_loss / losers))
        if wins > 0:
            out[24] = win_ret / wins
        if losers > 0:
            out[25] = loss_ret / losers
        out[26] = max_w
        out[27] = max_l
        out[28] = max_bars
        out[29] = sum_bars / n_trades
    out[17] = final_equity
    out[18] = last_close / first_close - 1.0
    return out


@njit(cache=True, error_model="numpy")
def equity_stats_nb(
    equity: np.ndarray, cash0: float, ts: np.ndarray
) -> tuple[int, float, float, float, float, int, np.ndarray]:
    """(N, mean, Σ(r − mean)², Σ min(r, 0)², max drawdown, longest run below a peak, ``curve``)
    of the bar returns of ``equity``, the starting cash counting as the bar before the first;
    ``ts`` holds the bars' times (``curve``: see ``metrics_nb``; its tail ratio is over the days'
    returns, the equity at each UTC day's last bar)."""
    n = equity.shape[0]
    total = 0.0
    prev = cash0
    daily = np.empty(n)  # the days' returns, for the tail ratio (``day_ends``)
    days = 0
    day_prev = cash0
    for t in range(n):
        eq = equity[t]
        r = (eq - prev) / prev if prev > 0.0 else 0.0
        total += r
        prev = eq
        if t == n - 1 or ts[t] // DAY_NS != ts[t + 1] // DAY_NS:
            daily[days] = (eq - day_prev) / day_prev if day_prev > 0.0 else 0.0
            day_prev = eq
            days += 1
    mean = total / n if n > 0 else 0.0
    m2 = 0.0
    down2 = 0.0
    down1 = 0.0
    prev = cash0
    peak = cash0
    trough = cash0
    peak_i = -1
    max_dd = 0.0
    max_under = 0
    dd_sum = 0.0
    dd_n = 0
    dd_bars = 0
    dd_ns = 0
    for t in range(n):
        eq = equity[t]
        r = (eq - prev) / prev if prev > 0.0 else 0.0
        m2 += (r - mean) * (r - mean)
        if r < 0.0:
            down2 += r * r
            down1 += r
        prev = eq
        if eq >= peak:
            if trough < peak:
                dd_sum, dd_n, dd_bars, dd_ns = period_end_nb(dd_sum, dd_n, dd_bars, dd_ns, trough / peak - 1.0,
                                                             t - peak_i - 1, ts[t] - ts[max(peak_i, 0)])
            max_under = max(max_under, t - peak_i - 1)
            peak = eq
            trough = eq
            peak_i = t
        else:
            trough = min(trough, eq)
            max_dd = min(max_dd, eq / peak - 1.0)
    max_under = max(max_under, n - 1 - peak_i)
    if trough < peak:
        dd_sum, dd_n, dd_bars, dd_ns = period_end_nb(dd_sum, dd_n, dd_bars, dd_ns, trough / peak - 1.0,
                                                     n - 1 - peak_i, ts[n - 1] - ts[max(peak_i, 0)])
    tail = tail_ratio_nb(daily, days, 0, np.empty(2 * days))
    curve = np.array([down1, dd_sum, float(dd_n), float(dd_bars), dd_ns / DAY_NS, tail])
    return n, mean, m2, down2, max_dd, max_under, curve


def curve_metrics(equity: np.ndarray, cash0: float, trades: np.ndarray, exposed: int, bars_per_year: float,
                  first_close: float, last_close: float, ts: np.ndarray) -> np.ndarray:
    """The ``METRIC_NAMES`` values of an equity curve (the equity at each close, starting from
    ``cash0``, at times ``ts``) and its trades (records with ``pnl``, ``return`` and ``bars``),
    by the definitions above: for curves made of others, e.g. a walk-forward's out-of-sample folds
    chained end to end."""
    count, mean, m2, down2, max_dd, max_under, curve = equity_stats_nb(equity, cash0, ts)
    rows = np.zeros((trades.shape[0], 10))
    rows[:, 1] = trades["bars"]
    rows[:, 7] = trades["pnl"]
    rows[:, 8] = trades["return"]
    final = float(equity[-1]) if equity.shape[0] else cash0
    return metrics_nb(cash0, final, count, mean, m2, down2, max_dd, max_under, exposed, bars_per_year, rows,
                      trades.shape[0], first_close, last_close, curve)


# ------------------------------------------------------------------ the tail ratio's percentiles
#
# An order statistic of the days' returns, without sorting them (a sort of a few thousand values
# mispredicts a branch every few comparisons): bucket selection. One pass finds the range, one
# counts the values into 64 equal buckets over it, the bucket holding the wanted rank is copied out
# (the other buckets' values counted below or above), and again on the copy — whose range is its
# own values', so outliers cannot crowd the rest into one bucket for long — until a few dozen
# values are left to sort. Every pass is branch-free; the result is exactly the order statistic.

#: buckets a selection pass counts into
_BUCKETS = 64
#: at most this many values are sorted
_SMALL = 48


@njit(cache=True, error_model="numpy")
def _bucket_nb(x: float, lo: float, scale: float) -> int:
    return min(int((x - lo) * scale), _BUCKETS - 1)


@njit(cache=True, error_model="numpy")
def _count_nb(src: np.ndarray, n: int, lo: float, scale: float, counts: np.ndarray) -> None:
    """``counts[b]``: how many of ``src[:n]`` fall in bucket b."""
    counts[:] = 0
    for i in range(n):
        counts[_bucket_nb(src[i], lo, scale)] += 1


@njit(cache=True, error_model="numpy")
def _bucket_of_nb(counts: np.ndarray, rank: int) -> tuple[int, int]:
    """(the bucket holding the order statistic ``rank``, how many values lie in the buckets before it)."""
    b = 0
    below = 0
    while below + counts[b] <= rank:
        below += counts[b]
        b += 1
    return b, below


@njit(cache=True, error_model="numpy")
def _narrow_nb(src: np.ndarray, n: int, rank: int, lo: float, hi: float, work: np.ndarray) -> float:
    """The order statistic ``rank`` of ``src[:n]``, whose least and greatest values are lo and hi,
    by bucket selection (``src`` may be ``work`` itself: each pass compacts it from its front)."""
    counts = np.empty(_BUCKETS if n > _SMALL else 0, dtype=np.int64)
    while n > _SMALL and lo < hi:
        scale = _BUCKETS / (hi - lo)
        if not (scale > 0.0 and scale < np.inf):  # an infinite value, or a span too fine to divide
            break
        _count_nb(src, n, lo, scale, counts)
        b, below = _bucket_of_nb(counts, rank)
        j = 0
        new_lo = hi
        new_hi = lo
        for i in range(n):
            x = src[i]
            work[j] = x
            hit = _bucket_nb(x, lo, scale) == b
            j += hit
            new_lo = min(new_lo, x) if hit else new_lo
            new_hi = max(new_hi, x) if hit else new_hi
        src = work
        n = j
        rank -= below
        lo = new_lo
        hi = new_hi
    if lo == hi:
        return lo
    return np.sort(src[:n])[rank]


@njit(cache=True, error_model="numpy")
def _two_pairs_nb(values: np.ndarray, n: int, r1: int, r2: int, lo: float, hi: float,
                  work: np.ndarray) -> tuple[float, float, float, float]:
    """The order statistics r1, r1 + 1, r2 and r2 + 1 of ``values[:n]`` (left as they are; NaN
    past the end, and for a rank < 0); lo and hi are their least and greatest. Each pass over all
    of them serves both ranks: the count into buckets, the copy of each rank's bucket (``work[:n]`` and
    ``work[n:2n]``), and the pass that finds each rank's next statistic (the same value when it is
    repeated past the rank, else the least value above it)."""
    if n == 0 or (r1 < 0 and r2 < 0):
        return np.nan, np.nan, np.nan, np.nan
    scale = _BUCKETS / (hi - lo) if lo < hi else 0.0
    a1 = a2 = np.nan
    if n <= _SMALL or not (scale > 0.0 and scale < np.inf):
        ordered = np.sort(values[:n])
        a1 = ordered[r1] if r1 >= 0 else np.nan
        a2 = ordered[r2] if r2 >= 0 else np.nan
    else:
        counts = np.empty(_BUCKETS, dtype=np.int64)
        _count_nb(values, n, lo, scale, counts)
        b1, below1 = _bucket_of_nb(counts, r1) if r1 >= 0 else (-1, 0)
        b2, below2 = _bucket_of_nb(counts, r2) if r2 >= 0 else (-1, 0)
        j1 = 0
        j2 = n
        lo1 = lo2 = hi
        hi1 = hi2 = lo
        for i in range(n):
            x = values[i]
            k = _bucket_nb(x, lo, scale)
            work[j1] = x
            work[j2] = x
            in1 = k == b1
            in2 = k == b2
            j1 += in1
            j2 += in2
            lo1 = min(lo1, x) if in1 else lo1
            hi1 = max(hi1, x) if in1 else hi1
            lo2 = min(lo2, x) if in2 else lo2
            hi2 = max(hi2, x) if in2 else hi2
        if b1 >= 0:
            a1 = _narrow_nb(work[:j1], j1, r1 - below1, lo1, hi1, work[:n])
        if b2 >= 0:
            a2 = _narrow_nb(work[n:j2], j2 - n, r2 - below2, lo2, hi2, work[n:2 * n])
    at1 = at2 = 0  # values <= a1, <= a2; least values above them
    up1 = up2 = np.inf
    for i in range(n):
        x = values[i]
        at1 += x <= a1
        at2 += x <= a2
        up1 = min(up1, x) if x > a1 else up1
        up2 = min(up2, x) if x > a2 else up2
    next1 = (a1 if at1 > r1 + 1 else up1) if r1 >= 0 and r1 + 1 < n else np.nan
    next2 = (a2 if at2 > r2 + 1 else up2) if r2 >= 0 and r2 + 1 < n else np.nan
    return a1, next1, a2, next2


@njit(cache=True, error_model="numpy")
def _full_rank_nb(t: int, neg: int, flat: int, zeros: int) -> int:
    """Where the order statistic t of the returns and ``zeros`` more zero returns is among the
    returns alone, sorted: ``neg`` of them are negative and ``flat`` zero, so it is their statistic t
    (negative), a zero (−1), or their statistic t − zeros (positive)."""
    if t < neg:
        return t
    if t < neg + flat + zeros:
        return -1
    return t - zeros


@njit(cache=True, error_model="numpy")
def _lerp_nb(a: float, b: float, g: float) -> float:
    """numpy's linear interpolation between neighbouring order statistics (its ``_lerp``)."""
    d = b - a
    return b - d * (1.0 - g) if g >= 0.5 else a + d * g


@njit(cache=True, error_model="numpy")
def _pick_nb(rank: int, base: int, first: float, second: float) -> float:
    """The value of a statistic mapped by ``_full_rank_nb``: a zero, or one of the pair at ``base``."""
    if rank < 0:
        return 0.0
    return first if rank == base else second


@njit(cache=True, error_model="numpy")
def _percentile_pair_nb(total: int, q: float) -> tuple[int, int, float]:
    v = (total - 1) * q
    i = int(np.floor(v))
    g = v - np.floor(v)
    if v >= total - 1:
        i = total - 1
    return i, min(i + 1, total - 1), g


@njit(cache=True, error_model="numpy")
def tail_ratio_nb(rets: np.ndarray, m: int, zeros: int, work: np.ndarray) -> float:
    """abs(P95) / abs(P5) of the returns ``rets[:m]`` and ``zeros`` more zero returns, with
    exactly ``np.percentile``'s values (``empyrical.tail_ratio``); NaN without returns.
    ``work``: scratch of at least ``2·m`` values."""
    total = m + zeros
    if total == 0:
        return np.nan
    neg = 0
    flat = 0
    lo = rets[0] if m else 0.0
    hi = lo
    for k in range(m):
        x = rets[k]
        neg += x < 0.0
        flat += x == 0.0
        lo = min(lo, x)
        hi = max(hi, x)
    i5, j5, g5 = _percentile_pair_nb(total, 0.05)
    i95, j95, g95 = _percentile_pair_nb(total, 0.95)
    # the statistics i and j (= i or i + 1) of each percentile, among the returns alone: a pair of
    # consecutive ranks there, or a zero
    s5, t5 = _full_rank_nb(i5, neg, flat, zeros), _full_rank_nb(j5, neg, flat, zeros)
    s95, t95 = _full_rank_nb(i95, neg, flat, zeros), _full_rank_nb(j95, neg, flat, zeros)
    r5 = s5 if s5 >= 0 else t5
    r95 = s95 if s95 >= 0 else t95
    a5, b5, a95, b95 = _two_pairs_nb(rets, m, r5, r95, lo, hi, work)
    p5 = _lerp_nb(_pick_nb(s5, r5, a5, b5), _pick_nb(t5, r5, a5, b5), g5)
    p95 = _lerp_nb(_pick_nb(s95, r95, a95, b95), _pick_nb(t95, r95, a95, b95), g95)
    if p5 == 0.0:  # numpy's x / 0, without its warning
        return np.nan if p95 == 0.0 else np.inf
    return abs(p95) / abs(p5)


#: metrics a task has when it is compared with a benchmark (``--benchmark``)
BENCHMARK_METRICS = ("alpha", "beta", "information_ratio", "tracking_error", "benchmark_return")


@njit(cache=True, error_model="numpy")
def benchmark_nb(equity: np.ndarray, cash0: float, bench: np.ndarray, bars_per_year: float) -> np.ndarray:
    """``BENCHMARK_METRICS`` of the equity curve ``equity`` (one value per bar from the start;
    the starting cash before it) against ``bench``: the benchmark's close at each of those bars
    and at the bar before the first (``len(equity) + 1`` values; NaN where it has none yet).

    Bars whose benchmark return is not known (no close at the bar or the bar before) are left out
    of both series. With r the strategy's and b the benchmark's bar returns over the bars kept:
    beta = cov(r, b) / var(b); alpha = (1 + mean(r − beta·b))^bars_per_year − 1 (empyrical's
    ``alpha`` with no risk-free rate); tracking_error = std(r − b, ddof=1)·√bars_per_year;
    information_ratio = mean(r − b) / std(r − b, ddof=1)·√bars_per_year; benchmark_return = the
    benchmark's last close / its first close over the bars, − 1."""
    out = np.full(5, np.nan)
    n = equity.shape[0]
    count = 0
    sr = 0.0
    sb = 0.0
    first = np.nan
    last = np.nan
    for t in range(n):
        prev = cash0 if t == 0 else equity[t - 1]
        b0 = bench[t]
        b1 = bench[t + 1]
        if b1 == b1 and first != first:
            first = b1 if b0 != b0 else b0
        if b1 == b1:
            last = b1
        if b0 == b0 and b1 == b1 and prev > 0.0:
            sr += (equity[t] - prev) / prev
            sb += b1 / b0 - 1.0
            count += 1
    if first == first:
        out[4] = last / first - 1.0
    if count < 2:
        return out
    mr = sr / count
    mb = sb / count
    cov = 0.0
    var_b = 0.0
    sa = 0.0
    sa2 = 0.0
    for t in range(n):
        prev = cash0 if t == 0 else equity[t - 1]
        b0 = bench[t]
        b1 = bench[t + 1]
        if b0 == b0 and b1 == b1 and prev > 0.0:
            r = (equity[t] - prev) / prev
            b = b1 / b0 - 1.0
            cov += (r - mr) * (b - mb)
            var_b += (b - mb) * (b - mb)
            a = r - b
            sa += a
            sa2 += a * a
    active_mean = sa / count
    active_var = max(sa2 - sa * sa / count, 0.0) / (count - 1)
    if var_b > 0.0:
        beta = cov / var_b
        out[1] = beta
        out[0] = (1.0 + (mr - beta * mb)) ** bars_per_year - 1.0
    if active_var > 0.0:
        sd = np.sqrt(active_var)
        out[3] = sd * np.sqrt(bars_per_year)
        out[2] = active_mean / sd * np.sqrt(bars_per_year)
    return out


def aligned_closes(ts: np.ndarray, start: int, bench_ts: np.ndarray, bench_close: np.ndarray) -> np.ndarray:
    """The benchmark's close at each bar ``ts[start−1 …]`` (NaN for the bar before ``start``
    when there is none): its last close at or before that bar's time, NaN before its first."""
    when = ts[max(start - 1, 0):]
    at = np.searchsorted(bench_ts, when, side="right") - 1
    out = np.where(at >= 0, bench_close[np.maximum(at, 0)], np.nan)
    if start == 0:  # no bar before the first: its return is unknown
        out = np.concatenate([[np.nan], out])
    return out
