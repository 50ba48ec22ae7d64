"""Portfolio strategies through `bt run` and `bt report`: one task per parameter set over the whole
universe, the same bits on every executor, keys that cover every member's data, clear bad input."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import bt_in as bt
from helpers import run_json, synth_daily

from backtest.store.results import ResultStore

ROTATE = """
import numpy as np
from backtest.engine.universe import ffill, period_ends
from backtest.strategy import PortfolioStrategy


def trailing(close, n):
    last = ffill(close)
    past = np.full_like(last, np.nan)
    past[n:] = last[:-n]
    return last / past - 1.0


class Rotate(PortfolioStrategy):
    lookback = 20
    top = 1
    grid = {"lookback": [10, 20, 40], "top": [1, 2]}

    def weights(self, u):
        ret = self.cached(trailing, u.close, self.lookback)
        w = np.full(ret.shape, np.nan)
        for i in np.flatnonzero(self.cached(period_ends, u.ts, "M")):
            order = [j for j in np.argsort(-ret[i], kind="stable") if not np.isnan(ret[i, j])]
            if order:
                w[i] = 0.0
                w[i, order[: self.top]] = 1.0 / len(order[: self.top])
        return w
"""


@pytest.fixture
def rotate(tmp_path: Path) -> Path:
    path = tmp_path / "rotate.py"
    path.write_text(textwrap.dedent(ROTATE))
    return path


def results(root: Path) -> dict[str, bytes]:
    store = ResultStore(root)
    return {k: store.read_bytes(k) for k in store.keys()}


ARGS = ("--symbols", "AAA,BBB,CCC", "--from", "2020", "--to", "2021", "--commission", "0.001")


def test_one_task_per_parameter_set_same_bits_inline_and_local(root: Path, rotate: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(root, other)
    a = run_json(root, rotate, *ARGS, "--executor", "inline://")
    b = run_json(other, rotate, *ARGS, "--executor", "local://2")
    assert a["tasks"] == b["tasks"] == 6 and a["computed"] == 6 and a["status"] == "done"
    assert results(root) == results(other) and len(results(root)) == 6
    again = run_json(root, rotate, *ARGS)
    assert again["cached"] == 6 and again["computed"] == 0

    code, out, err = bt(root, "report", a["run_id"], "--format", "json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 6
    assert {r["symbol"] for r in rows} == {"AAA,BBB,CCC"}
    assert all(r["metrics"]["orders"] >= 1 and r["metrics"]["trades"] >= 1 for r in rows)
    assert sorted((r["params"]["lookback"], r["params"]["top"]) for r in rows) == [
        (10, 1), (10, 2), (20, 1), (20, 2), (40, 1), (40, 2)]

    code, out, _ = bt(root, "report", a["run_id"], "--params", "lookback=20,top=2", "--trades", "--format", "json")
    trades = json.loads(out)
    assert code == 0 and trades and {t["symbol"] for t in trades} <= {"AAA", "BBB", "CCC"}
    assert all(t["mae"] <= t["mfe"] for t in trades)  # each from its own symbol's bars, computed again
    best = next(r for r in rows if r["params"] == {"lookback": 20, "top": 2})
    assert sum(t["pnl"] for t in trades) == pytest.approx(best["metrics"]["final_equity"] - 100_000, rel=1e-9)

    code, out, _ = bt(root, "report", a["run_id"], "--format", "csv")
    assert code == 0 and '"orders"' in out.splitlines()[0]
    code, out, _ = bt(root, "report", a["run_id"])  # the table: parameter sets and the best set's PnL by symbol
    assert code == 0 and "parameter sets by sharpe" in out and "PnL by symbol of the best set" in out
    assert "portfolio of: 3: AAA, BBB, CCC" in out

    code, out, err = bt(root, "report", a["run_id"], "--params", "lookback=20,top=2", "--equity", "--format", "json")
    curve = json.loads(out)
    assert code == 0, err
    assert curve[-1]["equity"] == best["metrics"]["final_equity"]  # computed again, bit for bit
    assert all(0 <= row["position"] <= 1.0 + 1e-9 for row in curve)  # gross exposure, no leverage

    code, out, err = bt(root, "verify", a["run_id"])
    assert code == 0, out + err


def test_plain_runs_over_a_subset_are_other_tasks_and_a_changed_year_recomputes_what_read_it(
        root: Path, rotate: Path) -> None:
    full = run_json(root, rotate, *ARGS)
    pair = run_json(root, rotate, "--symbols", "AAA,BBB", *ARGS[2:])
    assert full["computed"] == 6 and pair["computed"] == 6  # another universe: other keys
    # CCC's 2021 changes: the three-symbol tasks read it, the pair's do not
    from backtest.data import Store

    ts, o, h, lo, c, v = synth_daily(2)
    in_2021 = ts >= np.datetime64("2021-01-01", "ns").astype(np.int64)
    c = np.where(in_2021, c * 1.01, c)
    Store(root).import_arrays("CCC", ts, o, np.maximum(h, c), np.minimum(lo, c), c, v, replace=True)
    again = run_json(root, rotate, *ARGS)
    assert again["computed"] == 6 and again["cached"] == 0
    pair_again = run_json(root, rotate, "--symbols", "AAA,BBB", *ARGS[2:])
    assert pair_again["cached"] == 6


def test_universe_file_names_the_tasks_and_bad_input_is_one_line(root: Path, rotate: Path, tmp_path: Path) -> None:
    uni = tmp_path / "three.txt"
    uni.write_text("# my universe\nAAA\nBBB  # the second\nCCC\n")
    done = run_json(root, rotate, "--universe", uni, "--from", "2021", "--to", "2021", "--param", "lookback=10")
    assert done["tasks"] == 2
    code, out, _ = bt(root, "report", done["run_id"], "--format", "json")
    assert {r["symbol"] for r in json.loads(out)} == {"three"}

    def fails(*args: object, match: str) -> None:
        code, out, err = bt(root, "run", rotate, *args)
        assert code == 2, out + err
        assert match in " ".join(err.split()) and "Traceback" not in err, err

    bad = tmp_path / "bad.txt"
    bad.write_text("AAA\nBBX\n")
    fails("--universe", bad, match='unknown symbol "BBX". Did you mean "BBB"?')
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    fails("--universe", empty, match="lists no symbols")
    fails("--symbols", "AAA,BBB", "--leverage", "0", match="leverage must be positive")
    fails("--symbols", "AAA,BBB", "--from", "2030", match="every symbol of a portfolio needs bars in the range")
    code, out, _ = bt(root, "runs")
    assert out.count("rotate-") == 1  # only the good run was recorded

    one = run_json(root, rotate, "--symbols", "BBB", "--from", "2021", "--param", "lookback=10")  # one symbol: fine
    assert one["tasks"] == 2 and one["status"] == "done"


def test_weights_over_the_leverage_fail_their_task_naming_the_bar(root: Path, tmp_path: Path) -> None:
    path = tmp_path / "lever.py"
    path.write_text(textwrap.dedent("""
        import numpy as np
        from backtest.strategy import PortfolioStrategy

        class Lever(PortfolioStrategy):
            gross = 1.0
            grid = {"gross": [1.0, 1.5]}

            def weights(self, u):
                return np.full((len(u.ts), len(u.symbols)), self.gross / len(u.symbols))
    """))
    code, out, err = bt(root, "run", path, "--symbols", "AAA,BBB", "--from", "2021", "--json")
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and summary["failed"] == 1 and summary["computed"] == 1
    code, out, _ = bt(root, "report", summary["run_id"], "--format", "json")
    failed = [r for r in json.loads(out) if r["status"] == "failed"]
    assert len(failed) == 1 and "over the leverage limit 1" in failed[0]["error"] and "at bar" in failed[0]["error"]
    levered = run_json(root, path, "--symbols", "AAA,BBB", "--from", "2021", "--leverage", "1.5")
    assert levered["computed"] == 2 and levered["failed"] == 0


def test_a_one_symbol_strategy_refuses_leverage_and_runs_a_universe_file_symbol_by_symbol(
        root: Path, sma_path: Path, tmp_path: Path) -> None:
    uni = tmp_path / "u.txt"
    uni.write_text("AAA\nCCC\n")
    code, _, err = bt(root, "run", sma_path, "--universe", uni, "--leverage", "2")
    assert code == 2 and "--leverage is for portfolio strategies" in err
    done = run_json(root, sma_path, "--universe", uni, "--from", "2021", "--param", "fast=5", "--param", "slow=20")
    assert done["tasks"] == 2
