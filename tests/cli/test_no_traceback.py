"""Every command, against what a user or the machine can do to bt's files, answers in lines, never
with a Python traceback nor an "internal error": an empty data root, a damaged catalog, a damaged
result file, a damaged partition, a data root on a full disk. Afterwards the documented repairs
work and a rerun gives a clean run's results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import bt
from store_layout import damage_entry

from backtest.catalog import Catalog
from backtest.store.results import ResultStore

RUN = ["--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=20,40"]


def commands(strategy: Path, tmp: Path) -> list[list[str]]:
    csv = tmp / "more.csv"
    csv.write_text("date,open,high,low,close,volume\n2022-01-03,10,11,9,10.5,100\n2022-01-04,10,11,9,10.5,100\n")
    return [
        ["data", "ls"], ["data", "show", "AAA"], ["data", "verify"], ["run", str(strategy), *RUN], ["runs"], ["report", "latest"], ["report", "latest", "--trades"],
        ["report", "latest", "--format", "json"], ["report", "latest", "--format", "html", "--out", str(tmp / "r.html")],
        ["verify", "latest", "--sample", "2"], ["logs", "latest"], ["compare", "latest", "latest"],
        ["gc", "--dry-run"], ["catalog", "rebuild"], ["runs", "rm", "nosuchrun"], ["gc"],
        ["data", "import", str(csv), "--symbol", "NEW"],
    ]


def sweep(root: Path, strategy: Path, tmp: Path) -> dict[str, tuple[int, str]]:
    """Each command's exit code and output; fails at the first traceback or internal error."""
    seen = {}
    for args in commands(strategy, tmp):
        code, out, err = bt("--data", root, *args)
        text = out + err
        name = " ".join(args[:2])
        assert "Traceback" not in text and "internal error" not in text, f"bt {name}:\n{text[-3000:]}"
        assert code in (0, 1, 2), f"bt {name} exited {code}:\n{text[-2000:]}"
        if code:
            assert text.strip(), f"bt {name} failed without a word"
        seen[name] = (code, text)
    return seen


@pytest.fixture
def ran(root: Path, sma_path: Path) -> Path:
    code, out, err = bt("--data", root, "run", sma_path, *RUN)
    assert code == 0, out + err
    return root


def test_an_empty_data_root(tmp_path: Path, sma_path: Path) -> None:
    seen = sweep(tmp_path / "empty", sma_path, tmp_path)
    assert seen["run " + str(sma_path)][0] == 2 and "bt data demo" in seen["run " + str(sma_path)][1]


def test_a_damaged_catalog_then_rebuild(ran: Path, sma_path: Path, tmp_path: Path) -> None:
    catalog = ran / "catalog.duckdb"
    catalog.write_bytes(os.urandom(8192))
    seen = sweep(ran, sma_path, tmp_path)  # (its catalog rebuild sets the damaged file aside)
    assert "bt catalog rebuild" in seen["runs"][1]
    assert list(ran.glob("catalog.duckdb.damaged-*"))
    code, out, _ = bt("--data", ran, "run", sma_path, *RUN, "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["cached"] == 12


def test_a_damaged_result_and_a_damaged_partition(ran: Path, sma_path: Path, tmp_path: Path) -> None:
    damage_entry(ran, ResultStore(ran).keys()[0])
    part = sorted((ran / "bars").rglob("*.parquet"))[0]
    raw = bytearray(part.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\x00" * 64
    part.write_bytes(bytes(raw))
    shutil.rmtree(ran / "cache", ignore_errors=True)  # the bars cache would still hold the good copy
    seen = sweep(ran, sma_path, tmp_path)
    assert seen["data verify"][0] == 1


@pytest.fixture
def full_disk(tmp_path: Path, market: Path) -> Iterator[tuple[Path, Path]]:
    """A data root on a 24 MB tmpfs holding the test bars; a filler file takes the rest of it."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the full-disk test needs root (to mount a tmpfs) in CI")
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=True)
    try:
        root = mnt / "bt"
        shutil.copytree(market, root)
        filler = mnt / "filler"
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * (1 << 16))
                    fh.flush()
            except OSError:
                pass
        yield root, filler
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_one_line_and_a_rerun_after_freeing_space_completes(
        full_disk: tuple[Path, Path], sma_path: Path, tmp_path: Path) -> None:
    root, filler = full_disk
    seen = sweep(root, sma_path, tmp_path)
    ran = seen["run " + str(sma_path)]
    assert ran[0] != 0 and ("disk is full" in ran[1] or "No space left" in ran[1]), ran[1]
    filler.unlink()
    code, out, err = bt("--data", root, "run", sma_path, *RUN, "--json")
    assert code == 0, out + err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["failed"] == 0
    # the store and the catalog agree with a clean run's
    clean = tmp_path / "clean"
    shutil.copytree(root, clean, ignore=shutil.ignore_patterns("results", "catalog*"))
    code, out, err = bt("--data", clean, "run", sma_path, *RUN, "--json")
    assert code == 0, out + err
    mine = {r["key"]: r["total_return"] for r in Catalog(root / "catalog.duckdb").task_rows(summary["run_id"])}
    theirs = {r["key"]: r["total_return"]
              for r in Catalog(clean / "catalog.duckdb").task_rows(json.loads(out.strip().splitlines()[-1])["run_id"])}
    assert mine == theirs and len(mine) == 12
    for key in mine:
        assert ResultStore(root).read_bytes(key) == ResultStore(clean).read_bytes(key)


def test_an_error_in_bt_itself_is_one_line_and_bt_debug_shows_its_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(A bug cannot be made on demand: one is planted in a function ``bt runs`` calls.)"""
    import backtest.catalog

    def broken(self: object, limit: int) -> list:
        raise ValueError("planted")

    monkeypatch.setattr(backtest.catalog.Catalog, "runs", broken)
    code, out, err = bt("--data", tmp_path, "runs")
    assert code == 1 and err.strip() == ("error: internal error: ValueError: planted (BT_DEBUG=1 shows the "
                                         "traceback); please report it")
    monkeypatch.setenv("BT_DEBUG", "1")
    with pytest.raises(ValueError, match="planted"):
        bt("--data", tmp_path, "runs")
