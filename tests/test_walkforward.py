"""Walk-forward specs, folds and the selection rule (the pure part, ``backtest.walkforward``)."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from backtest.errors import UsageError
from backtest.plan import parse_range
from backtest.walkforward import choose, fmt_day, make_folds, parse_walk_forward

METRICS = ["total_return", "sharpe", "calmar", "volatility", "max_drawdown", "trades"]


def wf(text=None, holdout=None, anchored=False, select=None, min_trades=None):
    return parse_walk_forward(text, holdout, anchored, select, min_trades, METRICS)


def days(folds):
    return [(fmt_day(f.train_from), fmt_day(f.train_to), fmt_day(f.test_from), fmt_day(f.test_to)) for f in folds]


def test_rolling_folds_follow_each_other_and_the_last_is_cut_at_the_range_end():
    start, end = parse_range("2015", "2020-06")
    folds = make_folds(wf("train=3y,test=1y"), start, end)
    assert days(folds) == [
        ("2015-01-01", "2017-12-31", "2018-01-01", "2018-12-31"),
        ("2016-01-01", "2018-12-31", "2019-01-01", "2019-12-31"),
        ("2017-01-01", "2019-12-31", "2020-01-01", "2020-06-30"),  # ends mid-window: shorter
    ]
    # the ns bounds are exactly what `--from D1 --to D2` gives, so the keys are those of plain runs
    for f, (a, b, c, d) in zip(folds, days(folds), strict=True):
        assert (f.train_from, f.train_to) == parse_range(a, b)
        assert (f.test_from, f.test_to) == parse_range(c, d)


def test_anchored_and_step():
    start, end = parse_range("2015", "2019")
    anchored = days(make_folds(wf("train=2y,test=1y", anchored=True), start, end))
    assert [a for a, *_ in anchored] == ["2015-01-01"] * 3
    assert [b for _, b, *_ in anchored] == ["2016-12-31", "2017-12-31", "2018-12-31"]
    half = days(make_folds(wf("train=2y,test=1y,step=6m"), start, end))
    assert [c for *_, c, _ in half] == ["2017-01-01", "2017-07-01", "2018-01-01", "2018-07-01", "2019-01-01",
                                        "2019-07-01"]
    assert half[0][3] == "2017-12-31" and half[-1][3] == "2019-12-31"  # overlapping tests, cut at the end
    month_end = days(make_folds(wf("train=1m,test=1m"), *parse_range("2020-01-31", "2020-04-30")))
    assert month_end[0][2:] == ("2020-02-29", "2020-03-28")  # a month after Jan 31 is Feb 29 (clamped)


def test_bar_windows_count_the_timeline():
    ts = np.datetime64("2024-01-02T14:30", "ns").astype(np.int64) + np.arange(1000, dtype=np.int64) * 60_000_000_000
    folds = make_folds(wf("train=300b,test=100b"), int(ts[0]), int(ts[-1]), ts)
    assert len(folds) == 7
    assert (folds[0].train_from, folds[0].train_to, folds[0].test_from, folds[0].test_to) == (
        ts[0], ts[299], ts[300], ts[399])
    assert folds[-1].test_from == ts[900] and folds[-1].test_to == ts[999]
    cut = make_folds(wf("train=300b,test=400b,step=250b", anchored=True), int(ts[0]), int(ts[-1]), ts)
    assert [f.test_from for f in cut] == [ts[300], ts[550], ts[800]] and cut[-1].test_to == ts[999]
    assert all(f.train_from == ts[0] for f in cut)


def test_holdout_is_one_fold():
    start, end = parse_range("2015", "2024")
    (f,) = make_folds(wf(holdout="2022"), start, end)
    assert days([f]) == [("2015-01-01", "2021-12-31", "2022-01-01", "2024-12-31")]
    (g,) = make_folds(wf(holdout="2020-07-01"), start, end)
    assert fmt_day(g.train_to) == "2020-06-30" and fmt_day(g.test_from) == "2020-07-01"


@pytest.mark.parametrize(("args", "match"), [
    (dict(text="train=0y,test=1y"), "at least 1 year"),
    (dict(text="train=3y,test=0m"), "at least 1 month"),
    (dict(text="train=3w,test=1y"), 'unknown unit "w"'),
    (dict(text="train=3y"), "needs test="),
    (dict(text="trian=3y,test=1y"), 'Did you mean "train"'),
    (dict(text="train=3y,test=100b"), "do not mix"),
    (dict(text="train=3y,test=1y", holdout="2022"), "either --walk-forward or --holdout"),
    (dict(text="train=3y,test=1y", select="sharp"), 'unknown metric "sharp" for --select. Did you mean "sharpe"'),
    (dict(anchored=True), "--anchored goes with --walk-forward"),
    (dict(text="train=3y,test=1y", min_trades=-1), "--min-trades must be 0 or more"),
])
def test_bad_specs_are_one_clear_line(args, match):
    with pytest.raises(UsageError, match=match) as err:
        wf(**args)
    assert "\n" not in str(err.value)


def test_ranges_without_a_test_window_and_holdouts_outside_the_range():
    start, end = parse_range("2015", "2016")
    with pytest.raises(UsageError, match="leaves no test window"):
        make_folds(wf("train=2y,test=1y"), start, end)
    with pytest.raises(UsageError, match="outside the range"):
        make_folds(wf(holdout="2018"), start, end)
    with pytest.raises(UsageError, match="outside the range"):
        make_folds(wf(holdout="2015"), start, end)  # nothing to train on before it
    with pytest.raises(UsageError, match="not a date"):
        make_folds(wf(holdout="soon"), start, end)


def test_choose_best_ties_first_min_trades_and_undefined_values():
    m = lambda **kw: kw  # noqa: E731
    sets = [(m(sharpe=1.0), 5), (m(sharpe=2.0), 1), (m(sharpe=2.0), 9), (None, 0), (m(sharpe=math.nan), 9),
            (m(sharpe=math.inf), 9)]
    assert choose(sets, "sharpe", 0) == 1  # the first of the tie; failed, NaN and inf never win
    assert choose(sets, "sharpe", 2) == 2  # set 1 made too few trades
    assert choose(sets, "sharpe", 10) is None
    vol = [(m(volatility=0.3), 1), (m(volatility=0.1), 1), (m(volatility=0.1), 1)]
    assert choose(vol, "volatility", 0) == 1  # lower is better for volatility
    dd = [(m(max_drawdown=-0.3), 1), (m(max_drawdown=-0.1), 1)]
    assert choose(dd, "max_drawdown", 0) == 1  # a drawdown closer to zero is better


def test_folds_are_utc_days():
    start, end = parse_range("2015", "2016")
    (f,) = make_folds(wf("train=1y,test=1y"), start, end)
    assert dt.datetime.fromtimestamp(f.test_from / 1e9, dt.UTC).isoformat() == "2016-01-01T00:00:00+00:00"
