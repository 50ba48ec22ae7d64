"""What the user asked ``bt run`` for, and what planning made of it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backtest.errors import PlanError, UsageError
from backtest.executors.base import WorkerStatus
from backtest.spec import Job, Shard, Task


@dataclass
class RunRequest:
    strategy: Path
    strategy_name: str | None = None
    start: str | None = None
    end: str | None = None
    symbols: list[str] | None = None
    universe: Path | None = None
    params: list[str] = field(default_factory=list)
    executor: str | None = None
    hosts: Path | None = None
    workers: int | None = None
    timeout: float | None = None
    max_memory: int | None = None
    #: workers run strategy code sandboxed (``backtest.worker.sandbox``): no network, files,
    #: processes and memory contained, an allow-listed environment
    sandbox: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    force: bool = False
    accept_new_hosts: bool = False
    #: walk-forward optimization (``backtest.walkforward``): the --walk-forward spec text, or a
    #: --holdout date, with --anchored, --select and --min-trades
    walk_forward: str | None = None
    holdout: str | None = None
    anchored: bool = False
    select: str | None = None
    min_trades: int | None = None
    #: a symbol of the store every task is compared with (``--benchmark``)
    benchmark: str | None = None
    #: a result cache shared on object storage (``--remote-cache``; None: ``BT_REMOTE_CACHE``; "":
    #: none), and whether this run only reads it (None: ``BT_REMOTE_CACHE_READ_ONLY``)
    remote_cache: str | None = None
    remote_read_only: bool | None = None

    def executor_url(self) -> str:
        """The executor URL that ``--executor``, ``--hosts`` and ``--workers`` name."""
        from backtest.executors import resolve

        return resolve(self.executor, self.hosts, self.workers)

    def read_source(self) -> str | None:
        """The strategy file's text, exactly as ``load_strategy`` reads it; None when it cannot be
        read (loading it then reports why)."""
        try:
            return self.strategy.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None


@dataclass
class Prepared:
    """A checked, planned run: nothing is recorded yet."""

    request: RunRequest
    job: Job
    #: every task, and those whose results are stored (a ``plan.TaskTable`` for a large job)
    tasks: Sequence[Task]
    cached: Sequence[Task]
    shards: list[Shard]
    skipped_symbols: list[str]
    executor_url: str
    root: Path
    parts: dict[tuple[str, int], list[tuple[str, str]]]
    #: warnings for the user: stored results found damaged (set aside and computed again)
    notes: list[str] = field(default_factory=list)
    #: a walk-forward run's plan (``run.walkforward.WfoPlan``) and the driver of its second stage
    wfo: Any = None
    stage2: Any = None
    #: tasks still to be planned during the run (a walk-forward's out-of-sample tasks)
    pending: int = 0
    #: the shared result cache (``store.remote.RemoteCache``) or None; with ``--dry-run``, how many
    #: of the tasks to compute it holds
    remote: Any = None
    remote_hits: int = 0


@dataclass
class Progress:
    run_id: str
    total: int
    cached: int
    computed: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    workers: list[WorkerStatus] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.cached + self.computed + self.failed


@dataclass
class RunSummary:
    run_id: str
    status: str  # done | failed | interrupted
    tasks: int
    computed: int
    cached: int
    failed: int
    seconds: float
    message: str = ""
    #: hosts or workers set aside during the run, each with why ("host: set aside: reason")
    set_aside: list[str] = field(default_factory=list)
    #: results that came out different from the intact ones stored under the same keys, each
    #: "KEY (SYMBOL PARAMS) on WORKER: what differs" (the run then counts as failed)
    differs: list[str] = field(default_factory=list)
    #: the sandbox the workers ran strategies in: {"mode": "on"|"off", "hosts": {host: protections}}
    sandbox: dict[str, Any] = field(default_factory=dict)
    #: what the shared result cache did: {"uri", "fetched", "uploaded", "uploaded_bytes", "warnings"}
    remote: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return {"done": 0, "failed": 1, "interrupted": 130}[self.status]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run_id": self.run_id, "status": self.status, "tasks": self.tasks,
                               "computed": self.computed, "cached": self.cached, "failed": self.failed,
                               "seconds": round(self.seconds, 3)}
        if self.message:
            out["message"] = self.message
        if self.set_aside:
            out["set_aside"] = self.set_aside
        if self.differs:
            out["differs"] = self.differs
        if self.sandbox:
            out["sandbox"] = self.sandbox
        if self.remote:
            out["remote_cache"] = self.remote
        return out

    def sandbox_lines(self, executor: str) -> list[str]:
        """One line per host on what its workers' sandbox had, e.g. ``sandbox on localhost:
        network off (namespace), files Landlock v7, ...``; a missing protection is named."""
        from backtest.worker.sandbox import Protections

        if self.sandbox.get("mode") == "off":
            return ["sandbox off: strategies ran with the user's full access (network, files, environment)"]
        hosts = self.sandbox.get("hosts", {})
        if not hosts and executor.startswith(("inline", "dask")):
            where = "bt's own process" if executor.startswith("inline") else "Dask's worker processes"
            return [f"sandbox NOT applied on {executor}: strategies ran inside {where}, with the user's full access"]
        return [f"sandbox on {host}: {Protections.from_json(p).describe()}" for host, p in sorted(hosts.items())]


def symbols_of(req: RunRequest, store: Any) -> list[str]:
    """The symbols a request names (``--symbols``, ``--universe``), else every symbol stored."""
    if req.symbols and req.universe:
        raise UsageError("give either --symbols or --universe, not both")
    if req.universe:
        try:
            text = req.universe.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read the universe file {req.universe}: {exc.strerror}") from exc
        syms = [s.strip().upper() for line in text.splitlines() for s in line.split("#")[0].replace(",", " ").split()]
        if not syms:
            raise UsageError(f"the universe file {req.universe} lists no symbols; put one symbol per line")
        return list(dict.fromkeys(syms))
    if req.symbols:
        syms = [s.strip().upper() for s in req.symbols if s.strip()]
        if not syms:
            raise UsageError("--symbols is empty; give symbols like --symbols AAPL,MSFT")
        return list(dict.fromkeys(syms))
    syms = store.symbols()
    if not syms:
        raise PlanError("the data store is empty; import data with `bt data import FILE` or try `bt data demo`")
    return list(syms)
