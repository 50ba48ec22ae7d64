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
import functools
import math
import re
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import CodeType
from typing import Any, overload

from backtest.errors import UsageError
from backtest.hashing import canonical_json, sha256_hex, token
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


def _enc(value: Any) -> str:
    try:
        return canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"parameters {value} cannot be hashed canonically ({exc}); use plain numbers, "
                         "booleans or strings") from exc


def _enc_each(values: list[Any]) -> str:
    """The canonical JSON of the list ``values``; a value that cannot be encoded is named alone."""
    try:
        return canonical_json(values)
    except (TypeError, ValueError):
        for v in values:
            _enc(v)
        raise


@dataclass(frozen=True)
class KeyInputs:
    """Everything the keys of a job's tasks are made of, as the text the keys hold: ``task_keys``
    makes every key from these fields and nothing else, so two jobs with equal ``KeyInputs`` have
    the same keys (``digest`` names them: the plan cache, ``run/plan_cache.py``).

    A key's text is ``head + params[i] + ',"partitions":' + files[0] + ',"settings":' + settings[i]
    + tails[s] + files[1] + "}"`` for parameter set ``i`` and task symbol ``s``, with ``files`` the
    (partition hashes, warm-up) texts of (symbol, the set's warm-up): the canonical JSON of
    ``task_key``'s fields, whose keys sort in that order."""

    #: '{' then the benchmark, engine version, start, universe members (each only if there is one)
    head: str
    #: the canonical JSON list of every parameter set's strategy parameters
    params: str
    #: the canonical JSON of the job's settings, or (``by_set``) the list of each set's
    settings: str
    by_set: bool
    #: what tasks are filed under (symbols, or the universe's name), and each one's text from
    #: the strategy to the warm-up's name
    symbols: tuple[str, ...]
    tails: tuple[str, ...]
    #: each parameter set's warm-up
    warmups: tuple[int, ...]
    #: (symbol, warm-up) -> (the JSON list of its partitions' hashes, the warm-up's JSON), or None
    #: when some partition is not known (its tasks are left out)
    files: tuple[tuple[str, int, tuple[str, str] | None], ...]


def key_inputs(job: Job, parts: PartsFor) -> KeyInputs:
    """What every key of ``job`` over ``parts`` is made of (``KeyInputs``): each value of ``job``
    and ``parts`` that ``task_key`` reads, encoded once."""
    strategy = _enc({"hash": job.strategy.hash, "class": job.strategy.name})
    members = f'"members":{_enc(list(job.symbols))},' if job.universe else ""
    bench = f'"benchmark":{_enc(job.benchmark_key())},' if job.benchmark else ""
    head = f'{{{bench}"engine":{_enc(ENGINE_VERSION)},"from":{_enc(job.start_ns)},{members}"params":'
    params = _enc_each([job.strategy_params(p) for p in job.params_list])
    if job.axes:
        settings = _enc_each([job.task_settings(p) for p in job.params_list])
    else:
        settings = _enc(job.settings)
    symbols = tuple(job.task_symbols())
    tails = tuple(f',"strategy":{strategy},"symbol":{_enc(symbol)},"to":{_enc(job.end_ns)},"warmup":'
                  for symbol in symbols)
    files = []
    for symbol in symbols:
        for warmup in sorted(set(job.warmups)):
            found = job.files(parts, symbol, warmup)
            files.append((symbol, warmup, (_enc([h for _, h in found]), _enc(warmup)) if found else None))
    return KeyInputs(head, params, settings, bool(job.axes), symbols, tails, tuple(job.warmups), tuple(files))


@functools.cache
def _code_digest() -> str:
    """The sha256 of the code, as loaded, that makes keys and their order from ``KeyInputs``
    (and the inputs from a job): a change to how keys are joined is another digest."""
    code = (_enc, _enc_each, key_inputs, layout, task_keys, _split)
    return sha256_hex("\n".join(_code_text(f.__code__) for f in code))


def _code_text(code: CodeType) -> str:
    """A text of ``code`` that only its byte code, names and constants decide (``marshal``'s
    bytes also depend on reference counts; a frozenset's order on the hash seed)."""
    consts = []
    for c in code.co_consts:
        if isinstance(c, CodeType):
            consts.append(_code_text(c))
        elif isinstance(c, frozenset):
            consts.append(repr(sorted(map(repr, c))))
        else:
            consts.append(repr(c))
    return repr((code.co_name, code.co_code.hex(), code.co_names, code.co_varnames, code.co_freevars,
                 code.co_cellvars, code.co_argcount, code.co_kwonlyargcount, code.co_flags, consts))


def digest(inputs: KeyInputs) -> str:
    """The name of the keys ``inputs`` make: the sha256 of every field (the engine version, the
    strategy, the parameter sets, the settings, the symbols, the range, the warm-ups and each
    symbol's partition hashes are all in their texts) and of the code that joins them."""
    return token(["bt-keys-1", _code_digest(), inputs.head, inputs.params, inputs.settings, inputs.by_set,
                  list(inputs.symbols), list(inputs.tails), list(inputs.warmups),
                  [[s, w, list(f) if f is not None else None] for s, w, f in inputs.files]])


def layout(inputs: KeyInputs) -> tuple[array[int], array[int]]:
    """(parameter set, task symbol) of each task, in the order of ``task_keys``: parameter set by
    parameter set, each set's symbols in the job's order; symbols without parts left out."""
    present: dict[int, list[int]] = {}
    index = {s: i for i, s in enumerate(inputs.symbols)}
    for symbol, warmup, found in inputs.files:
        row = present.setdefault(warmup, [])
        if found is not None:
            row.append(index[symbol])
    sets, syms = array("i"), array("i")
    for i, warmup in enumerate(inputs.warmups):
        row = present[warmup]
        sets.extend([i] * len(row))
        syms.extend(row)
    return sets, syms


def task_keys(inputs: KeyInputs) -> bytes:
    """The raw sha256 (32 bytes) of every task's key text, in ``layout``'s order, joined: the keys
    are ``task_key``'s, byte for byte. The canonical JSON of a dict with sorted keys is the
    canonical JSON of its values in key order, so the parts shared by many tasks (the job's, each
    symbol's, each parameter set's) are encoded once and joined — a tenth of the time for a big
    grid. Each set's texts are cut out of ``inputs``' lists (checked to be those very lists)."""
    import hashlib

    params = _split(inputs.params)
    settings = _split(inputs.settings) if inputs.by_set else None
    files = {(s, w): f for s, w, f in inputs.files}
    sha256 = hashlib.sha256
    out = bytearray()  # (not a list of a million small bytes objects: ~70 MB more at a first run)
    append = out.extend
    # each symbol's text after the partitions' name, by warm-up: encoded once each (with settings
    # axes, each set's settings differ: its own)
    tails: dict[int, list[bytes | None]] = {}
    for i, (pj, warmup) in enumerate(zip(params, inputs.warmups, strict=True)):
        sj = settings[i] if settings is not None else inputs.settings
        rest = tails.get(warmup) if settings is None else None
        if rest is None:
            rest = tails[warmup] = [
                None if (f := files[(symbol, warmup)]) is None else f'{f[0]},"settings":{sj}{sym_tail}{f[1]}}}'.encode()
                for symbol, sym_tail in zip(inputs.symbols, inputs.tails, strict=True)]
        front = sha256(f'{inputs.head}{pj},"partitions":'.encode())  # hashed once for every symbol's key
        for tail in rest:
            if tail is not None:
                key = front.copy()
                key.update(tail)
                append(key.digest())
    return bytes(out)


def _split(text: str) -> list[str]:
    """The canonical JSON texts of the items of the canonical JSON list ``text``, checked: joined
    again they are ``text``."""
    import json

    items = [canonical_json(v) for v in json.loads(text)]
    if "[" + ",".join(items) + "]" != text:
        raise AssertionError("a key's input does not read back as its own text")
    return items


class TaskTable(Sequence[Task]):
    """A job's tasks as columns: each task's raw key (32 bytes, in one ``bytes``), parameter set
    and task symbol. A ``Task`` is made only when one is asked for (a fully cached rerun of a
    million tasks needs none: its keys go to the store and the catalog as columns)."""

    def __init__(self, job: Job, raw: bytes, sets: array[int], syms: array[int]) -> None:
        if len(raw) != 32 * len(sets) or len(sets) != len(syms):
            raise ValueError("a task table's columns differ in length")
        self.job = job
        self.raw = raw
        self.sets = sets
        self.syms = syms
        self.symbols = job.task_symbols()
        self._hex: list[str] | None = None

    def __len__(self) -> int:
        return len(self.sets)

    def keys(self) -> list[str]:
        """Every task's key (hex), in order."""
        if self._hex is None:
            text = self.raw.hex()
            self._hex = [text[i:i + 64] for i in range(0, len(text), 64)]
        return self._hex

    def _task(self, i: int) -> Task:
        s = self.sets[i]
        return Task(self.keys()[i], self.symbols[self.syms[i]], self.job.params_list[s], self.job.warmups[s])

    @overload
    def __getitem__(self, i: int) -> Task: ...
    @overload
    def __getitem__(self, i: slice) -> list[Task]: ...
    def __getitem__(self, i: int | slice) -> Task | list[Task]:
        if isinstance(i, slice):
            return [self._task(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._task(i)

    def __iter__(self) -> Iterator[Task]:
        keys, symbols, params, warmups = self.keys(), self.symbols, self.job.params_list, self.job.warmups
        for key, s, y in zip(keys, self.sets, self.syms, strict=True):
            yield Task(key, symbols[y], params[s], warmups[s])

    def take(self, rows: Sequence[int]) -> TaskTable:
        """The tasks of ``rows`` (ascending), as a table."""
        raw, sets, syms = self.raw, self.sets, self.syms
        out = TaskTable(self.job, b"".join([raw[32 * r:32 * r + 32] for r in rows]), array("i", [sets[r] for r in rows]),
                        array("i", [syms[r] for r in rows]))
        if self._hex is not None:
            out._hex = [self._hex[r] for r in rows]
        return out


def keys_of(tasks: Sequence[Task]) -> list[str]:
    """The keys of ``tasks`` (a list, or a ``TaskTable``'s, made once), in order."""
    return tasks.keys() if isinstance(tasks, TaskTable) else [t.key for t in tasks]


def make_tasks(job: Job, parts: PartsFor) -> list[Task]:
    """Every task of the job, parameter set by parameter set in grid order, each set's symbols in
    the job's order; symbols without parts are left out. (Parameter-major: the catalog records a
    run's task rows in this order, and a row group of them then holds a few thousand distinct
    parameter texts rather than every set of a large grid: ~38 bytes a row instead of ~50.)

    The keys are ``task_key``'s, byte for byte (``task_keys``)."""
    inputs = key_inputs(job, parts)
    sets, syms = layout(inputs)
    return list(TaskTable(job, task_keys(inputs), sets, syms))


def make_shards(job: Job, tasks: Sequence[Task], parts: PartsFor, workers: int) -> list[Shard]:
    """Group ``tasks`` (those still to compute) into shards, largest symbols first."""
    grouped: dict[str, list[Task]] = {}
    for t in tasks:
        grouped.setdefault(t.symbol, []).append(t)
    by_symbol = {}
    for symbol, ts in grouped.items():
        ts = sorted(ts, key=lambda t: t.warmup)
        by_symbol[symbol] = ([t.key for t in ts], [t.params for t in ts], [t.warmup for t in ts])
    return shards_of_columns(job, by_symbol, parts, workers)


#: a symbol's tasks as columns: (keys, parameter sets, warm-ups), by warm-up, grid order within one
Columns = tuple[list[str], list[dict[str, Any]], list[int]]


def shards_of_columns(job: Job, by_symbol: Mapping[str, Columns], parts: PartsFor, workers: int) -> list[Shard]:
    """``make_shards`` of tasks given as columns by symbol (in the order symbols first come among
    the tasks), each symbol's ordered by warm-up (stably): a large job's ``TaskTable`` is grouped so
    with NumPy (``run.prepare.table_by_symbol``), with no ``Task`` made (a million tasks: 0.4 s
    instead of 1.2 s), into the same shards."""
    if not by_symbol:
        return []
    # a universe's shards each read every member (100 symbols: ~0.15 s), so one per worker
    target = (1 if job.universe else SHARDS_PER_WORKER) * max(1, workers)
    chunks_per_symbol = max(1, math.ceil(target / len(by_symbol)))
    shards = []
    for symbol, (keys, params, warmups) in by_symbol.items():
        size = max(1, math.ceil(len(keys) / chunks_per_symbol))
        for i in range(0, len(keys), size):
            chunk = keys[i:i + size]
            shards.append(_shard(job, symbol, chunk, _runs(chunk, params[i:i + size], warmups[i:i + size]), parts))
    shards.sort(key=lambda s: -len(s.keys))
    return shards


def _shard_id(keys: list[str]) -> str:
    """A shard's id: the first 16 hex digits of ``token(keys)``. Task keys are hex digits, which JSON
    writes as they are, so their canonical JSON is joined here without the encoder (a third of
    the time: ~0.17 s of planning a million tasks into 20 000 shards)."""
    return sha256_hex('["' + '","'.join(keys) + '"]')[:16]


def shard_of(job: Job, symbol: str, tasks: Sequence[Task], parts: PartsFor) -> Shard:
    """One shard of ``tasks``, all of ``symbol``, in their order (a report's or a check's replay)."""
    groups: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for t in tasks:
        groups.setdefault(t.warmup, []).append((t.key, t.params))
    return _shard(job, symbol, [t.key for t in tasks], groups, parts)


def _runs(keys: list[str], params: list[dict[str, Any]], warmups: list[int]) -> dict[int, list[tuple[str, dict[str, Any]]]]:
    """The (key, parameter set) of each warm-up's tasks, of columns ordered by warm-up."""
    import bisect

    out = {}
    i = 0
    while i < len(keys):
        j = bisect.bisect_right(warmups, warmups[i], i)
        out[warmups[i]] = list(zip(keys[i:j], params[i:j], strict=True))
        i = j
    return out


def _shard(job: Job, symbol: str, keys: list[str], groups: dict[int, list[tuple[str, dict[str, Any]]]],
           parts: PartsFor) -> Shard:
    """A shard of one symbol's tasks ``keys``, which are ``groups``' by warm-up."""
    widest = max(groups)
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
            ShardGroup(w, tuple([h for _, h in job.files(parts, symbol, w) or ()]), tuple(gtasks))
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

