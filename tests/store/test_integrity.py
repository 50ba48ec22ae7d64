"""A result file damaged on disk or swapped with another task's is never served: not as a cache
hit, not as a report's trades, not by a catalog rebuild. Real files, real runs, real damage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from backtest.catalog import Catalog
from backtest.cli import _register, app
from backtest.store.results import ResultStore

_register()
runner = CliRunner()
ARGS = ["--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=20", "--symbols", "AAA,BBB",
        "--executor", "inline://"]


def bt(root: Path, *args: object) -> tuple[int, str, str]:
    res = runner.invoke(app, ["--data", str(root), *map(str, args)])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def run(root: Path, sma: Path, *extra: str) -> tuple[dict, str]:
    code, out, err = bt(root, "run", sma, *ARGS, *extra, "--json")
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def clean_copy(root: Path, sma: Path, tmp_path: Path) -> dict[str, bytes]:
    """The bytes a clean run stores (in a copy of the root)."""
    other = tmp_path / "clean"
    shutil.copytree(root, other)
    run(other, sma)
    store = ResultStore(other)
    return {k: store.read_bytes(k) for k in store.keys()}


def trades_csv(root: Path, rid: str, symbol: str, fast: int) -> tuple[int, str, str]:
    return bt(root, "report", rid, "--symbol", symbol, "--params", f"fast={fast},slow=20", "--trades",
              "--format", "csv")


def test_a_swapped_result_is_no_cache_hit_and_is_computed_again(root: Path, sma_path: Path, tmp_path: Path) -> None:
    clean = clean_copy(root, sma_path, tmp_path)
    first, _ = run(root, sma_path)
    store = ResultStore(root)
    a, b = sorted(store.keys())[:2]
    pa, pb = store.path(a), store.path(b)
    da, db = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(db)  # each file now holds the other task's (valid, checksummed) result
    pb.write_bytes(da)

    again, err = run(root, sma_path)
    assert (again["computed"], again["cached"]) == (2, 2)
    assert f"result {a[:12]} holds the result of another task ({b[:12]})" in " ".join(err.split())
    assert {k: store.read_bytes(k) for k in store.keys()} == clean
    assert sorted(p.name for p in store.dir.rglob("*.damaged")) == sorted([f"{a}.res.damaged", f"{b}.res.damaged"])


def test_a_result_damaged_in_place_is_refused_when_read_then_computed_again(
        root: Path, sma_path: Path, tmp_path: Path) -> None:
    clean = clean_copy(root, sma_path, tmp_path)
    first, _ = run(root, sma_path)
    store = ResultStore(root)
    rows = Catalog(root / "catalog.duckdb").task_rows(first["run_id"])
    row = next(r for r in rows if r["symbol"] == "AAA" and json.loads(r["params"])["fast"] == 5)
    key = row["key"]
    code, good_csv, _ = trades_csv(root, first["run_id"], "AAA", 5)
    assert code == 0 and good_csv.count("\n") > 2
    data = bytearray(store.path(key).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16  # 16 bytes overwritten, size kept
    store.path(key).write_bytes(bytes(data))

    code, out, err = trades_csv(root, first["run_id"], "AAA", 5)
    assert code != 0 and "Traceback" not in out + err
    assert f"result {key[:12]} is damaged (checksum mismatch); it was set aside" in " ".join(err.split())
    assert not store.has(key)  # set aside: the next run computes it again
    again, _ = run(root, sma_path)
    assert (again["computed"], again["cached"]) == (1, 3)
    assert store.read_bytes(key) == clean[key]
    code, csv_again, _ = trades_csv(root, again["run_id"], "AAA", 5)
    assert code == 0 and csv_again == good_csv


def test_catalog_rebuild_after_a_swap_leaves_a_catalog_that_agrees_with_the_store(
        root: Path, sma_path: Path, tmp_path: Path) -> None:
    clean = clean_copy(root, sma_path, tmp_path)
    run(root, sma_path)
    store = ResultStore(root)
    a, b = sorted(store.keys())[:2]
    store.path(a).write_bytes(store.path(b).read_bytes())  # a copy of b's result under a's name

    code, out, err = bt(root, "catalog", "rebuild")
    assert code == 0, err
    assert a[:12] in out + err  # named as left out
    keys = [r["key"] for r in Catalog(root / "catalog.duckdb")._read("SELECT key FROM results")]
    assert sorted(keys) == sorted(k for k in clean if k != a)  # no duplicate row, nothing wrong indexed
    again, _ = run(root, sma_path)
    assert (again["computed"], again["cached"]) == (1, 3)
    assert {k: store.read_bytes(k) for k in store.keys()} == clean
    code, out, _ = bt(root, "report", again["run_id"], "--format", "json")
    assert code == 0 and all(t["metrics"]["final_equity"] is not None for t in json.loads(out))


def test_verify_says_data_changed_or_removed_instead_of_results_differ(root: Path, sma_path: Path) -> None:
    first, _ = run(root, sma_path)
    code, out, err = bt(root, "data", "rm", "BBB", "--yes")
    assert code == 0, err
    code, out, err = bt(root, "verify", first["run_id"])
    text = " ".join(out.split())
    assert code == 1 and "data changed or removed since run" in text and "differ" not in text
    assert "bars/symbol=BBB/year=2020.parquet: removed from the data store" in text
