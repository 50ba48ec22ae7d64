"""The plan cache: a large job's keys kept by a digest of everything they are made of, read back
only for exactly those inputs, and the columnar planning, store check and recording of such a job."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import SYMBOLS, run_json, synth_daily

from backtest import plan, spec
from backtest.catalog import Catalog
from backtest.plan import TaskTable, digest, key_inputs, make_tasks
from backtest.run import plan_cache
from backtest.spec import Job, StrategySource, task_key
from backtest.store.results import ResultStore

SRC = StrategySource("h" * 64, "class S: pass", "s.py", "S")


def job(**changes: Any) -> Job:
    params = [{"fast": f, "slow": s} for f in (5, 10, 15) for s in (20, 40)]
    base = Job(SRC, params, [p["slow"] for p in params], ["AAA", "BBB"], 1_577_836_800_000_000_000,
               1_609_459_199_999_999_999, {"cash": 100000.0, "fill": "next_open"})
    return dataclasses.replace(base, **changes)


def parts_for(j: Job, changed: str | None = None) -> dict:
    """Two partitions of every member or symbol for every warm-up; ``changed``'s second hash differs."""
    out = {}
    for s in j.symbols:
        for w in set(j.warmups):
            out[(s, w)] = [(f"bars/symbol={s}/year=2019.parquet", f"{s}-2019"),
                           (f"bars/symbol={s}/year=2020.parquet", f"{s}-2020" + ("x" if s == changed else ""))]
    return out


def keys(tasks: Any) -> list[str]:
    return [t.key for t in tasks]


def files(root: Path) -> list[Path]:
    return sorted(plan_cache.folder(root).glob("*.keys"))


def test_kept_keys_are_the_planners_and_are_read_back(tmp_path: Path) -> None:
    j = job()
    parts = parts_for(j)
    first = plan_cache.tasks(tmp_path, j, parts)
    assert isinstance(first, TaskTable) and len(first) == 12
    assert keys(first) == keys(make_tasks(j, parts)) == first.keys()
    for t in first:  # each task is task_key's, with its own symbol, parameter set and warm-up
        assert t.key == task_key(j, t.symbol, t.params, t.warmup, [h for _, h in parts[(t.symbol, t.warmup)]])
        assert any(t.params is p for p in j.params_list)
    (kept,) = files(tmp_path)
    assert kept.name == f"{digest(key_inputs(j, parts))}.keys"
    stamp = kept.stat().st_mtime_ns
    again = plan_cache.tasks(tmp_path, j, parts)
    assert again.raw == first.raw and kept.stat().st_mtime_ns >= stamp and files(tmp_path) == [kept]
    assert keys(again.take([1, 5])) == [first[1].key, first[5].key] and first[-1].key == first.keys()[-1]


def test_a_symbol_without_parts_is_left_out_in_order(tmp_path: Path) -> None:
    j = job(symbols=["AAA", "BBB", "CCC"])
    parts = parts_for(j)
    del parts[("BBB", 40)]  # BBB lacks the data of the wider warm-up
    tasks = plan_cache.tasks(tmp_path, j, parts)
    assert [(t.symbol, t.warmup) for t in tasks] == [(t.symbol, t.warmup) for t in make_tasks(j, parts)]
    assert keys(tasks) == keys(make_tasks(j, parts)) and len(tasks) == 15


ENGINE = "engine"
VARIANTS: dict[str, Any] = {
    "engine version": ENGINE,
    "a partition's hash": lambda: (job(), parts_for(job(), changed="BBB")),
    "a setting": lambda: (job(settings={"cash": 100000.0, "fill": "close"}), None),
    "a parameter value": lambda: (job(params_list=[{"fast": 5, "slow": 20}, {"fast": 10, "slow": 20},
                                                   {"fast": 15, "slow": 20}, {"fast": 5, "slow": 40},
                                                   {"fast": 10, "slow": 40}, {"fast": 16, "slow": 40}]), None),
    "the strategy's code": lambda: (job(strategy=dataclasses.replace(SRC, hash="i" * 64)), None),
    "the strategy's class": lambda: (job(strategy=dataclasses.replace(SRC, name="T")), None),
    "the start": lambda: (job(start_ns=1_577_836_800_000_000_001), None),
    "the end": lambda: (job(end_ns=1_609_459_199_999_999_998), None),
    "a warm-up": lambda: (job(warmups=[20, 40, 20, 40, 20, 41]), None),
    "the symbols": lambda: (job(symbols=["AAA", "CCC"]), None),
    "the benchmark": lambda: (job(benchmark="SPY", benchmark_parts=(("bars/symbol=SPY/year=2020.parquet", "spy"),)),
                              None),
    "the universe's members": lambda: (job(universe="u", symbols=["AAA", "BBB"]), None),
    "a settings axis": lambda: (job(axes=("stop_loss",), params_list=[{**p, "stop_loss": 0.05} for p in job().params_list]),
                                None),
}


@pytest.mark.parametrize("what", list(VARIANTS))
def test_every_input_of_the_keys_changes_the_digest_and_the_keys(what: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The base job's keys are kept first; a job that differs in one input gets its own keys, never
    the kept ones, and they are the planner's (``task_key``'s) for that job."""
    base = job()
    base_parts = parts_for(base)
    kept = plan_cache.tasks(tmp_path, base, base_parts)
    base_digest = digest(key_inputs(base, base_parts))
    if VARIANTS[what] == ENGINE:
        monkeypatch.setattr(plan, "ENGINE_VERSION", "bumped")
        monkeypatch.setattr(spec, "ENGINE_VERSION", "bumped")
        other, parts = base, base_parts
    else:
        other, parts = VARIANTS[what]()
        parts = parts or parts_for(other)
    assert digest(key_inputs(other, parts)) != base_digest
    got = plan_cache.tasks(tmp_path, other, parts)
    assert keys(got) == keys(make_tasks(other, parts))
    assert keys(got) != keys(kept)  # (tasks the change does not touch keep their keys)
    assert len(files(tmp_path)) == 2
    for t in got:
        hashes = [h for _, h in (other.files(parts, t.symbol, t.warmup) or [])]
        assert t.key == task_key(other, t.symbol, t.params, t.warmup, hashes)


def test_a_damaged_or_mismatched_file_is_never_trusted(tmp_path: Path) -> None:
    j = job()
    parts = parts_for(j)
    right = keys(plan_cache.tasks(tmp_path, j, parts))
    (kept,) = files(tmp_path)
    whole = kept.read_bytes()
    eleven = plan_cache.MAGIC + (11).to_bytes(8, "little") + whole[16:16 + 32 * 11]
    damaged = {
        "a flipped bit": whole[:20] + bytes([whole[20] ^ 1]) + whole[21:],
        "cut short": whole[:-40],
        "eleven keys, checked, under this name": eleven + hashlib.sha256(eleven).digest(),
        "empty": b"",
    }
    for name, data in damaged.items():
        kept.write_bytes(data)
        assert plan_cache.read(kept, len(right)) is None, name
        assert keys(plan_cache.tasks(tmp_path, j, parts)) == right, name
        assert kept.read_bytes() == whole, name  # written again, whole


def test_the_folder_is_kept_within_its_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_cache, "KEEP_BYTES", 2 * (16 + 32 * 12 + 32))
    for cash in (1.0, 2.0, 3.0):
        plan_cache.tasks(tmp_path, job(settings={"cash": cash}), parts_for(job()))
    left = files(tmp_path)
    assert len(left) == 2
    newest = digest(key_inputs(job(settings={"cash": 3.0}), parts_for(job())))
    assert f"{newest}.keys" in {p.name for p in left}


def test_a_large_grid_runs_as_columns(root: Path, sma_path: Path) -> None:
    """A job of ``plan_cache.MIN_TASKS`` tasks or more, through the command line with local
    workers: its keys are kept, its cached rerun records the same task rows (in the same order)
    from the kept keys, a result whose pack entry is set aside as damaged is computed again, and
    changed data of one symbol changes that symbol's keys only."""
    grid = ["--param", "fast=1:100", "--param", "slow=101:270"]  # 17 000 sets × 3 symbols
    args = [sma_path, "--from", "2021", "--to", "2021", *grid, "-w", "2", "--yes"]
    first = run_json(root, *args)
    n = 17_000 * len(SYMBOLS)
    assert n >= plan_cache.MIN_TASKS and (first["status"], first["computed"], first["tasks"]) == ("done", n, n)
    assert len(files(root)) == 1
    again = run_json(root, *args)
    assert (again["status"], again["computed"], again["cached"]) == ("done", 0, n)
    catalog = Catalog(root / "catalog.duckdb")

    def rows(run_id: str) -> list[tuple]:
        with catalog.connect(read_only=True) as con:
            return con.execute("SELECT key, symbol, params, status, attempts, error, worker IS NULL FROM run_tasks "
                               "WHERE run_id = ? ORDER BY rowid", [run_id]).fetchall()

    computed, cached = rows(first["run_id"]), rows(again["run_id"])
    assert len(cached) == n and all(r[3:] == ("done", 0, None, True) for r in cached)
    assert sorted(r[:3] for r in computed) == sorted(r[:3] for r in cached)
    # parameter set by parameter set, each set's symbols in order, as the planner makes them
    params = [json.loads(r[2]) for r in cached]
    assert [r[1] for r in cached[:4]] == [*SYMBOLS, SYMBOLS[0]] and params[0] == params[2] != params[3]
    with catalog.connect(read_only=True) as con:
        (indexed,) = con.execute("SELECT count(*) FROM results").fetchone()
    assert indexed == n
    store = ResultStore(root)
    victim = cached[1234][0]
    store.set_aside(victim)  # listed as damaged in its pack: never served again
    third = run_json(root, *args)
    assert (third["computed"], third["cached"]) == (1, n - 1)
    assert ResultStore(root).read(victim).key == victim
    from backtest.data import Store

    ts, *prices = synth_daily(99, start="2021-01-04", days=250)
    Store(root).import_arrays("BBB", ts, *prices, replace=True)
    fourth = run_json(root, *args)
    assert (fourth["computed"], fourth["cached"]) == (17_000, n - 17_000)
    before = {c[0] for c in cached}
    assert {r[1] for r in rows(fourth["run_id"]) if r[0] not in before} == {"BBB"}
    assert len(files(root)) == 2


def test_other_code_joining_the_keys_is_another_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest covers the byte code that makes keys and their order from the inputs, as loaded:
    a planner that orders or joins them otherwise never reads the keys this one kept."""
    inputs = key_inputs(job(), parts_for(job()))
    before = digest(inputs)

    def layout(inputs: Any) -> Any:  # the same answer, other code
        sets, syms = plan_layout(inputs)
        return sets, syms

    plan_layout = plan.layout
    monkeypatch.setattr(plan, "layout", layout)
    plan._code_digest.cache_clear()
    try:
        assert digest(inputs) != before
    finally:
        monkeypatch.undo()
        plan._code_digest.cache_clear()
    assert digest(inputs) == before


def test_the_code_digest_is_the_same_in_every_process() -> None:
    """Whatever the hash seed, and whether the module came from source or byte code: a rerun in a
    new process finds the keys an earlier one kept."""
    import os
    import subprocess
    import sys

    got = set()
    for seed in ("1", "2"):
        for cache in ("", "1"):
            env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONDONTWRITEBYTECODE": cache}
            out = subprocess.run([sys.executable, "-c", "from backtest import plan; print(plan._code_digest())"],
                                 env=env, capture_output=True, text=True, check=True)
            got.add(out.stdout.strip())
    assert got == {plan._code_digest()}
