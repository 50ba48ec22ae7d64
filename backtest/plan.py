"""Planning: a job becomes tasks with content keys, and tasks become shards. Pure: no I/O.

The runner resolves which partitions each (symbol, warm-up) needs and which keys already have
results, and hands them in; this module only computes.

A task's key is ``spec.task_key``'s (``make_tasks`` computes the same bytes faster).

Shards group one symbol's (or one universe's) tasks (one data load; tasks with the same warm-up
share indicators) and
are sized so that there are at least ``4 × workers`` of them when the job allows (load balance),
but a symbol is only split when there are fewer symbols than that. A portfolio's universe is split
into one shard per worker: each shard reads every member's bars, which costs more than the
balance gained by smaller shards.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from typing import Any

from backtest.errors import UsageError
from backtest.hashing import canonical_json, sha256_hex
from backtest.spec import Job, PartsFor, Shard, ShardGroup, ShardSpec, Task
from backtest.version import ENGINE_VERSION

OPEN_START = 0
OPEN_END = 2**63 - 1
SHARDS_PER_WORKER = 4

def _parse_date(text: str, end: bool, flag: str) -> int:
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}", text):
            year = int(text)
            day = dt.datetime(year + 1 if end else year, 1, 1, tzinfo=dt.UTC)
        elif re.fullmatch(r"\d{4}-\d{2}", text):
            y, m = map(int, text.split("-"))
            day = dt.datetime(y, m, 1, tzinfo=dt.UTC)
            if end:
                day = dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=dt.UTC)
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
            if end:
                day += dt.timedelta(days=1)
        else:
            stamp = dt.datetime.fromisoformat(text)
            stamp = stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)
            return int(stamp.timestamp()) * 1_000_000_000 + stamp.microsecond * 1000
    except ValueError as exc:
        raise UsageError(f'{flag} "{text}" is not a date; use a year (2020), a month (2020-03) or a day (2020-03-15)') from exc
    ns = int(day.timestamp()) * 1_000_000_000
    return ns - 1 if end else ns


def parse_range(start: str | None, end: str | None) -> tuple[int, int]:
    """``--from 2020 --to 2024`` → [2020-01-01, 2024-12-31 end of day] in UTC ns; open ends allowed."""
    s = _parse_date(start, False, "--from") if start else OPEN_START
    e = _parse_date(end, True, "--to") if end else OPEN_END
    if s > e:
        raise UsageError(f"--from {start} is after --to {end}; swap them")
    return s, e


def make_tasks(job: Job, parts: PartsFor) -> list[Task]:
    """Every task of the job, parameter set by parameter set in grid order, each set's symbols in
    the job's order; symbols without parts are left out. (Parameter-major: the catalog records a
    run's task rows in this order, and a row group of them then holds a few thousand distinct
    parameter texts rather than every set of a large grid: ~38 bytes a row instead of ~50.)

    The keys are ``task_key``'s, byte for byte: the canonical JSON of a dict with sorted keys is
    the canonical JSON of its values in key order, so the parts shared by many tasks (the job's,
    each symbol's, each parameter set's) are encoded once and joined — a tenth of the time for a
    big grid, which a rerun spends before anything else."""
    import hashlib

    def enc(value: Any) -> str:
        try:
            return canonical_json(value)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"parameters {value} cannot be hashed canonically ({exc}); use plain numbers, "
                             "booleans or strings") from exc

    strategy = enc({"hash": job.strategy.hash, "class": job.strategy.name})
    members = f'"members":{enc(list(job.symbols))},' if job.universe else ""
    bench = f'"benchmark":{enc(job.benchmark_key())},' if job.benchmark else ""
    head = f'{{{bench}"engine":{enc(ENGINE_VERSION)},"from":{enc(job.start_ns)},{members}"params":'
    params_json = [enc(job.strategy_params(p)) for p in job.params_list]
    only = enc(job.settings)
    settings_of: list[str] | None = None  # with settings axes: each parameter set's settings
    if job.axes:
        by_combo: dict[tuple[Any, ...], str] = {}
        settings_of = []
        for p in job.params_list:
            combo = tuple(p[a] for a in job.axes)
            if combo not in by_combo:
                by_combo[combo] = enc(job.task_settings(p))
            settings_of.append(by_combo[combo])
    tasks = []
    sha256 = hashlib.sha256
    symbols = job.task_symbols()
    tails = [f',"strategy":{strategy},"symbol":{enc(symbol)},"to":{enc(job.end_ns)},"warmup":' for symbol in symbols]
    # each (symbol, warm-up)'s (partition hashes, warm-up) as the key's text, or None: no partition
    of_warmups: dict[tuple[str, int], tuple[str, str] | None] = {}
    for i, (params, pj, warmup) in enumerate(zip(job.params_list, params_json, job.warmups, strict=True)):
        sj = settings_of[i] if settings_of is not None else only
        front = f'{head}{pj},"partitions":'
        middle = f',"settings":{sj}'
        for symbol, sym_tail in zip(symbols, tails, strict=True):
            try:
                of_warmup = of_warmups[(symbol, warmup)]
            except KeyError:
                files = job.files(parts, symbol, warmup)
                of_warmup = of_warmups[(symbol, warmup)] = (enc([h for _, h in files]), enc(warmup)) if files else None
            if of_warmup is None:
                continue
            text = f"{front}{of_warmup[0]}{middle}{sym_tail}{of_warmup[1]}}}"
            tasks.append(Task(sha256(text.encode("utf-8")).hexdigest(), symbol, params, warmup))
    return tasks


def make_shards(job: Job, tasks: Sequence[Task], parts: PartsFor, workers: int) -> list[Shard]:
    """Group ``tasks`` (those still to compute) into shards, largest symbols first."""
    by_symbol: dict[str, list[Task]] = {}
    for t in tasks:
        by_symbol.setdefault(t.symbol, []).append(t)
    if not by_symbol:
        return []
    # a universe's shards each read every member (100 symbols: ~0.15 s), so one per worker
    target = (1 if job.universe else SHARDS_PER_WORKER) * max(1, workers)
    chunks_per_symbol = max(1, math.ceil(target / len(by_symbol)))
    shards = []
    for symbol, ts in by_symbol.items():
        ts = sorted(ts, key=lambda t: t.warmup)  # stable: grid order within a warm-up
        size = max(1, math.ceil(len(ts) / chunks_per_symbol))
        for i in range(0, len(ts), size):
            shards.append(_shard(job, symbol, ts[i : i + size], parts))
    shards.sort(key=lambda s: -len(s.keys))
    return shards


def _shard_id(keys: list[str]) -> str:
    """A shard's id: the first 16 hex digits of ``token(keys)``. Task keys are hex digits, which JSON
    writes as they are, so their canonical JSON is joined here without the encoder (a third of
    the time: ~0.17 s of planning a million tasks into 20 000 shards)."""
    return sha256_hex('["' + '","'.join(keys) + '"]')[:16]


def _shard(job: Job, symbol: str, tasks: Sequence[Task], parts: PartsFor) -> Shard:
    groups: dict[int, list[Task]] = {}
    for t in tasks:
        groups.setdefault(t.warmup, []).append(t)
    widest = max(groups)
    keys = [t.key for t in tasks]
    shard_id = _shard_id(keys)
    spec = ShardSpec(
        id=shard_id,
        symbol=symbol,
        strategy_hash=job.strategy.hash,
        start_ns=job.start_ns,
        end_ns=job.end_ns,
        settings=job.settings,
        files=tuple(job.files(parts, symbol, widest) or ()),
        groups=tuple(
            ShardGroup(w, tuple([h for _, h in job.files(parts, symbol, w) or ()]),
                       tuple([(t.key, t.params) for t in gtasks]))
            for w, gtasks in sorted(groups.items())
        ),
        axes=job.axes,
        benchmark=job.benchmark,
        benchmark_files=job.benchmark_parts,
        # a universe's members, each with how many of ``files`` it has, in member order
        members=tuple((m, len(parts[(m, widest)])) for m in job.symbols) if job.universe else (),
    )
    return Shard(shard_id, spec, keys)


def task_index(windows: Sequence[tuple[Job, PartsFor]]) -> dict[str, tuple[Job, PartsFor, Task]]:
    """Every task the jobs of ``windows`` can plan, by key, with the job and partitions that
    plan it: how a recorded task is found again (a walk-forward run's tasks each have a window)."""
    out: dict[str, tuple[Job, PartsFor, Task]] = {}
    for job, parts in windows:
        for t in make_tasks(job, parts):
            out.setdefault(t.key, (job, parts, t))
    return out

