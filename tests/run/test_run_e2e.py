"""`bt run` end to end through the CLI: reproducibility, the cache, and what a rerun computes."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from helpers import loaded_by
from store_layout import as_files
from typer.testing import CliRunner

from backtest.catalog import Catalog
from backtest.cli import _register, app
from backtest.store.results import ResultStore

_register()
runner = CliRunner()


def bt(root: Path, *args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, ["--data", str(root), *map(str, args)])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def run_json(root: Path, *args: str) -> dict:
    code, out, err = bt(root, "run", *args, "--json")
    assert code in (0, 1), err
    return json.loads(out.strip().splitlines()[-1])


def results_bytes(root: Path) -> dict[str, bytes]:
    store = ResultStore(root)
    return {k: store.read_bytes(k) for k in store.keys()}


def catalog_results(root: Path) -> list[dict]:
    rows = Catalog(root / "catalog.duckdb")._read("SELECT * EXCLUDE (recorded) FROM results ORDER BY key")
    assert rows and all(r["env"] and r["params"] for r in rows)
    return rows


def test_inline_and_local_give_identical_bytes_twice(root: Path, sma_path: Path, tmp_path: Path) -> None:
    args = [sma_path, "--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=20,40"]
    other = tmp_path / "other"
    shutil.copytree(root, other)
    a = run_json(root, *args, "--executor", "inline://")
    b = run_json(other, *args, "--executor", "local://2")
    assert a["status"] == b["status"] == "done"
    assert a["tasks"] == b["tasks"] == 12 and a["computed"] == 12
    first = results_bytes(root)
    assert first == results_bytes(other) and len(first) == 12
    # the catalog indexes the same: read from each file (inline) or sent as metrics by local workers
    assert catalog_results(root) == catalog_results(other)
    # twice: forced recomputation gives the same bytes again
    c = run_json(other, *args, "--executor", "local://2", "--force")
    assert c["computed"] == 12 and results_bytes(other) == first


def test_rerun_and_changed_parameter_compute_only_what_is_missing(root: Path, sma_path: Path) -> None:
    args = [sma_path, "--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=20", "-w", "2"]
    first = run_json(root, *args)
    assert (first["computed"], first["cached"]) == (6, 0)
    again = run_json(root, *args)
    assert (again["computed"], again["cached"], again["tasks"]) == (0, 6, 6)
    # a run records the hashes of all the data its tasks read, whether computed or cached
    catalog = Catalog(root / "catalog.duckdb")
    hashes = [json.loads(catalog.run(r["run_id"])["data_hashes"]) for r in (first, again)]
    assert hashes[0] == hashes[1] and len(hashes[0]) == 9  # 3 symbols × 2019 (the warm-up), 2020, 2021
    changed = run_json(root, sma_path, "--from", "2020", "--to", "2021", "--param", "fast=5,15",
                       "--param", "slow=20", "-w", "2")
    assert (changed["computed"], changed["cached"]) == (3, 3)


def test_a_cached_rerun_loads_neither_numpy_nor_pyarrow(root: Path, sma_path: Path) -> None:
    """A fully cached rerun only plans from the manifest and records: NumPy's import alone would be
    a fifth of its time. Its task rows reach the catalog as lists (tests/catalog/test_catalog.py)."""
    args = [str(sma_path), "--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=20", "-w", "2"]
    assert run_json(root, *args)["computed"] == 6
    code = ("from backtest.cli import main\n"
            f"try:\n    main(['--data', {str(root)!r}, 'run', *{args!r}, '--json'])\nexcept SystemExit:\n    pass")
    loaded, printed = loaded_by(code, ("numpy", "pyarrow", "numba", "duckdb"))
    summary = json.loads(printed.splitlines()[-1])
    assert (summary["computed"], summary["cached"]) == (0, 6)
    assert loaded == []


def test_reimported_changed_year_recomputes_only_tasks_reading_it(root: Path, sma_path: Path) -> None:
    from helpers import synth_daily

    from backtest.data import Store

    # AAA from 2020 only, BBB reading 2019-2021: change AAA's 2021 bars → only AAA tasks recompute
    args = [sma_path, "--from", "2020-06", "--to", "2021", "--param", "fast=5", "--param", "slow=20", "-w", "1"]
    assert run_json(root, *args)["computed"] == 3
    store = Store(root)
    ts, o, h, low, c, v = synth_daily(0)
    year2021 = ts >= 1609459200_000_000_000
    c2 = c.copy()
    c2[year2021] *= 1.01
    h2 = h.copy()
    h2[year2021] *= 1.01
    store.import_arrays("AAA", ts, o, h2, low, c2, v, replace=True)
    again = run_json(root, *args)
    assert (again["computed"], again["cached"]) == (1, 2)


def test_report_formats_follow_the_contract(root: Path, sma_path: Path, tmp_path: Path) -> None:
    summary = run_json(root, sma_path, "--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param",
                       "slow=20", "-w", "1", "--commission", "0.001")
    rid = summary["run_id"]
    code, out, _ = bt(root, "report", rid, "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}
    assert set(rows[0]) == {"key", "symbol", "params", "status", "metrics"}
    from backtest.catalog import METRICS

    assert set(rows[0]["metrics"]) == set(METRICS)
    assert rows[0]["metrics"]["sharpe"] >= rows[-1]["metrics"]["sharpe"]  # sorted by --sort
    code, out, _ = bt(root, "report", rid, "--format", "csv")
    header = out.splitlines()[0]
    assert header.startswith('"key","symbol","status","param_fast","param_short","param_slow"')
    assert len(out.strip().splitlines()) == 7
    pq = tmp_path / "r.parquet"
    assert bt(root, "report", rid, "--format", "parquet", "--out", pq)[0] == 0
    import pyarrow.parquet as papq

    assert papq.read_table(pq).num_rows == 6
    code, out, _ = bt(root, "report", rid, "--symbol", "AAA", "--params", "fast=5,slow=20", "--trades",
                      "--format", "csv")
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[0] == ('"entry_time","exit_time","side","size","entry_price","exit_price","pnl","return","fees","bars",'
                        '"mae","mfe"')
    assert len(lines) > 2
    code, out, _ = bt(root, "report", rid)
    assert code == 0 and "top 6 by sharpe" in out and "best parameters per symbol" in out
    code, out, _ = bt(root, "runs")
    assert code == 0 and rid in out
    code, out, _ = bt(root, "verify", rid)
    assert code == 0 and "6 tasks" in out and "identical" in out
    table = __import__("backtest").load_run(rid, root)
    assert table.num_rows == 6 and "sharpe" in table.column_names


def test_catalog_rebuild_indexes_the_results_store_again(root: Path, sma_path: Path) -> None:
    """`bt catalog rebuild` re-indexes every stored result (the store is the source of truth): the
    results table comes back as the runs recorded it; a damaged file is left out (the next run
    recomputes it); a forced rerun after it indexes nothing twice."""
    args = [sma_path, "--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=20,40", "-w", "2"]
    assert run_json(root, *args)["computed"] == 12
    before = catalog_results(root)
    cat = Catalog(root / "catalog.duckdb")
    with cat.connect() as con:
        con.execute("DELETE FROM results")
    code, out, err = bt(root, "catalog", "rebuild")
    assert code == 0, err
    assert catalog_results(root) == before
    assert out.strip() == "indexed 12 results"
    as_files(root)  # a store made before packs: a file a task
    store = ResultStore(root)
    damaged = sorted(store.keys())[0]
    store.path(damaged).write_bytes(store.read_bytes(damaged)[:-1] + b"x")
    # what workers killed mid-write leave: an old temporary file goes, a fresh one may be a live write
    old, fresh = (store.path(damaged).parent / f".tmp-{n}-1-0.res" for n in (99999991, 99999992))
    old.write_bytes(b"half a result")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    fresh.write_bytes(b"being written")
    code, out, err = bt(root, "catalog", "rebuild")
    assert code == 0 and "Traceback" not in err
    assert "indexed 11 results" in out and "removed 1 leftover temporary file" in out
    assert f"left out 1 damaged result file(s) ({damaged[:12]})" in " ".join(err.split())
    assert not old.exists() and fresh.exists()
    assert catalog_results(root) == [r for r in before if r["key"] != damaged]
    assert run_json(root, *args, "--force")["computed"] == 12
    assert catalog_results(root) == before


def test_verify_catches_a_tampered_result(root: Path, sma_path: Path) -> None:
    from backtest.store.results import decode, encode

    rid = run_json(root, sma_path, "--from", "2020", "--to", "2021", "--param", "fast=5", "--param", "slow=20",
                   "-w", "1", "--symbols", "AAA")["run_id"]
    store = ResultStore(root)
    (key,) = store.keys()
    rec = decode(store.read_bytes(key))
    store.write(key, encode(rec.key, rec.symbol, rec.params, {**rec.metrics, "sharpe": 99.0}, rec.trades, rec.env))
    code, out, _ = bt(root, "verify", rid)
    assert code == 1 and "1 of 1 tasks differ" in out


def test_failures_are_recorded_and_logged(root: Path, faulty: Path) -> None:
    summary = run_json(root, faulty, "--from", "2020", "--param", "n=6:8", "--param", "mode=raise", "-w", "2")
    assert summary["status"] == "failed" and summary["failed"] == 3 and summary["computed"] == 6
    code, out, _ = bt(root, "run", faulty, "--from", "2020", "--param", "n=6:8", "--param", "mode=raise", "--json")
    assert code == 1
    again = json.loads(out)
    assert (again["cached"], again["failed"], again["computed"]) == (6, 3, 0)  # only the failures were retried
    code, out, _ = bt(root, "logs", summary["run_id"])
    assert "boom at n=7" in out and "faulty.py" in out
    code, out, _ = bt(root, "report", summary["run_id"])
    assert "3 failed" in out


def test_strategy_output_is_captured(root: Path, faulty: Path) -> None:
    rid = run_json(root, faulty, "--from", "2021", "--param", "mode=print", "--symbols", "AAA", "-w", "1")["run_id"]
    code, out, _ = bt(root, "logs", rid)
    assert "hello from n=5" in out


@pytest.fixture(scope="module")
def ran(market: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("ran") / "bt"
    shutil.copytree(market, root)
    sma = Path(__file__).resolve().parents[2] / "strategies" / "sma_cross.py"
    rid = run_json(root, sma, "--from", "2021", "--param", "fast=5", "--param", "slow=20", "--symbols", "AAA",
                   "--executor", "inline://")["run_id"]
    return root, rid


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.py"], "missing.py"),
        (["run", "{sma}", "--param", "fsat=5"], 'Did you mean "fast"?'),
        (["run", "{sma}", "--param", "fast=5:1:0"], "fast"),
        (["run", "{sma}", "--from", "2024", "--to", "2020"], "--from 2024 is after --to 2020"),
        (["run", "{sma}", "--from", "2030", "--to", "2031"], "2030"),
        (["run", "{sma}", "--symbols", "AAB"], 'Did you mean "AAA"?'),
        (["run", "{sma}", "--universe", "{empty}"], "lists no symbols"),
        (["run", "{sma}", "--executor", "ftp://x"], 'unknown executor scheme "ftp://"'),
        (["run", "{sma}", "--workers", "0"], "--workers must be at least 1"),
        (["run", "{sma}", "--workers", "2", "--executor", "ssh://somehost"], "--workers is for local runs"),
        (["run", "{sma}", "--workers", "2", "--hosts", "{empty}"], "set cores=N on a host's line"),
        (["run", "{sma}", "--executor", "local://0"], "whole number ≥ 1"),
        (["run", "{sma}", "--max-memory", "lots"], "is not a size"),
        (["report", "nosuchrun"], 'unknown run "nosuchrun"'),
        (["report", "{rid}", "--sort", "sharp"], 'Did you mean "sharpe"?'),
        (["run", "{syntax}"], "syntax.py:3: syntax error"),
        (["run", "{noclass}"], "no Strategy"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_records_nothing(ran: tuple[Path, str], sma_path: Path, tmp_path: Path,
                                                          args: list[str], message: str) -> None:
    from backtest.catalog import Catalog

    root, rid = ran
    before = len(Catalog(root / "catalog.duckdb").runs())
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    (tmp_path / "syntax.py").write_text("from backtest.strategy import Strategy\n\nclass S(Strategy:\n    pass\n")
    (tmp_path / "noclass.py").write_text("x = 1\n")
    subs = {"{sma}": str(sma_path), "{empty}": str(tmp_path / "empty.txt"), "{rid}": rid,
            "{syntax}": str(tmp_path / "syntax.py"), "{noclass}": str(tmp_path / "noclass.py")}
    code, out, err = bt(root, *[subs.get(a, a) for a in args])
    assert code == 2, (out, err)
    assert message in err
    assert "Traceback" not in err + out
    assert len([line for line in err.strip().splitlines() if line.strip()]) <= 2, err
    assert len(Catalog(root / "catalog.duckdb").runs()) == before
    assert not (root / "grids").exists() or len(list((root / "grids").iterdir())) == 1  # only the good run's


def test_a_write_near_the_end_waits_a_little_for_the_runs_last_rows():
    """``_LastRows``: the catalog write started near a run's end takes the last rows when they come
    while it waits (bounded), and goes on at once when none will come."""
    import threading
    import time

    from backtest.run import record as run_mod

    last = run_mod._LastRows()
    assert last.take() is None  # not near the end: no waiting
    last.expect()
    threading.Timer(0.05, last.post, args=(("rows",),)).start()
    t0 = time.monotonic()
    assert last.take() == ("rows",) and last.taken
    assert time.monotonic() - t0 < run_mod.LAST_ROWS_WAIT

    last = run_mod._LastRows()
    last.expect()
    threading.Timer(0.05, last.none_coming).start()
    t0 = time.monotonic()
    assert last.take() is None and not last.taken
    assert time.monotonic() - t0 < run_mod.LAST_ROWS_WAIT

    last = run_mod._LastRows()
    last.expect()
    t0 = time.monotonic()
    assert last.take() is None  # nothing came in time: the write commits without them
    assert time.monotonic() - t0 >= run_mod.LAST_ROWS_WAIT * 0.9
