"""Equity curves are computed again from what the run stored, and must end where its results say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import bt

import backtest
from backtest.report import task_records
from backtest.report.equity import ReproducibilityError, curves, drawdown, positions
from backtest.store.results import ResultStore


def test_every_curve_ends_bit_for_bit_at_the_stored_final_equity(reported: tuple[Path, str]) -> None:
    root, rid = reported
    _, records = task_records(rid, root)
    done = [r for r in records if r["status"] == "done"]
    got = curves(rid, [r["key"] for r in done], root)
    store = ResultStore(root)
    for c in got:
        stored = store.read(c.key)
        assert c.equity[-1].tobytes() == np.float64(stored.metrics["final_equity"]).tobytes()
        assert c.ts.size == c.equity.size == c.close.size == c.position.size == c.drawdown.size
        assert c.drawdown.min() == pytest.approx(stored.metrics["max_drawdown"], abs=1e-12)
        assert c.buy_hold[-1] / c.buy_hold[0] - 1 == pytest.approx(stored.metrics["buy_and_hold_return"], rel=1e-12)
        # the position is what the trades held: long while a long lot is open, short while a short one is
        assert len(c.trades) == len(stored.trades)
        assert np.any(c.position > 0) and np.any(c.position < 0)


def test_positions_follow_the_lots() -> None:
    from backtest.engine.records import TRADE_DTYPE

    t = np.zeros(3, TRADE_DTYPE)
    t["side"], t["size"] = [1, -1, 1], [2.0, 1.5, 1.0]
    t["entry_index"], t["exit_index"], t["closed"] = [1, 4, 7], [4, 6, 9], [True, True, False]
    assert positions(t, 10).tolist() == [0, 2, 2, 2, -1.5, -1.5, 0, 1, 1, 1]
    assert drawdown(np.array([1.0, 2.0, 1.0, 3.0])).tolist() == [0.0, 0.0, -0.5, 0.0]


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_equity_export_of_one_task(reported: tuple[Path, str], tmp_path: Path, fmt: str) -> None:
    root, rid = reported
    out = tmp_path / f"curve.{fmt}"
    code, _, err = bt("--data", root, "report", rid, "--symbol", "aaa", "--params", "fast=10,slow=30,scale=1",
                      "--equity", "--out", out)
    assert code == 0, err
    key = bt("--data", root, "report", rid, "--symbol", "AAA", "--params", "fast=10,slow=30", "--format", "json")[1]
    final = json.loads(key)[0]["metrics"]["final_equity"]
    if fmt == "parquet":
        table = pq.read_table(out)
        assert table.column_names == ["ts", "equity", "drawdown", "position"]
        assert str(table.schema.field("ts").type) == "timestamp[ns, tz=UTC]"
        assert table["equity"][-1].as_py() == final
    elif fmt == "json":
        rows = json.loads(out.read_text())
        assert set(rows[0]) == {"ts", "equity", "drawdown", "position"} and rows[0]["ts"].endswith("Z")
        assert rows[-1]["equity"] == final
    else:
        lines = out.read_text().splitlines()
        assert lines[0].replace('"', "") == "ts,equity,drawdown,position"
        assert float(lines[-1].split(",")[1]) == final


def test_load_equity_returns_a_table(reported: tuple[Path, str]) -> None:
    root, rid = reported
    table = backtest.load_equity(rid, "BBB", {"fast": 5, "slow": 80}, root=root)
    run = backtest.load_run(rid, root)
    row = [r for r in run.to_pylist() if r["symbol"] == "BBB" and r["param_fast"] == 5 and r["param_slow"] == 80]
    assert table["equity"][-1].as_py() == row[0]["final_equity"]
    with pytest.raises(backtest.BtError, match="select 0 tasks"):
        backtest.load_equity(rid, "BBB", {"fast": 6}, root=root)
    with pytest.raises(backtest.BtError, match="select 12 tasks"):
        backtest.load_equity(rid, "BBB", {}, root=root)


def test_a_run_that_no_longer_reproduces_is_refused_loudly(reported: tuple[Path, str], tmp_path: Path) -> None:
    """The saved strategy source is replaced by other code under the same hash (as a faulty disk
    or a hand edit would): the curve computed again ends elsewhere, and the report says so."""
    import shutil

    root, rid = reported
    copy = tmp_path / "bt"
    shutil.copytree(root, copy)
    (saved,) = (copy / "strategies").glob("*.json")
    source = json.loads(saved.read_text())
    source["source"] = source["source"].replace("-self.scale * 0.5", "-self.scale * 0.25")
    saved.write_text(json.dumps(source))
    _, records = task_records(rid, copy)
    key = next(r["key"] for r in records if r["status"] == "done")
    with pytest.raises(ReproducibilityError, match="cannot be reproduced as recorded"):
        curves(rid, [key], copy)
    code, out, err = bt("--data", copy, "report", rid, "--format", "html", "--out", tmp_path / "r.html")
    assert code == 1 and "cannot be reproduced as recorded" in " ".join(err.split()) and "Traceback" not in out + err
    assert not (tmp_path / "r.html").exists()


def test_changed_data_is_named_instead_of_drawing_other_bars(reported: tuple[Path, str], tmp_path: Path) -> None:
    import shutil

    from helpers import synth_daily

    from backtest.data import Store

    root, rid = reported
    copy = tmp_path / "bt"
    shutil.copytree(root, copy)
    Store(copy).import_arrays("AAA", *synth_daily(99), replace=True)
    code, out, err = bt("--data", copy, "report", rid, "--symbol", "AAA", "--params", "fast=5,slow=20", "--equity")
    assert code != 0 and "changed since it ran" in " ".join(err.split()) and "Traceback" not in out + err
