"""Bars are checked against their content hash as they are read: a partition rewritten with other
prices, or a bars-cache copy altered in place, never reaches a result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from backtest.cli import _register, app
from backtest.data.bars_cache import folder
from backtest.store.results import ResultStore

_register()
runner = CliRunner()
ARGS = ["--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=20", "--symbols", "AAA,BBB",
        "--executor", "local://", "--workers", "1"]


def bt(root: Path, *args: object) -> tuple[int, str, str]:
    res = runner.invoke(app, ["--data", str(root), *map(str, args)])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def results(root: Path) -> dict[str, bytes]:
    store = ResultStore(root)
    return {k: store.read_bytes(k) for k in store.keys()}


def rewrite_one_close(root: Path) -> None:
    """AAA's 2020 partition rewritten as valid Parquet with one close ×1.01 (the bars cache gone)."""
    part = root / "bars" / "symbol=AAA" / "year=2020.parquet"
    table = pq.read_table(part)  # keeps the schema's metadata: its embedded content hash too
    close = table["close"].to_numpy().copy()
    close[100] *= 1.01
    table = table.set_column(table.schema.get_field_index("close"), "close", [close])
    pq.write_table(table, part, compression="lz4")
    shutil.rmtree(folder(root), ignore_errors=True)


def test_a_partition_rewritten_with_other_prices_stops_its_tasks(root: Path, sma_path: Path) -> None:
    rewrite_one_close(root)
    code, out, err = bt(root, "run", sma_path, *ARGS, "--json")
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and summary["failed"] == 2 and summary["computed"] == 2  # AAA's two fail, BBB's are done
    logs = bt(root, "logs", summary["run_id"])[1]
    assert "the AAA bars of 2020" in " ".join(logs.split()) and "bt data verify" in logs
    assert len(results(root)) == 2  # nothing stored for AAA


def test_verify_says_the_data_changed_when_a_partition_was_rewritten(root: Path, sma_path: Path) -> None:
    code, out, err = bt(root, "run", sma_path, *ARGS, "--json")
    run_id = json.loads(out.strip().splitlines()[-1])["run_id"]
    rewrite_one_close(root)
    code, out, err = bt(root, "verify", run_id)
    text = " ".join(out.split())
    assert code == 1 and "data changed or removed" in text and "the AAA bars of 2020" in text, out + err
    assert "differ" not in text


def test_an_altered_cache_copy_is_rebuilt_and_results_are_unchanged(root: Path, sma_path: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    assert bt(clean, "run", sma_path, *ARGS)[0] == 0
    assert bt(root, "run", sma_path, *ARGS)[0] == 0
    copies = sorted(folder(root).glob("*.bars"))
    assert copies
    from backtest.data.bars_cache import _HEAD

    for copy in copies:  # one close in every copy, size kept (columns: ts, open, high, low, close, volume)
        data = bytearray(copy.read_bytes())
        n = (len(data) - _HEAD.size) // 48
        at = _HEAD.size + 4 * n * 8 + (n - 50) * 8
        value = np.frombuffer(bytes(data[at:at + 8]), "<f8")[0]
        data[at:at + 8] = np.float64(value * 0.9).tobytes()
        copy.write_bytes(bytes(data))
    code, _, err = bt(root, "run", sma_path, *ARGS, "--force")
    assert code == 0, err
    assert results(root) == results(clean)
    # the copies were made again from their partitions
    from backtest.data import Store

    assert Store(root).verify() == []


def test_verify_and_show_name_a_byte_damaged_partition_without_a_traceback(root: Path) -> None:
    part = root / "bars" / "symbol=BBB" / "year=2020.parquet"
    data = bytearray(part.read_bytes())
    data[2000:2016] = b"\xff" * 16  # inside the column pages: the file still opens, its pages do not decode
    part.write_bytes(bytes(data))
    code, out, err = bt(root, "data", "verify")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and "Traceback" not in out + err
    assert any("symbol=BBB/year=2020.parquet" in line for line in lines)
    assert not any("symbol=AAA" in line or "symbol=CCC" in line for line in lines)  # the others were checked, fine
    code, out, err = bt(root, "data", "show", "BBB")
    assert code == 2 and "symbol=BBB/year=2020.parquet" in err.replace("\n", "") and "damaged" in err
    assert "Traceback" not in out + err
    assert bt(root, "data", "show", "AAA")[0] == 0
