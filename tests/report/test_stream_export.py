"""Exports stream: a large run's json, csv and parquet are written a batch at a time, with the same
bytes as the in-memory export, and the memory they need does not grow with the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import bt_in as bt
from helpers import run_json, write_strategy

FLAT = """
class Flat(Strategy):
    n = 1

    def signals(self, bars):
        return np.where(np.arange(len(bars)) % (self.n + 1) == 0, 1.0, 0.0)
"""


def peak_rss_kb(root: Path, *args: str) -> int:
    """The peak resident memory of one `bt` process, in KB. A small interpreter starts it and
    reports its child's peak: a child forked from this (large) test process would count this
    process's pages too."""
    probe = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
             "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "backtest", "--data", str(root), *args],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ))
    code, peak = out.stdout.split()[-2:]
    assert code == "0", out.stderr
    return int(peak)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, market: Path) -> tuple[Path, str]:
    import shutil

    root = tmp_path_factory.mktemp("big") / "bt"
    shutil.copytree(market, root)
    strategy = write_strategy(root.parent, FLAT, "flat.py")
    done = run_json(root, strategy, "--from", "2021", "--param", "n=1:20000")
    assert done["tasks"] == 60_000 and done["status"] == "done"
    small = run_json(root, strategy, "--from", "2021", "--param", "n=1:300")
    assert small["tasks"] == 900 and small["cached"] == 900
    (root / "small-run").write_text(small["run_id"])
    return root, done["run_id"]


def test_the_streamed_export_is_what_the_in_memory_one_was(big: tuple[Path, str], tmp_path: Path) -> None:
    from backtest import report as rep
    from backtest.report.stream import BATCH

    root, rid = big
    assert BATCH * 10 < 60_000  # many batches
    code, out, err = bt(root, "report", rid, "--format", "json", "--sort", "total_return")
    assert code == 0, err
    _, records = rep.task_records(rid, root)
    ranked = rep.ranked(records, "total_return") + [r for r in records if r["status"] != "done"]
    assert out.strip() == rep.contract_json(ranked)
    code, out, _ = bt(root, "report", rid, "--format", "csv", "--top", "70000", "--sort", "trades")
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    flat = rep.flat_rows(rep.ranked(records, "trades"))
    pacsv.write_csv(pa.Table.from_pylist(flat), buf)
    assert out == buf.getvalue().decode()
    pq_path = tmp_path / "all.parquet"
    code, _, err = bt(root, "report", rid, "--format", "parquet", "--out", pq_path, "--params", "n=77")
    import pyarrow.parquet as pq

    table = pq.read_table(pq_path)
    assert code == 0 and table.num_rows == 3 and set(table["param_n"].to_pylist()) == {77}
    assert json.loads(bt(root, "report", rid, "--format", "json", "--top", "2")[1]) == [
        rep.contract_row(r) for r in rep.ranked(records, "sharpe")[:2]]


def test_memory_does_not_grow_with_the_run(big: tuple[Path, str], tmp_path: Path) -> None:
    """A run 67 times larger needs little more memory to export: DuckDB's sort of the run and a
    batch, ~100-110 MB more for these 60 000 tasks (measured), where holding every row at once
    took ~420 MB more for 120 000 tasks (~210 MB for 60 000)."""
    root, rid = big
    small = (root / "small-run").read_text()
    for fmt in ("json", "csv", "parquet"):
        little = peak_rss_kb(root, "report", small, "--format", fmt, "--out", str(tmp_path / f"small.{fmt}"))
        whole = peak_rss_kb(root, "report", rid, "--format", fmt, "--out", str(tmp_path / f"all.{fmt}"))
        assert whole - little < 160_000, (fmt, little, whole)
    assert len(json.loads((tmp_path / "all.json").read_text())) == 60_000


def test_load_run_filters_in_the_catalog(root: Path, sma_path: Path) -> None:
    import backtest
    from backtest.errors import UsageError

    done = run_json(root, sma_path, "--from", "2021", "--param", "fast=5,10,20", "--param", "slow=40,60")
    everything = backtest.load_run(done["run_id"], root).to_pylist()
    assert len(everything) == 18
    got = backtest.load_run(done["run_id"], root, symbols=["aaa", "BBB"], params={"fast": (6, 20), "slow": [60]},
                            metrics={"trades": (1, None)}, sort="total_return").to_pylist()
    want = [r for r in everything if r["symbol"] in ("AAA", "BBB") and 6 <= r["param_fast"] <= 20
            and r["param_slow"] == 60 and r["trades"] >= 1]
    assert got and sorted(r["key"] for r in got) == sorted(r["key"] for r in want)
    assert [r["total_return"] for r in got] == sorted((r["total_return"] for r in got), reverse=True)
    assert backtest.load_run(done["run_id"], root, params={"short": False}).num_rows == 18
    assert backtest.load_run(done["run_id"], root, status="failed").num_rows == 0
    with pytest.raises(UsageError, match='unknown metric "sharp". Did you mean "sharpe"'):
        backtest.load_run(done["run_id"], root, metrics={"sharp": (1, None)})
    with pytest.raises(UsageError, match="letters, digits and _"):
        backtest.load_run(done["run_id"], root, params={"fast') OR 1=1 --": 1})


def test_the_table_from_the_catalog_is_the_table_from_the_records(root: Path, faulty: Path, tmp_path: Path) -> None:
    """`bt report RUN` asks the catalog for what it shows (counts, top, best per symbol, quantiles,
    failures) instead of loading every task: the same tables, failures and portfolios included."""
    from rich.console import Console

    from backtest import report as rep
    from backtest.catalog import Catalog
    from backtest.report.stream import catalog_view

    strategy = Path(__file__).resolve().parents[2] / "strategies" / "xs_momentum.py"
    code, out, _ = bt(root, "run", faulty, "--from", "2021", "--param", "n=5:9", "--param", "mode=raise", "--json")
    failing = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and failing["failed"] == 3
    portfolio = run_json(root, strategy, "--symbols", "AAA,BBB,CCC", "--from", "2020", "--param", "lookback=21,42")
    catalog = Catalog(root / "catalog.duckdb")

    def text(body: object) -> str:
        import io

        console = Console(width=160, record=True, file=io.StringIO())
        console.print(body)
        return console.export_text()

    for rid in (failing["run_id"], portfolio["run_id"]):
        for sort, top, min_trades in (("sharpe", 10, None), ("volatility", 2, None),
                                      ("max_drawdown_duration", 50, None), ("sharpe", 5, 25), ("win_rate", 3, 28)):
            run, records = rep.task_records(rid, root)
            rep.mark_eligible(records, min_trades)
            from_records = rep.render_run(run, records, sort, top, contrib=rep.portfolio_contrib(records, sort))
            view = catalog_view(catalog, run["run_id"], sort, top, min_trades)
            from_catalog = rep.render_view(run, view, sort, top, contrib=rep.portfolio_contrib(view.top, sort))
            assert text(from_catalog) == text(from_records), (rid, sort, min_trades)
    code, out, _ = bt(root, "report", failing["run_id"])
    assert code == 0 and "3 failed" in out and "boom at n=7" in out


def test_the_json_export_is_the_records_encoded(root: Path, faulty: Path) -> None:
    """The JSON export puts each done task's object together from the catalog's texts (parameters
    as recorded, metrics as DuckDB writes numbers): the bytes json.dumps makes of the records, with
    failed tasks, a portfolio's optional metric, --min-trades' eligible and --top."""
    from backtest import report as rep

    strategy = Path(__file__).resolve().parents[2] / "strategies" / "xs_momentum.py"
    code, out, _ = bt(root, "run", faulty, "--from", "2021", "--param", "n=5:9", "--param", "mode=raise", "--json")
    failing = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and failing["failed"] == 3
    portfolio = run_json(root, strategy, "--symbols", "AAA,BBB,CCC", "--from", "2020", "--param", "lookback=21,42")
    for rid in (failing["run_id"], portfolio["run_id"]):
        _, records = rep.task_records(rid, root)
        for sort, more in (("sharpe", []), ("max_drawdown", ["--min-trades", "3"]), ("trades", ["--top", "4"])):
            code, out, err = bt(root, "report", rid, "--format", "json", "--sort", sort, *more)
            assert code == 0, err
            min_trades = int(more[1]) if more and more[0] == "--min-trades" else None
            rep.mark_eligible(records, min_trades)
            ranked = rep.ranked(records, sort) + [r for r in records if r["status"] != "done"]
            top = int(more[1]) if more and more[0] == "--top" else None
            assert out.strip() == rep.contract_json(ranked[:top]), (rid, sort)
            if rid == portfolio["run_id"]:
                assert '"orders": ' in out
            for r in records:
                r.pop("eligible", None)
