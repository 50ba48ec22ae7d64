"""A result damaged on disk or swapped with another task's is never served: not as a cache hit,
not as a report's trades, not by a catalog rebuild; in a pack or in a single file of a store made
before packs (``store_layout.as_files``). Real files, real runs, real damage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from store_layout import as_files, damage_entry
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
    as_files(root)
    store = ResultStore(root)
    a, b = sorted(store.keys())[:2]
    pa, pb = store.path(a), store.path(b)
    da, db = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(db)  # each file now holds the other task's (valid, checksummed) result
    pb.write_bytes(da)

    again, err = run(root, sma_path)
    assert (again["computed"], again["cached"]) == (2, 2)
    assert f"result {a[:12]} holds the result of another task ({b[:12]})" in " ".join(err.split())
    store = ResultStore(root)
    assert {k: store.read_bytes(k) for k in store.keys()} == clean
    assert sorted(p.name for p in store.dir.rglob("*.damaged")) == sorted([f"{a}.res.damaged", f"{b}.res.damaged"])


def _damage_in_place(root: Path, key: str, packed: bool) -> None:
    if packed:
        damage_entry(root, key)
        return
    path = ResultStore(root).path(key)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16  # 16 bytes overwritten, size kept
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("packed", [True, False], ids=["pack", "file"])
def test_a_result_damaged_in_place_is_refused_when_read_then_computed_again(
        root: Path, sma_path: Path, tmp_path: Path, packed: bool) -> None:
    clean = clean_copy(root, sma_path, tmp_path)
    first, _ = run(root, sma_path)
    if not packed:
        as_files(root)
    rows = Catalog(root / "catalog.duckdb").task_rows(first["run_id"])
    row = next(r for r in rows if r["symbol"] == "AAA" and json.loads(r["params"])["fast"] == 5)
    key = row["key"]
    code, good_csv, _ = trades_csv(root, first["run_id"], "AAA", 5)
    assert code == 0 and good_csv.count("\n") > 2
    _damage_in_place(root, key, packed)

    code, out, err = trades_csv(root, first["run_id"], "AAA", 5)
    assert code != 0 and "Traceback" not in out + err
    said = "is damaged in its pack (checksum mismatch)" if packed else "is damaged (checksum mismatch)"
    assert f"result {key[:12]} {said}; it was set aside" in " ".join(err.split())
    assert not ResultStore(root).has(key)  # set aside: the next run computes it again
    again, _ = run(root, sma_path)
    assert (again["computed"], again["cached"]) == (1, 3)
    assert ResultStore(root).read_bytes(key) == clean[key]
    code, csv_again, _ = trades_csv(root, again["run_id"], "AAA", 5)
    assert code == 0 and csv_again == good_csv
    if packed:  # bt gc drops the damaged entry (its pack is written again without it)
        code, out, err = bt(root, "gc")
        assert code == 0, err
        store = ResultStore(root)
        assert not list(store.packs_dir.glob("*.bad")) and {k: store.read_bytes(k) for k in store.keys()} == clean


def test_a_pack_whose_index_is_damaged_is_set_aside_whole_and_its_tasks_computed_again(
        root: Path, sma_path: Path, tmp_path: Path) -> None:
    clean = clean_copy(root, sma_path, tmp_path)
    run(root, sma_path)
    packs = sorted(ResultStore(root).packs_dir.glob("*.pack"))
    victim = packs[0]
    data = bytearray(victim.read_bytes())
    data[-60] ^= 0x01  # inside the index (just before the footer)
    victim.write_bytes(bytes(data))
    lost = len(clean) - len(ResultStore(root).keys())
    assert lost > 0 and victim.with_name(victim.name + ".damaged").exists()
    again, _ = run(root, sma_path)
    assert (again["computed"], again["cached"]) == (lost, len(clean) - lost)
    store = ResultStore(root)
    assert {k: store.read_bytes(k) for k in store.keys()} == clean


def test_a_mixed_store_of_files_and_packs_reads_whole(root: Path, sma_path: Path, tmp_path: Path) -> None:
    clean = clean_copy(root, sma_path, tmp_path)
    only_aaa = [a if a != "AAA,BBB" else "AAA" for a in ARGS]
    code, _, err = bt(root, "run", sma_path, *only_aaa)
    assert code == 0, err
    as_files(root)  # AAA's results as a store made before packs holds them; BBB's then go to a pack
    again, _ = run(root, sma_path)
    assert (again["computed"], again["cached"]) == (2, 2)
    store = ResultStore(root)
    assert len(list(store.packs_dir.glob("*.pack"))) == 1 and len(list(store.dir.glob("*/*.res"))) == 2
    assert {k: store.read_bytes(k) for k in store.keys()} == clean
    code, out, err = bt(root, "verify", again["run_id"])
    assert code == 0, out + err
    # bt gc packs the files of the old layout: the same bytes, served from packs only
    code, out, err = bt(root, "gc")
    assert code == 0 and "packed 2 result file(s)" in " ".join(out.split()), out + err
    store = ResultStore(root)
    assert not list(store.dir.glob("*/*.res")) and len(list(store.packs_dir.glob("*.pack"))) == 2
    assert {k: store.read_bytes(k) for k in store.keys()} == clean
    assert run(root, sma_path)[0]["cached"] == 4


def test_catalog_rebuild_after_a_swap_leaves_a_catalog_that_agrees_with_the_store(
        root: Path, sma_path: Path, tmp_path: Path) -> None:
    clean = clean_copy(root, sma_path, tmp_path)
    run(root, sma_path)
    as_files(root)
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
    store = ResultStore(root)
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
