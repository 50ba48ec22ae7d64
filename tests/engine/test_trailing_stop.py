"""The trailing stop, worked by hand on a few bars: where its level starts, when it moves, how it
fills, how it combines with the fixed stop-loss and the take-profit; and its setting's checks."""

from __future__ import annotations

import numpy as np
import pytest

from backtest.engine import SimSettings, TaskOutput, run_grid
from backtest.errors import UsageError
from backtest.strategy import Strategy

from .helpers import bars_from


class Fixed(Strategy):
    """Returns the target array given as the (non-parameter) class attribute ``_target``."""

    _target: np.ndarray = np.zeros(0)

    def signals(self, bars):
        return self._target


def run(rows, target, **settings) -> TaskOutput:
    """Simulate ``target`` over bars given as (open, high, low, close) rows."""
    bars = bars_from(*zip(*rows, strict=True))
    strategy = type("T", (Fixed,), {"_target": np.asarray(target, dtype=float)})
    (out,) = run_grid(strategy, bars, [{}], SimSettings(**settings), want_equity=True)
    if isinstance(out, Exception):
        raise out
    return out


def only_trade(out: TaskOutput):
    (t,) = out.trades
    assert t["closed"]
    return t


FLAT = (100.0, 100.0, 100.0, 100.0)


def test_long_exits_at_the_level_below_the_highest_high():
    rows = [
        FLAT,  # target 1 decided at this close
        (100, 105, 99, 104),  # filled at the open 100: level 90; the high 105 → 94.5 from the next bar
        (104, 110, 103, 109),  # level 94.5; high 110 → 99
        (109, 112, 100, 101),  # level 99, low 100 stays above; high 112 → 100.8
        (101, 101.5, 95, 96),  # level 100.8: the low reaches it
        (96, 97, 95, 96),
    ]
    out = run(rows, [1] * 6, trailing_stop=0.1, cash=1000.0)
    t = only_trade(out)
    assert (t["side"], t["entry_index"], t["exit_index"], t["entry_price"]) == (1, 1, 4, 100.0)
    assert t["exit_price"] == pytest.approx(112 * 0.9, rel=1e-15)
    assert t["pnl"] == pytest.approx(10 * (112 * 0.9 - 100), rel=1e-12)
    # flat after the stop although the target is still 1
    assert out.equity[4] == out.equity[5] == pytest.approx(1000 + 10 * (112 * 0.9 - 100), rel=1e-12)
    assert out.metrics["trades"] == 1


def test_short_exits_at_the_level_above_the_lowest_low():
    rows = [
        FLAT,
        (100, 101, 95, 96),  # short at 100: level 110; the low 95 → 104.5
        (96, 98, 90, 91),  # level 104.5; low 90 → 99
        (92, 100, 91, 99),  # level 99: the high reaches it
        (99, 99, 99, 99),
    ]
    out = run(rows, [-1] * 5, trailing_stop=0.1, cash=1000.0)
    t = only_trade(out)
    assert (t["side"], t["entry_index"], t["exit_index"]) == (-1, 1, 3)
    assert t["exit_price"] == pytest.approx(90 * 1.1, rel=1e-15)
    assert t["pnl"] == pytest.approx(10 * (100 - 90 * 1.1), rel=1e-12)
    assert out.metrics["trades"] == 1


def test_gap_through_the_trailing_level_fills_at_the_open():
    rows = [FLAT, (100, 110, 99, 108), (95, 96, 90, 92), (92, 93, 91, 92)]  # level 99 at bar 2; it opens at 95
    t = only_trade(run(rows, [1] * 4, trailing_stop=0.1))
    assert (t["exit_index"], t["exit_price"]) == (2, 95.0)
    # short: lowest low 90 → level 99; the next bar opens at 105
    rows = [FLAT, (100, 101, 90, 92), (105, 106, 104, 105), (105,) * 4]
    t = only_trade(run(rows, [-1] * 4, trailing_stop=0.1))
    assert (t["side"], t["exit_index"], t["exit_price"]) == (-1, 2, 105.0)


def test_trailing_stop_wins_a_tie_with_the_take_profit():
    rows = [FLAT, (100, 104, 99, 103), (103, 125, 98, 110), (110,) * 4]  # level 98.8 and take-profit 120 both touched
    t = only_trade(run(rows, [1] * 4, trailing_stop=0.05, take_profit=0.2))
    assert t["exit_index"] == 2 and t["exit_price"] == pytest.approx(104 * 0.95, rel=1e-15)
    rows[2] = (103, 125, 99, 110)  # the low stays above 98.8: the take-profit fills
    t = only_trade(run(rows, [1] * 4, trailing_stop=0.05, take_profit=0.2))
    assert t["exit_index"] == 2 and t["exit_price"] == pytest.approx(120.0, rel=1e-15)


def test_the_tighter_of_trailing_and_fixed_stop_applies():
    # trailing tighter: best 110 → 104.5, above the stop-loss at 90
    rows = [FLAT, (100, 110, 99, 108), (108, 109, 100, 101), (101,) * 4]
    t = only_trade(run(rows, [1] * 4, trailing_stop=0.05, stop_loss=0.1))
    assert t["exit_index"] == 2 and t["exit_price"] == pytest.approx(110 * 0.95, rel=1e-15)
    # fixed tighter: the stop-loss at 98 is above the trailing level 105 · 0.9 = 94.5
    rows = [FLAT, (100, 105, 99, 104), (104, 105, 97, 98), (98,) * 4]
    t = only_trade(run(rows, [1] * 4, trailing_stop=0.1, stop_loss=0.02))
    assert t["exit_index"] == 2 and t["exit_price"] == pytest.approx(98.0, rel=1e-15)
    # short, trailing tighter: lowest low 90 → 94.5, below the stop-loss at 110
    rows = [FLAT, (100, 101, 90, 91), (91, 96, 90.5, 95), (95,) * 4]
    t = only_trade(run(rows, [-1] * 4, trailing_stop=0.05, stop_loss=0.1))
    assert t["exit_index"] == 2 and t["exit_price"] == pytest.approx(90 * 1.05, rel=1e-15)
    # short, fixed tighter: stop-loss at 102, trailing 95 · 1.1 = 104.5
    rows = [FLAT, (100, 101, 95, 96), (96, 103, 95.5, 102), (102,) * 4]
    t = only_trade(run(rows, [-1] * 4, trailing_stop=0.1, stop_loss=0.02))
    assert t["exit_index"] == 2 and t["exit_price"] == pytest.approx(102.0, rel=1e-15)


def test_the_stop_bars_high_does_not_raise_its_own_level():
    # best 110 after bar 1 → level 99 on bar 2; bar 2's high 130 would make it 117 if it counted
    rows = [FLAT, (100, 110, 99, 108), (108, 130, 98, 120), (120,) * 4]
    t = only_trade(run(rows, [1] * 4, trailing_stop=0.1))
    assert t["exit_index"] == 2 and t["exit_price"] == pytest.approx(99.0, rel=1e-15)
    # a bar that does not reach the level raises it only for the bars after it
    rows = [FLAT, (100, 110, 99, 108), (108, 130, 100, 120), (120, 121, 116, 118), (118,) * 4]
    t = only_trade(run(rows, [1] * 5, trailing_stop=0.1))
    assert t["exit_index"] == 3 and t["exit_price"] == pytest.approx(117.0, rel=1e-15)


def test_next_open_entry_bar_is_checked_and_its_high_counts_after():
    # entry at bar 1's open: the level 90 is checked on that bar
    rows = [FLAT, (100, 101, 89, 95), (95,) * 4]
    t = only_trade(run(rows, [1] * 3, trailing_stop=0.1))
    assert (t["entry_index"], t["exit_index"], t["exit_price"]) == (1, 1, 90.0)
    # the entry bar's high 120 sets the level of the next bar: 108
    rows = [FLAT, (100, 120, 99, 115), (115, 116, 107, 110), (110,) * 4]
    t = only_trade(run(rows, [1] * 4, trailing_stop=0.1))
    assert t["exit_index"] == 2 and t["exit_price"] == pytest.approx(108.0, rel=1e-15)


def test_fill_at_close_entry_bar_range_does_not_count():
    # entered at bar 0's close 100: its high 150 came before the position (else the level would be 135)
    rows = [(100, 150, 95, 100), (100, 101, 92, 95), (95, 96, 90, 91), (91,) * 4]
    t = only_trade(run(rows, [1] * 4, trailing_stop=0.1, fill="close"))
    assert (t["entry_index"], t["entry_price"]) == (0, 100.0)
    assert t["exit_index"] == 2 and t["exit_price"] == pytest.approx(101 * 0.9, rel=1e-15)
    # short: the entry bar's low 50 does not count either
    rows = [(100, 105, 50, 100), (100, 108, 99, 105), (105, 110, 104, 109), (109,) * 4]
    t = only_trade(run(rows, [-1] * 4, trailing_stop=0.1, fill="close"))
    assert t["side"] == -1 and t["exit_index"] == 2 and t["exit_price"] == pytest.approx(99 * 1.1, rel=1e-15)


def test_level_starts_at_the_entry_fill_with_slippage_and_exit_pays_it():
    rows = [FLAT, (100, 100.5, 91, 95), (95,) * 4]  # entry 101: level 90.9, reached by the low 91? no
    out = run(rows, [1] * 3, trailing_stop=0.1, slippage=0.01)
    assert not out.trades[0]["closed"]
    rows = [FLAT, (100, 100.5, 90.5, 95), (95,) * 4]  # the low 90.5 reaches 90.9
    t = only_trade(run(rows, [1] * 3, trailing_stop=0.1, slippage=0.01))
    assert t["entry_price"] == pytest.approx(101.0, rel=1e-15)
    assert t["exit_price"] == pytest.approx(101 * 0.9 * 0.99, rel=1e-14)


def test_adding_keeps_the_best_price_and_a_flip_resets_it():
    # long 0.5 at bar 1 (best → 120), raised to 1 at bar 2's open 115: the level stays 120 · 0.9 = 108
    rows = [FLAT, (100, 120, 99, 115), (115, 116, 107, 110), (110,) * 4]
    out = run(rows, [0.5, 1, 1, 1], trailing_stop=0.1)
    assert [(t["entry_index"], t["exit_index"], t["closed"]) for t in out.trades] == [(1, 2, True), (2, 2, True)]
    assert out.trades["exit_price"] == pytest.approx([108.0, 108.0], rel=1e-15)
    # long (best 120 after bar 1) flipped short at bar 2's open 115: its level starts at 115 · 1.1
    rows = [FLAT, (100, 120, 99, 115), (115, 116, 107, 110), (110, 111, 109, 110), (110,) * 4]
    out = run(rows, [1, -1, -1, -1, -1], trailing_stop=0.1)
    long_, short = out.trades
    assert (long_["exit_index"], long_["exit_price"]) == (2, 115.0)
    assert short["side"] == -1 and short["entry_index"] == 2 and not short["closed"]
    # the short's level after bar 2 is 107 · 1.1 = 117.7: a high of 117.5 on bar 3 does not reach it
    rows[3] = (110, 117.5, 109, 110)
    assert not run(rows, [1, -1, -1, -1, -1], trailing_stop=0.1).trades[1]["closed"]
    rows[3] = (110, 118, 109, 110)
    short = run(rows, [1, -1, -1, -1, -1], trailing_stop=0.1).trades[1]
    assert short["exit_index"] == 3 and short["exit_price"] == pytest.approx(107 * 1.1, rel=1e-15)


def test_a_new_target_after_a_stop_opens_a_new_position():
    rows = [FLAT, (100, 110, 99, 108), (108, 109, 95, 96), (96, 100, 95, 99), (99, 101, 98, 100), (100,) * 4]
    out = run(rows, [1, 1, 1, 0.5, 0.5, 0.5], trailing_stop=0.1)
    first, second = out.trades
    assert (first["exit_index"], first["exit_price"]) == (2, 99.0)
    assert (second["entry_index"], second["entry_price"], second["closed"]) == (4, 99.0, False)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_trailing_stop_setting_must_be_a_fraction_in_0_1(bad):
    with pytest.raises(UsageError, match="trailing_stop"):
        SimSettings(trailing_stop=bad)


def test_trailing_stop_in_to_dict_only_when_set():
    assert "trailing_stop" not in SimSettings().to_dict()
    assert SimSettings(trailing_stop=0.05).to_dict()["trailing_stop"] == 0.05
    assert SimSettings.from_dict(SimSettings(trailing_stop=0.05).to_dict()) == SimSettings(trailing_stop=0.05)
    assert SimSettings(trailing_stop=0.05) != SimSettings()
