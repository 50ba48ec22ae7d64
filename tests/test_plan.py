"""The planner: date ranges, task keys, shards."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import pytest

from backtest.errors import UsageError
from backtest.hashing import token
from backtest.plan import OPEN_END, make_shards, make_tasks, parse_range
from backtest.spec import Job, ShardSpec, StrategySource

SRC = StrategySource("h" * 64, "class S: pass", "s.py", "S")


def ns(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp()) * 1_000_000_000


def job(params=None, symbols=("AAA", "BBB"), settings=None) -> Job:
    params = params or [{"fast": f, "slow": 20} for f in (5, 10)]
    return Job(SRC, params, [p["slow"] for p in params], list(symbols), ns(2020, 1, 1), ns(2025, 1, 1) - 1,
               settings or {"cash": 100000.0})


def parts_for(j: Job, hashes=("p1", "p2")) -> dict:
    return {(s, w): [(f"bars/symbol={s}/year={2019 + i}.parquet", f"{s}-{h}") for i, h in enumerate(hashes)]
            for s in j.symbols for w in set(j.warmups)}


def test_range_years_months_days():
    assert parse_range("2020", "2024") == (ns(2020, 1, 1), ns(2025, 1, 1) - 1)
    assert parse_range("2020-03", "2020-03") == (ns(2020, 3, 1), ns(2020, 4, 1) - 1)
    assert parse_range("2020-12", "2020-12")[1] == ns(2021, 1, 1) - 1
    assert parse_range("2020-03-15", "2020-03-15") == (ns(2020, 3, 15), ns(2020, 3, 16) - 1)
    assert parse_range(None, None)[1] == OPEN_END


def test_range_errors_say_what_to_do():
    with pytest.raises(UsageError, match=r"--from 2024 is after --to 2020; swap them"):
        parse_range("2024", "2020")
    with pytest.raises(UsageError, match=r'--to "20x4" is not a date; use a year'):
        parse_range("2020", "20x4")


def test_keys_are_stable_and_depend_on_every_input():
    j = job()
    parts = parts_for(j)
    keys = [t.key for t in make_tasks(j, parts)]
    assert keys == [t.key for t in make_tasks(job(), parts_for(job()))]
    assert len(set(keys)) == 4
    # one changed parameter value changes only the tasks with that value
    j2 = job([{"fast": 5, "slow": 20}, {"fast": 11, "slow": 20}])
    keys2 = [t.key for t in make_tasks(j2, parts_for(j2))]
    assert len(set(keys) & set(keys2)) == 2
    # changed data of one symbol changes only that symbol's keys
    p3 = parts_for(j)
    p3 = {k: ([(v[0][0], v[0][1]), (v[1][0], "changed")] if k[0] == "BBB" else v) for k, v in p3.items()}
    tasks3 = make_tasks(j, p3)
    aaa = [t.key for t in tasks3 if t.symbol == "AAA"]
    bbb = [t.key for t in tasks3 if t.symbol == "BBB"]
    assert aaa == [t.key for t in make_tasks(j, parts) if t.symbol == "AAA"] and not set(bbb) & set(keys)
    # settings are part of the key
    keys4 = [t.key for t in make_tasks(job(settings={"cash": 1.0}), parts)]
    assert not set(keys4) & set(keys)


def test_keys_are_task_key_byte_for_byte():
    """make_tasks joins pre-encoded parts; the keys must be exactly task_key's."""
    from backtest.spec import task_key

    j = job([{"fast": f, "slow": s, "name": "é\"x", "on": True, "w": 0.5} for f in (5, 10) for s in (20, 50)],
            symbols=("AAA", "B/B"), settings={"cash": 1e5, "fill": "next_open", "stop_loss": None})
    parts = parts_for(j)
    for t in make_tasks(j, parts):
        assert t.key == task_key(j, t.symbol, t.params, t.warmup, [h for _, h in parts[(t.symbol, t.warmup)]])
    # settings axes (each set's own settings), and a symbol without the bars of one warm-up
    j = replace(job([{"fast": f, "slow": s, "commission": c} for f in (5, 10) for s in (20, 50) for c in (0.0, 0.001)],
                    symbols=("AAA", "BBB", "CCC")), axes=("commission",))
    parts = parts_for(j)
    del parts[("BBB", 50)]
    tasks = make_tasks(j, parts)
    assert len(tasks) == 8 * 3 - 4
    for t in tasks:
        assert t.key == task_key(j, t.symbol, t.params, t.warmup, [h for _, h in parts[(t.symbol, t.warmup)]])


def test_nan_parameter_cannot_be_hashed():
    j = job([{"x": float("nan"), "slow": 1}])
    with pytest.raises(UsageError, match="cannot be hashed canonically"):
        make_tasks(j, parts_for(j))


def test_shards_group_by_symbol_and_warmup():
    params = [{"fast": f, "slow": s} for s in (20, 40) for f in (5, 10)]
    j = job(params, symbols=[f"S{i}" for i in range(10)])
    parts = parts_for(j)
    tasks = make_tasks(j, parts)
    shards = make_shards(j, tasks, parts, workers=2)  # 10 symbols ≥ 8: one shard per symbol
    assert len(shards) == 10
    assert sorted(k for s in shards for k in s.keys) == sorted(t.key for t in tasks)
    assert all(s.id == s.spec.id == token(s.keys)[:16] for s in shards)
    spec = shards[0].spec
    assert [g.warmup for g in spec.groups] == [20, 40]
    assert all(len(g.tasks) == 2 for g in spec.groups)
    assert ShardSpec.from_wire(json.loads(json.dumps(spec.to_wire()))) == spec  # what travels is all of it


def test_few_symbols_are_split_for_load_balance():
    params = [{"fast": f, "slow": 20} for f in range(1, 41)]
    j = job(params, symbols=["ONE"])
    parts = parts_for(j)
    shards = make_shards(j, make_tasks(j, parts), parts, workers=2)
    assert len(shards) == 8 and {len(s.keys) for s in shards} == {5}
    assert len({s.id for s in shards}) == 8


def test_what_a_worker_is_sent_is_the_same_json_whatever_the_fields_are_called():
    """The shard frame's text, key by key and in order, as workers (and the hosts' bt) read it."""
    from dataclasses import replace

    j = job([{"fast": 5, "slow": 20, "stop_loss": 0.05}], symbols=["AAA"])
    parts = parts_for(j)
    plain = make_shards(j, make_tasks(j, parts), parts, workers=1)[0]
    key = plain.keys[0]
    files = [["bars/symbol=AAA/year=2019.parquet", "AAA-p1"], ["bars/symbol=AAA/year=2020.parquet", "AAA-p2"]]
    head = {"id": plain.id, "symbol": "AAA", "strategy": "h" * 64, "start_ns": j.start_ns, "end_ns": j.end_ns,
            "settings": {"cash": 100000.0}}
    groups = [{"warmup": 20, "parts": ["AAA-p1", "AAA-p2"], "tasks": [[key, j.params_list[0]]]}]

    def text(spec: ShardSpec) -> str:
        return json.dumps(spec.to_wire(), separators=(",", ":"))

    assert text(plain.spec) == json.dumps({**head, "files": files, "groups": groups}, separators=(",", ":"))
    bench = [["bars/symbol=SPY/year=2020.parquet", "SPY-p1"]]
    extra = replace(plain.spec, axes=("stop_loss",), benchmark="SPY",
                    benchmark_files=tuple(map(tuple, bench)), members=(("AAA", 2),))
    assert text(extra) == json.dumps({**head, "axes": ["stop_loss"], "benchmark": ["SPY", bench],
                                      "files": files, "groups": groups, "members": [["AAA", 2]]},
                                     separators=(",", ":"))
    assert ShardSpec.from_wire(json.loads(text(extra))) == extra
    assert extra.partitions() == [*map(tuple, files), *map(tuple, bench)]


def test_a_narrowed_spec_keeps_the_tasks_asked_for_and_drops_empty_groups():
    params = [{"fast": f, "slow": s} for s in (20, 40) for f in (5, 10)]
    j = job(params, symbols=["AAA", "BBB", "CCC", "DDD"])
    parts = parts_for(j)
    spec = make_shards(j, make_tasks(j, parts), parts, workers=1)[0].spec  # one shard a symbol
    first, second = spec.groups
    narrow = spec.narrowed({first.tasks[1][0], *(k for k, _ in second.tasks)})
    assert narrow.groups[0].tasks == first.tasks[1:] and narrow.groups[1] is second
    assert [g.warmup for g in spec.narrowed({second.tasks[0][0]}).groups] == [40]
    assert narrow.files == spec.files and narrow.id == spec.id


def test_shards_of_a_task_table_are_those_of_its_tasks():
    """A large job's tasks stay columns (``TaskTable``), grouped by their columns
    (``table_by_symbol``) into exactly the shards (ids, order, groups, tasks) ``make_shards`` makes
    of the same ``Task``s:
    several warm-ups, a symbol without the bars of the first parameter set's warm-up (symbols then
    come in another order than the job's), a subset of the table (a partly cached run)."""
    from backtest.plan import TaskTable, key_inputs, layout, shards_of_columns, task_keys
    from backtest.run.prepare import table_by_symbol

    params = [{"fast": f, "slow": s} for s in (50, 20, 40) for f in (5, 10, 15)]
    j = job(params, symbols=[f"S{i}" for i in range(5)])
    parts = parts_for(j)
    del parts[("S0", 50)]  # S0 has no task for the first sets: S1 comes first, S0 after S3,
    del parts[("S3", 20)]  # which has as many tasks
    inputs = key_inputs(j, parts)
    table = TaskTable(j, task_keys(inputs), *layout(inputs))
    for workers in (1, 2, 8):
        for tasks in (table, table.take([i for i in range(len(table)) if i % 3])):
            got = shards_of_columns(j, table_by_symbol(j, tasks), parts, workers)
            want = make_shards(j, list(tasks), parts, workers)
            assert [(s.id, s.keys, s.spec) for s in got] == [(s.id, s.keys, s.spec) for s in want]
            assert sorted(k for s in got for k in s.keys) == sorted(tasks.keys())
    assert shards_of_columns(j, table_by_symbol(j, table.take([])), parts, 2) == []


def test_a_shard_frame_is_its_spec_on_the_wire():
    """The ``shard`` frame made with each parameter set's JSON written once (``wire_json``) reads
    back as the spec, for every shard of a job whose sets are shared by its symbols."""
    from backtest.worker.protocol import encode

    params = [{"fast": f, "slow": s, "name": "é\"x", "w": 0.5} for f in (5, 10) for s in (20, 40)]
    j = job(params, symbols=("AAA", "BBB"))
    parts = parts_for(j)
    texts: dict = {}
    for shard in make_shards(j, make_tasks(j, parts), parts, workers=1):
        text = shard.spec.wire_json(texts)
        assert json.loads(text) == json.loads(encode({"t": "shard", "shard": shard.spec.to_wire()})[8:])
        assert ShardSpec.from_wire(json.loads(text)["shard"]) == shard.spec
    assert len(texts) == len(params)  # each set encoded once
