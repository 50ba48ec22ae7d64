"""The nouns of a run, shared by the planner, the runner, the executors and the workers.

- ``StrategySource``: the exact text of a strategy file, its hash, and the class to run.
- ``Job``: what the user asked for, resolved: the strategy, its parameter sets (with the warm-up
  each needs), the symbols, the date range and the execution settings.
- ``Task``: one (symbol, parameter set), named by its content key. With settings axes a
  "parameter set" also holds the axes' values (shown like parameters; keyed as settings).
- ``Shard``: some of one symbol's tasks (or of one universe's, for a portfolio strategy), the unit
  handed to a worker. ``Shard.spec`` (a ``ShardSpec``) is what the worker needs: the partitions
  to read, the settings, the task groups; ``ShardSpec.to_wire()`` is the plain JSON object that
  travels to it, and the worker reads it back with ``ShardSpec.from_wire``.

A task's key is the sha256 of the canonical JSON of: engine version, strategy source hash and
class, parameters, symbol, the content hashes of the partitions the task reads, the date range,
the warm-up in bars and the execution settings; for a portfolio strategy also the universe's
symbols (``members``; ``symbol`` is then the universe's name, and the partitions are every
member's, in member order); with a benchmark (``--benchmark``) also its symbol and partitions. Nothing random, nothing machine-specific: the same
inputs give the same key on any machine, so a result is computed once and found again by any run.

This module imports nothing of bt but its hashing and errors.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from backtest.errors import UsageError
from backtest.hashing import sha256_hex, token
from backtest.version import ENGINE_VERSION

PartsFor = Mapping[tuple[str, int], Sequence[tuple[str, str]]]
"""(symbol, warm-up bars) → [(partition path relative to the data root, data sha256), ...]."""


@dataclass(frozen=True)
class StrategySource:
    """A strategy file's exact text (``source``), the hash of all the code it runs (``hash``), the
    file's name and the class to run (``name``; empty until the file is loaded when the file has
    one class). ``modules``: the local modules it imports (path relative to their folder → text),
    shipped to workers with it; ``packages``: the installed packages it imports (name →
    ``dist==version``). With neither, ``hash`` is the sha256 of ``source``."""

    hash: str
    source: str
    filename: str
    name: str
    modules: dict[str, str] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)

    def message(self) -> dict[str, Any]:
        """What a worker needs to load it (``backtest.worker.shard.Runner.add_strategy``)."""
        return {"hash": self.hash, "source": self.source, "filename": self.filename, "name": self.name,
                "modules": self.modules}


def code_hash(source_sha256: str, modules: Mapping[str, str], packages: Mapping[str, str]) -> str:
    """The hash of a strategy's code: its source's sha256 alone when it imports nothing local and no
    package, else the token of that, each local module's sha256 and each package's version."""
    if not modules and not packages:
        return source_sha256
    return token({"source": source_sha256, "modules": {k: sha256_hex(v) for k, v in sorted(modules.items())},
                  "packages": dict(sorted(packages.items()))})


Files = tuple[tuple[str, str], ...]
"""(partition path relative to the data root, data sha256) of each partition read, in year order."""


@dataclass(frozen=True, slots=True)
class ShardGroup:
    """Those of a shard's tasks that have one warm-up: they see the same bars, so they run together
    and share the strategy's indicators."""

    #: bars the tasks see before the range's first bar
    warmup: int
    #: data sha256 of the partitions these tasks read (what their keys name), in year order
    part_hashes: tuple[str, ...]
    #: (key, parameter set) of each task, in grid order; with settings axes a parameter set also
    #: holds the axes' values
    tasks: tuple[tuple[str, dict[str, Any]], ...]


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """What a worker needs to run a shard: everything its tasks' keys name, and nothing else.

    ``to_wire()`` is what travels to a worker (a JSON object in a ``shard`` frame, or a Dask
    task's argument) and ``from_wire`` reads it back; its keys, in order::

        {"id", "symbol", "strategy": <strategy_hash>, "start_ns", "end_ns", "settings": {...},
         "axes": [setting name, ...],                        # settings axes only
         "benchmark": [symbol, [[path, data_sha256], ...]],  # --benchmark only
         "files": [[path, data_sha256], ...],
         "groups": [{"warmup": w, "parts": [data_sha256, ...], "tasks": [[key, params], ...]}, ...],
         "members": [[symbol, n_files], ...]}                # a portfolio's universe only

    Workers, task keys and result bytes depend on exactly that text, so the names on the wire stay
    as they are whatever the fields are called here."""

    #: the shard's name: the first 16 hex digits of the token of its task keys
    id: str
    #: the symbol the tasks run on, or a portfolio's universe name
    symbol: str
    #: the hash of the strategy's code (workers hold the strategies they were sent by it)
    strategy_hash: str
    #: the date range in UTC ns, both ends included
    start_ns: int
    end_ns: int
    #: the execution settings (``engine.SimSettings``'s fields); with axes, those shared by all tasks
    settings: dict[str, Any]
    #: every partition the shard's symbol (each member's, for a universe) reads: enough for the
    #: widest warm-up
    files: Files
    #: the tasks by warm-up, narrowest first
    groups: tuple[ShardGroup, ...]
    #: settings that are axes of the grid: each task's parameter set holds its own values of them
    axes: tuple[str, ...] = ()
    #: the symbol every task is compared with ("" for none) and its partitions over the range
    benchmark: str = ""
    benchmark_files: Files = ()
    #: a portfolio's members in order, each with how many of ``files`` are its own; () for one symbol
    members: tuple[tuple[str, int], ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """The JSON object a worker is sent (the class docstring's). It holds the spec's own tuples
        (JSON arrays), nothing copied: as fast to make and encode as a dict planned in that shape."""
        out: dict[str, Any] = {"id": self.id, "symbol": self.symbol, "strategy": self.strategy_hash,
                               "start_ns": self.start_ns, "end_ns": self.end_ns, "settings": self.settings}
        if self.axes:
            out["axes"] = self.axes
        if self.benchmark:
            out["benchmark"] = (self.benchmark, self.benchmark_files)
        out["files"] = self.files
        out["groups"] = [{"warmup": g.warmup, "parts": g.part_hashes, "tasks": g.tasks} for g in self.groups]
        if self.members:
            out["members"] = self.members
        return out

    def wire_json(self, texts: dict[int, tuple[Any, str]]) -> str:
        """The header of this spec's ``shard`` frame (``worker.protocol``): the JSON of ``{"t":
        "shard", "shard": self.to_wire()}``, made with each parameter set's JSON taken from ``texts`` (by
        the set's id: (the set, its JSON), filled here): a grid's sets are shared by the shards
        of every symbol, so each is encoded once, not once a task (a million tasks: 2 s of the
        coordinator's). Task keys are hex digits, which JSON writes as they are."""
        wire = self.to_wire()
        groups = wire.pop("groups")
        dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        parts = []
        for g in groups:
            tasks = []
            for key, p in g["tasks"]:
                known = texts.get(id(p))
                if known is None or known[0] is not p:
                    known = texts[id(p)] = (p, dumps(p))
                tasks.append(f'["{key}",{known[1]}]')
            parts.append(f'{{"warmup":{int(g["warmup"])},"parts":{dumps(g["parts"])},"tasks":[{",".join(tasks)}]}}')
        head = dumps(wire)
        return f'{{"t":"shard","shard":{head[:-1]},"groups":[{",".join(parts)}]}}}}'

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> ShardSpec:
        """The spec that ``to_wire`` gave ``wire`` (e.g. decoded from JSON by a worker)."""
        benchmark, benchmark_files = wire.get("benchmark") or ("", ())
        return cls(
            id=wire["id"],
            symbol=wire["symbol"],
            strategy_hash=wire["strategy"],
            start_ns=wire["start_ns"],
            end_ns=wire["end_ns"],
            settings=wire["settings"],
            files=_files(wire["files"]),
            groups=tuple(ShardGroup(g["warmup"], tuple(g["parts"]), tuple(map(tuple, g["tasks"])))
                         for g in wire["groups"]),
            axes=tuple(wire.get("axes", ())),
            benchmark=benchmark,
            benchmark_files=_files(benchmark_files),
            members=tuple((m, n) for m, n in wire.get("members", ())),
        )

    def narrowed(self, keys: Container[str]) -> ShardSpec:
        """This spec with only the tasks of ``keys`` (what a retry sends: those still without an
        outcome); groups left with no task are dropped."""
        groups = []
        for g in self.groups:
            tasks = tuple(t for t in g.tasks if t[0] in keys)
            if len(tasks) == len(g.tasks):
                groups.append(g)
            elif tasks:
                groups.append(replace(g, tasks=tasks))
        return replace(self, groups=tuple(groups))

    def max_warmup(self) -> int:
        """The widest warm-up of the shard's tasks: how many bars before the range to read."""
        return max(g.warmup for g in self.groups)

    def partitions(self) -> list[tuple[str, str]]:
        """(path relative to the data root, data sha256) of every partition the shard reads,
        the benchmark's included."""
        return [*self.files, *self.benchmark_files]


def _files(pairs: Iterable[Sequence[str]]) -> Files:
    return tuple((p, h) for p, h in pairs)


@dataclass
class Shard:
    """A unit of work for one worker: its id (``spec.id``), what the worker is sent, and its
    tasks' keys (in the spec's order)."""

    id: str
    spec: ShardSpec
    keys: list[str]

    def partitions(self) -> list[tuple[str, str]]:
        """(path relative to the data root, data sha256) of every partition the shard's own
        symbol (or universe) reads."""
        return [(p, h) for p, h in self.spec.files]


@dataclass(frozen=True)
class Job:
    strategy: StrategySource
    params_list: list[dict[str, Any]]
    warmups: list[int]  # one per params entry
    symbols: list[str]
    start_ns: int
    end_ns: int
    settings: dict[str, Any]
    #: a portfolio job's name for its universe (``symbols`` are then its members, and every task
    #: runs on all of them under this name); "" for a job of one-symbol tasks
    universe: str = ""
    #: execution settings that are axes of the grid (``--stop-loss 0.02,0.05``): each entry of
    #: ``params_list`` then holds a value for each of them beside the strategy's parameters, and
    #: ``settings`` holds the rest
    axes: tuple[str, ...] = ()
    #: the symbol every task is compared with (``--benchmark SPY``; "" for none) and the
    #: partitions of its bars over the range (one bar before it included)
    benchmark: str = ""
    benchmark_parts: tuple[tuple[str, str], ...] = ()

    def benchmark_key(self) -> dict[str, Any]:
        """What a task's key holds of the benchmark: its symbol and the hashes of its partitions."""
        return {"symbol": self.benchmark, "partitions": [h for _, h in self.benchmark_parts]}

    def strategy_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """What the strategy is called with: ``params`` less the settings axes' values."""
        return split_axes(params, self.axes)[0] if self.axes else params

    def task_settings(self, params: dict[str, Any]) -> dict[str, Any]:
        """The execution settings of the task with ``params``: the job's, with the axes' values."""
        return {**self.settings, **split_axes(params, self.axes)[1]} if self.axes else self.settings

    def task_symbols(self) -> list[str]:
        """What tasks are filed under: each symbol, or the universe's name."""
        return [self.universe] if self.universe else list(self.symbols)

    def files(self, parts: PartsFor, symbol: str, warmup: int) -> list[tuple[str, str]] | None:
        """The partitions a task filed under ``symbol`` with ``warmup`` reads (every member's, in
        member order, for a universe); None when some are not known."""
        if not self.universe:
            found = parts.get((symbol, warmup))
            return list(found) if found is not None else None
        out: list[tuple[str, str]] = []
        for member in self.symbols:
            found = parts.get((member, warmup))
            if not found:
                return None
            out.extend(found)
        return out


def split_axes(params: Mapping[str, Any], axes: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A parameter set of a job with settings axes → (the strategy's parameters, the axes' values)."""
    return {k: v for k, v in params.items() if k not in axes}, {a: params[a] for a in axes}


@dataclass(slots=True)
class Task:
    """One task of a job (never changed once planned). Not frozen: a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, a third of planning a million
    tasks (1 µs a task against 0.3)."""

    key: str
    symbol: str
    params: dict[str, Any]
    warmup: int


def task_key(job: Job, symbol: str, params: dict[str, Any], warmup: int, hashes: Sequence[str]) -> str:
    fields = {
        "engine": ENGINE_VERSION,
        "strategy": {"hash": job.strategy.hash, "class": job.strategy.name},
        "params": job.strategy_params(params),
        "symbol": symbol,
        "partitions": list(hashes),
        "from": job.start_ns,
        "to": job.end_ns,
        "warmup": warmup,
        "settings": job.task_settings(params),
    }
    if job.universe:
        fields["members"] = list(job.symbols)
    if job.benchmark:
        fields["benchmark"] = job.benchmark_key()
    try:
        return token(fields)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"parameters {params} cannot be hashed canonically ({exc}); use plain numbers, booleans or strings") from exc
