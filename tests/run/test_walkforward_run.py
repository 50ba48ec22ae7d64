"""Walk-forward runs end to end: every backtest an ordinary cached task, selections made fold by
fold, the report's contract, and what a rerun computes."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import bt_in as bt
from helpers import run_json, synth_daily

GRID = ("--param", "fast=5,10", "--param", "slow=20,40")
WFO = ("--from", "2019", "--to", "2021", "--walk-forward", "train=1y,test=6m", *GRID)


def report(root: Path, run_id: str, *more: str) -> list[dict]:
    code, out, err = bt(root, "report", run_id, "--format", "json", *more)
    assert code == 0, err + out
    return json.loads(out)


def test_folds_selection_and_plain_runs_share_every_task(root: Path, sma_path: Path) -> None:
    first = run_json(root, sma_path, *WFO)
    # 4 folds (tests 2020H1, 2020H2, 2021H1, 2021H2) x 3 symbols x 4 sets in sample, + 12 out of sample
    assert first["tasks"] == 60 and first["computed"] == 60 and first["status"] == "done"
    rows = report(root, first["run_id"])
    assert len(rows) == 12 and {r["symbol"] for r in rows} == {"AAA", "BBB", "CCC"}
    aaa = [r for r in rows if r["symbol"] == "AAA"]
    assert [(r["fold"], r["train_from"], r["train_to"], r["test_from"], r["test_to"]) for r in aaa] == [
        (1, "2019-01-01", "2019-12-31", "2020-01-01", "2020-06-30"),
        (2, "2019-07-01", "2020-06-30", "2020-07-01", "2020-12-31"),
        (3, "2020-01-01", "2020-12-31", "2021-01-01", "2021-06-30"),
        (4, "2020-07-01", "2021-06-30", "2021-07-01", "2021-12-31"),
    ]
    assert set(aaa[0]) == {"symbol", "fold", "train_from", "train_to", "test_from", "test_to", "params",
                           "train_metrics", "test_metrics"}

    # the in-sample tasks are a plain run's over the train window: all cached, same bits
    plain = run_json(root, sma_path, "--from", "2019-07-01", "--to", "2020-06-30", *GRID)
    assert plain["cached"] == 12 and plain["computed"] == 0
    # the chosen set is the best in-sample sharpe, ties to the first in grid order
    plain_rows = report(root, plain["run_id"])
    best = max((r for r in plain_rows if r["symbol"] == "AAA"), key=lambda r: r["metrics"]["sharpe"])
    assert aaa[1]["params"] == best["params"] and aaa[1]["train_metrics"] == best["metrics"]
    # the out-of-sample task is a plain run's with the chosen parameters over the test window
    p = aaa[1]["params"]
    oos = run_json(root, sma_path, "--symbols", "AAA", "--from", "2020-07-01", "--to", "2020-12-31",
                   "--param", f"fast={p['fast']}", "--param", f"slow={p['slow']}")
    assert oos["cached"] == 1 and oos["computed"] == 0
    assert report(root, oos["run_id"])[0]["metrics"] == aaa[1]["test_metrics"]

    # stitched: the folds' test curves chained by their returns
    (stitched,) = report(root, first["run_id"], "--stitched", "--symbol", "AAA")
    chained = math.prod(1 + r["test_metrics"]["total_return"] for r in aaa) - 1
    assert stitched["symbol"] == "AAA" and stitched["folds"] == 4
    assert stitched["metrics"]["total_return"] == pytest.approx(chained, rel=1e-12)
    assert stitched["metrics"]["trades"] == sum(r["test_metrics"]["trades"] for r in aaa)
    assert stitched["param_changes"] == sum(a["params"] != b["params"] for a, b in zip(aaa, aaa[1:], strict=False))
    code, out, _ = bt(root, "report", first["run_id"])
    assert code == 0 and "AAA: folds" in out and "walk-forward efficiency" in out
    code, out, _ = bt(root, "report", first["run_id"], "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("\"symbol\",\"fold\",\"train_from\"") and len(out.splitlines()) == 13
    code, out, err = bt(root, "verify", first["run_id"])
    assert code == 0, out + err
    assert "60 tasks" in out

    # another selection rule: only the out-of-sample tasks whose choice changed are computed
    again = run_json(root, sma_path, *WFO, "--select", "total_return")
    other = report(root, again["run_id"])
    changed = sum(1 for a, b in zip(rows, other, strict=True) if a["params"] != b["params"])
    assert again["computed"] == changed and again["cached"] == 60 - changed
    assert again["tasks"] == 60


def test_appending_a_year_adds_exactly_one_fold(tmp_path: Path, sma_path: Path) -> None:
    from backtest.data import Store

    root = tmp_path / "grow"
    ts, o, h, lo, c, v = synth_daily(7, start="2019-01-01", days=780)
    cut = ts < np.datetime64("2021-01-01", "ns").astype(np.int64)
    Store(root).import_arrays("AAA", ts[cut], o[cut], h[cut], lo[cut], c[cut], v[cut])
    args = ("--walk-forward", "train=1y,test=1y", *GRID)
    first = run_json(root, sma_path, "--from", "2019", "--to", "2020", *args)
    assert first["tasks"] == 5 and first["computed"] == 5  # one fold: 4 in sample + 1 out of sample
    Store(root).import_arrays("AAA", ts[~cut], o[~cut], h[~cut], lo[~cut], c[~cut], v[~cut])
    second = run_json(root, sma_path, "--from", "2019", "--to", "2021", *args)
    # one more fold: its 4 in-sample tasks and 1 out-of-sample task, less any task the first run
    # had already (here fold 1's out-of-sample task is one of fold 2's in-sample tasks: the same
    # window, 2020, and the same parameters), and nothing of the first run is computed again
    assert second["cached"] == first["tasks"] == 5
    assert second["computed"] == second["tasks"] - first["tasks"] and 4 <= second["computed"] <= 5


def test_second_stage_starts_before_the_last_fold_is_trained(root: Path, sma_path: Path) -> None:
    env = dict(os.environ, BT_TRACE="1")
    done = subprocess.run([sys.executable, "-m", "backtest", "--data", str(root), "run", str(sma_path), *WFO,
                           "--executor", "local://2", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("bt-trace")]
    first_oos = next(i for i, ln in enumerate(lines) if "out-of-sample shards" in ln)
    last_shard = max(i for i, ln in enumerate(lines) if re.search(r"shard \w+ done", ln))
    assert first_oos < last_shard  # out-of-sample work was queued while in-sample shards still ran


def test_bar_windows_on_minute_bars(tmp_path: Path, sma_path: Path) -> None:
    from backtest.data import Store

    root = tmp_path / "minute"
    n = 1500
    rng = np.random.default_rng(3)
    ts = np.datetime64("2024-01-02T14:30", "ns").astype(np.int64) + np.arange(n, dtype=np.int64) * 60_000_000_000
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    Store(root).import_arrays("MIN", ts, c, c * 1.001, c * 0.999, c, np.ones(n))
    done = run_json(root, sma_path, "--walk-forward", "train=600b,test=300b", *GRID)
    rows = report(root, done["run_id"])
    assert len(rows) == 3 and done["tasks"] == 3 * 4 + 3
    day = lambda i: str(np.datetime64(int(ts[i]), "ns").astype("datetime64[D]"))  # noqa: E731
    assert [(r["train_from"], r["train_to"], r["test_from"], r["test_to"]) for r in rows] == [
        (day(i - 600), day(i - 1), day(i), day(min(i + 299, n - 1))) for i in (600, 900, 1200)]
    # each window is the one a plain run from its first bar's time to its last's plans
    iso = lambda i: str(np.datetime64(int(ts[i]), "ns").astype("datetime64[s]"))  # noqa: E731
    plain = run_json(root, sma_path, "--from", iso(300), "--to", iso(899), *GRID)
    assert plain["cached"] == 4


def test_a_portfolio_selects_per_universe(root: Path) -> None:
    strategy = Path(__file__).resolve().parents[2] / "strategies" / "inverse_vol.py"
    done = run_json(root, strategy, "--symbols", "AAA,BBB,CCC", "--from", "2019", "--to", "2021",
                    "--holdout", "2021", "--param", "lookback=21,63")
    rows = report(root, done["run_id"])
    assert done["tasks"] == 3 and len(rows) == 1 and rows[0]["symbol"] == "AAA,BBB,CCC"
    assert rows[0]["test_from"] == "2021-01-01" and rows[0]["params"]["lookback"] in (21, 63)


@pytest.mark.parametrize(("args", "match"), [
    (("--walk-forward", "train=5y,test=1y"), "leaves no test window"),
    (("--walk-forward", "train=1y,test=0d"), "at least 1 day"),
    (("--walk-forward", "train=1y,test=1q"), 'unknown unit "q"'),
    (("--walk-forward", "train=1y,test=6m", "--select", "sharp"), 'Did you mean "sharpe"'),
    (("--holdout", "2030"), "outside the range"),
    (("--walk-forward", "train=1y,test=6m", "--holdout", "2020"), "not both"),
])
def test_bad_input_is_one_line_and_records_nothing(root: Path, sma_path: Path, args: tuple, match: str) -> None:
    code, out, err = bt(root, "run", sma_path, "--from", "2019", "--to", "2021", *args)
    assert code == 2, out + err
    assert match in " ".join(err.split()) and "Traceback" not in err
    assert "no runs yet" in bt(root, "runs")[1]


def test_one_parameter_set_is_plain_out_of_sample_evaluation(root: Path, sma_path: Path) -> None:
    code, out, err = bt(root, "run", sma_path, "--from", "2019", "--to", "2021", "--walk-forward",
                        "train=1y,test=1y", "--param", "fast=5", "--param", "slow=20")
    assert code == 0, err
    assert "one parameter set" in err + out
