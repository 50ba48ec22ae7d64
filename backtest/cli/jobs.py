"""`bt run` and `bt report`."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from backtest.cli.render import console, err_console
from backtest.errors import UsageError

if TYPE_CHECKING:
    from backtest.run import Progress


class Fill(StrEnum):
    next_open = "next-open"
    close = "close"


class Units(StrEnum):
    fractional = "fractional"
    integer = "integer"


class Switch(StrEnum):
    on = "on"
    off = "off"


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"
    html = "html"


def parse_size(text: str | None) -> int | None:
    """'2G', '512M', '1.5GB' or bytes → bytes; '0' → 0 (no cap)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise UsageError(f'--max-memory "{text}" is not a size; use e.g. 512M or 2G')
    n = float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")
    if n == 0:
        return 0  # no cap (the sandbox's default one lifted)
    if n < 64 * 1024**2:
        raise UsageError(f"--max-memory {text} is too small for a worker; give at least 64M")
    return int(n)


def _setting_values(**texts: str | None) -> dict[str, Any]:
    """The settings given as text (one value, a list or a range) → their values: a list each."""
    from backtest.run.axes import parse_setting

    out: dict[str, Any] = {}
    for name, text in texts.items():
        values = parse_setting(name, text)
        if values is not None:
            out[name] = values
    return out


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [s for v in values for s in v.split(",")]


def run(
    strategy: Annotated[Path, typer.Argument(help="The strategy file (a Python file with one Strategy class).", show_default=False)],
    start: Annotated[str | None, typer.Option("--from", help="First day traded: a year (2020), month (2020-03) or day.")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Last day traded, inclusive: 2024 means through 2024-12-31.")] = None,
    symbols: Annotated[list[str] | None, typer.Option("--symbols", "-s", help="Symbols, comma-separated (default: all in the store).")] = None,
    universe: Annotated[Path | None, typer.Option("--universe", help="File with one symbol per line.")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Grid for one parameter: name=v1,v2 or name=start:stop:step (inclusive). Repeat for several.")] = None,
    strategy_name: Annotated[str | None, typer.Option("--strategy", help="Which class, when the file has several.")] = None,
    hosts: Annotated[Path | None, typer.Option("--hosts", help="Run on the SSH hosts listed in this file (see bt hosts check).")] = None,
    executor: Annotated[str | None, typer.Option("--executor", help="Executor URL: local://N, inline://, ssh://h1,h2.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", help="Local worker processes (default: one per core).")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Wall seconds one shard may take before its worker is killed and it is retried.")] = None,
    max_memory: Annotated[str | None, typer.Option("--max-memory", help="Memory cap per worker, e.g. 2G (0: none). Default with the sandbox: the machine's memory × 0.8 ÷ its workers.", show_default=False)] = None,
    sandbox: Annotated[Switch, typer.Option("--sandbox", help="on: strategies run with no network, read only Python, bt, their libraries and the bars, write only a scratch folder, get an environment without secrets, and whatever they start dies with their shard (what each host supports is shown at the end). off: as the user, with full access.")] = Switch.on,
    cash: Annotated[float, typer.Option(help="Starting cash per task.")] = 100_000.0,
    commission: Annotated[str | None, typer.Option(metavar="F|LIST|RANGE", help="Commission, fraction of traded notional per side (0.001 = 0.1 %). Several values (0.0005,0.001 or 0:0.002:0.0005) make it an axis of the grid, like --param.", show_default=False)] = None,
    fee: Annotated[float, typer.Option(help="Fixed fee per order.")] = 0.0,
    slippage: Annotated[str | None, typer.Option(metavar="F|LIST|RANGE", help="Slippage, fraction of price against the trader; one value, a list or a range (a grid axis).", show_default=False)] = None,
    fill: Annotated[Fill, typer.Option(help="next-open: a decision at bar t fills at bar t+1's open; close: at bar t's close.")] = Fill.next_open,
    units: Annotated[Units, typer.Option(help="fractional or integer position sizes.")] = Units.fractional,
    stop_loss: Annotated[str | None, typer.Option("--stop-loss", metavar="F|LIST|RANGE", help="Stop-loss as a fraction of the entry price (0.05 = 5 %); a list (0.05,0.1) or range (0.02:0.10:0.02) makes it a grid axis.", show_default=False)] = None,
    take_profit: Annotated[str | None, typer.Option("--take-profit", metavar="F|LIST|RANGE", help="Take-profit as a fraction of the entry price; one value, a list or a range.", show_default=False)] = None,
    trailing_stop: Annotated[str | None, typer.Option("--trailing-stop", metavar="F|LIST|RANGE", help="Trailing stop: exit when the price falls this fraction below the highest high since entry (rises above the lowest low, short); one value, a list or a range.", show_default=False)] = None,
    leverage: Annotated[float, typer.Option(help="Portfolio strategies: the largest sum of |weight| a bar may ask for (1 = no leverage).")] = 1.0,
    walk_forward: Annotated[str | None, typer.Option("--walk-forward", help="Walk-forward optimization: train=3y,test=1y[,step=6m] (units y, m, d, or b for bars). Each fold picks the best set on its train window and tests it on the next test window.", show_default=False)] = None,
    holdout: Annotated[str | None, typer.Option("--holdout", help="One out-of-sample split: optimize before this date (2022 or 2022-07-01), test from it to --to.", show_default=False)] = None,
    anchored: Annotated[bool, typer.Option("--anchored", help="Walk-forward: every train window starts at --from (default: rolling).")] = False,
    select: Annotated[str | None, typer.Option("--select", help="Walk-forward: the in-sample metric that picks each fold's set (default sharpe; highest wins; lowest for volatility and the drawdown-duration, losing-streak and tracking-error metrics).", show_default=False)] = None,
    min_trades: Annotated[int | None, typer.Option("--min-trades", help="Walk-forward: sets with fewer in-sample trades are not eligible.", show_default=False)] = None,
    benchmark: Annotated[str | None, typer.Option("--benchmark", metavar="SYMBOL", help="A symbol of the store to compare every task with (alpha, beta, information ratio, tracking error, its return over the same bars); the HTML report draws it beside the equity.", show_default=False)] = None,
    remote_cache: Annotated[str | None, typer.Option("--remote-cache", envvar="BT_REMOTE_CACHE", metavar="URI", help="A result cache shared on object storage (s3://bucket/prefix, or another URI pyarrow.fs opens): results it holds are fetched instead of computed, what this run computes is uploaded. Endpoint, region and credentials as for --store.", show_default=False)] = None,
    remote_read_only: Annotated[bool, typer.Option("--remote-cache-read-only", envvar="BT_REMOTE_CACHE_READ_ONLY", help="Only fetch from the remote cache; upload nothing (for credentials that may only read).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Recompute tasks even when their results are stored.")] = False,
    accept_new_hosts: Annotated[bool, typer.Option("--accept-new-hosts", help="Record unknown SSH host keys on first contact.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object at the end instead of the live display.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (tasks, cached, to compute, shards, an estimate of time and disk) and exit without running or recording anything.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help=f"Run a plan of more than {1_000_000:,} tasks (BT_CONFIRM_TASKS) without asking.")] = False,
) -> None:
    """Run a strategy over symbols × a parameter grid × a date range.

    Results are stored by the hash of code, parameters, data and settings: a rerun computes nothing, a changed parameter value computes only its tasks.

    A Strategy runs one task per symbol and parameter set; a PortfolioStrategy runs one task per parameter set over all the symbols at once, in one account.

    Examples:
      bt run strategies/sma_cross.py --from 2020 --to 2024 --param fast=5:50:5 --param slow=20,50,100
      bt run strategies/xs_momentum.py --universe sp100.txt --from 2015 --to 2024 --commission 0.0005
      bt run strategies/sma_cross.py --from 2015 --to 2024 --walk-forward train=3y,test=1y --select sharpe
      bt run strategies/sma_cross.py --from 2015 --to 2024 --holdout 2022     (optimize on 2015-2021, test 2022-2024)
      bt run strategies/sma_cross.py --from 2020 --to 2024 --stop-loss 0.02:0.10:0.02 --trailing-stop 0.05,0.1
      bt run strategies/sma_cross.py --from 2020 --to 2024 --benchmark SPY
      bt run strategies/my_strategy.py --sandbox off     (a strategy that needs the network or your files)

    Several values of --commission, --slippage, --stop-loss, --take-profit or --trailing-stop make that setting an axis of the grid: one task per combination, shown like a parameter, indicators computed once for all of them.

    Walk-forward: every in-sample and out-of-sample backtest is an ordinary cached task (a plain run over a fold's train window reuses them); bt report RUN shows the folds, the stitched out-of-sample metrics and the walk-forward efficiency.

    Sandbox (on by default): strategies run with no network, read only Python, bt, their libraries and the bars, write only a scratch $HOME emptied after each shard, see no secret environment variables, and whatever they start dies with their shard; each worker's memory is capped (--max-memory). The last lines say what each host's kernel allowed. --sandbox off lifts all of it; the results are the same bits either way.

    Exit codes: 0 all tasks done, 1 some failed, 2 bad input, 130 interrupted.

    BT_TRACE=1 prints a timeline of the run on stderr; BT_NO_FORK_SERVER=1 starts each local worker from scratch instead of forking it from one warm process.
    """
    if force and not dry_run:  # first, while nothing else runs: there surely is work
        _preload_workers(executor, hosts, workers, sandbox is Switch.on)
    from backtest.run import RunRequest, prepare_started
    from backtest.run.prepare import objects_that_stay

    req = RunRequest(
        strategy=strategy, strategy_name=strategy_name, start=start, end=end, symbols=_split(symbols),
        universe=universe, params=list(param or []), executor=executor, hosts=hosts, workers=workers,
        timeout=timeout, max_memory=parse_size(max_memory), force=force, accept_new_hosts=accept_new_hosts,
        sandbox=sandbox is Switch.on,
        settings={"cash": cash, "fee": fee, "fill": fill.value.replace("-", "_"), "units": units.value,
                  "leverage": leverage, **_setting_values(commission=commission, slippage=slippage, stop_loss=stop_loss,
                                                          take_profit=take_profit, trailing_stop=trailing_stop)},
        walk_forward=walk_forward, holdout=holdout, anchored=anchored, select=select, min_trades=min_trades,
        benchmark=benchmark, remote_cache=remote_cache, remote_read_only=remote_read_only,
    )
    if workers is not None and workers < 1:
        raise UsageError("--workers must be at least 1")
    if timeout is not None and not timeout > 0:
        raise UsageError(f"--timeout must be more than 0 seconds, not {timeout:g}")
    for flag, value in (("--from", start), ("--to", end)):
        if value is not None and not value.strip():
            raise UsageError(f"{flag} is empty; give a year (2020), a month (2020-03) or a day (2020-03-15)")
    if dry_run:
        from backtest.run import prepare

        _print_plan(prepare(req, fetch=False), as_json)
        raise typer.Exit(0)
    with objects_that_stay():
        prep, ex = prepare_started(req)
    try:
        _confirm_size(prep, yes)
    except BaseException:
        if ex is not None:
            ex.close(cancel=True)
        raise
    from backtest.cli.render import warn_line

    for s in prep.skipped_symbols:
        warn_line(f"{s}: no data in the date range; skipped")
    for note in prep.notes + (prep.remote.new_warnings() if prep.remote is not None else []):
        warn_line(note)
    if as_json:
        from backtest.run import execute

        summary = execute(prep, executor=ex)
        print(json.dumps(summary.to_json()))
    else:
        summary = _execute_live(prep, ex)
    raise typer.Exit(summary.exit_code)


def _preload_workers(executor: str | None, hosts: Path | None, workers: int | None, sandbox: bool) -> None:
    """For a run on this machine, start the local workers' fork server now, so that its warm-up
    (numpy, numba) overlaps the rest of the start-up and the planning (``executors.preload``);
    planning adopts it, or stops it if the input is bad. Options that name no executor start
    nothing: planning says what is wrong with them."""
    from backtest.errors import BtError
    from backtest.executors import preload, resolve

    try:
        url = resolve(executor, hosts, workers)
    except BtError:
        return
    preload(url, sandbox)


#: a plan of more tasks than this asks before it runs (``BT_CONFIRM_TASKS``; ``--yes`` skips it)
CONFIRM_TASKS = 1_000_000
#: what the estimate assumes: the coordinator's and workers' bookkeeping per computed task on one
#: core (~150 µs, measured on a 120 400-task daily grid), the engine's bar-evaluations per second
#: per core (benchmarks/bench_engine.py), and a result file's size on disk
SECONDS_PER_TASK = 150e-6
BAR_EVALS_PER_SECOND = 2e8
BYTES_PER_RESULT = 4096


def _plan_facts(prep: Any) -> dict[str, Any]:
    """What ``--dry-run`` prints and the confirmation shows: counts and an estimate."""
    from backtest.data import Store
    from backtest.executors import parse_url

    todo = len(prep.tasks) - len(prep.cached) + prep.pending
    rows: dict[tuple[str, str], int] = {}
    store = Store(prep.root)
    for sym in {s for s, _ in prep.parts}:
        for p in store.partitions(sym):
            rows[(p.path, p.sha256)] = p.rows
    bars = {key: sum(rows.get(tuple(f), 0) for f in files) for key, files in prep.parts.items()}
    mean_bars = sum(bars.values()) / len(bars) if bars else 0
    members = len(prep.job.symbols) if prep.job.universe else 1
    cores = max(1, parse_url(prep.executor_url).capacity)
    seconds = todo * (SECONDS_PER_TASK + mean_bars * members / BAR_EVALS_PER_SECOND) / cores
    return {"tasks": len(prep.tasks) + prep.pending, "cached": len(prep.cached), "to_compute": todo,
            "shards": len(prep.shards), "executor": prep.executor_url, "symbols": len(prep.job.symbols),
            "parameter_sets": len(prep.job.params_list), "estimated_seconds": round(seconds, 1),
            "estimated_bytes": todo * BYTES_PER_RESULT,
            **({"grid_axes": {a: len({p[a] for p in prep.job.params_list}) for a in prep.job.axes}}
               if prep.job.axes else {}),
            **({"folds": len(prep.wfo.folds), "out_of_sample_later": prep.pending} if prep.wfo is not None else {}),
            **({"in_remote_cache": prep.remote_hits} if prep.remote is not None else {})}


def _print_plan(prep: Any, as_json: bool) -> None:
    from backtest.cli.render import human_size, warn_line

    facts = _plan_facts(prep)
    if as_json:
        print(json.dumps({"dry_run": True, **facts}))
        return
    for note in prep.notes + (prep.remote.new_warnings() if prep.remote is not None else []):
        warn_line(note)
    console.print(f"plan: {facts['tasks']:,} tasks ({facts['cached']:,} cached, {facts['to_compute']:,} to compute) "
                  f"in {facts['shards']:,} shards on {facts['executor']}")
    if "in_remote_cache" in facts:
        console.print(f"  {facts['in_remote_cache']:,} of the tasks to compute are in the remote cache "
                      f"{prep.remote.where}: a run fetches them instead")
    axes = ""
    if "grid_axes" in facts:
        combos = math.prod(facts["grid_axes"].values())
        axes = f" ({facts['parameter_sets'] // combos:,} of the strategy" + "".join(
            f" × {n} of {a}" for a, n in facts["grid_axes"].items()) + ")"
    console.print(f"  {facts['symbols']:,} symbols, {facts['parameter_sets']:,} parameter sets{axes}"
                  + (f", {facts['folds']} walk-forward folds ({facts['out_of_sample_later']:,} out-of-sample tasks "
                     "planned as the folds are decided)" if "folds" in facts else ""))
    console.print(f"  estimate: {_duration_text(facts['estimated_seconds'])} of work and about "
                  f"{human_size(facts['estimated_bytes'])} of results")
    console.print("nothing was run or recorded (--dry-run)")


def _duration_text(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def _confirm_size(prep: Any, yes: bool) -> None:
    """A plan above ``BT_CONFIRM_TASKS`` tasks runs only with --yes, or when the user agrees."""
    from backtest.cli.render import human_size

    text = os.environ.get("BT_CONFIRM_TASKS")
    try:
        limit = int(text) if text else CONFIRM_TASKS
    except ValueError:
        raise UsageError(f"BT_CONFIRM_TASKS must be a whole number of tasks, not {text!r}") from None
    total = len(prep.tasks) + prep.pending
    if yes or total <= limit:
        return
    facts = _plan_facts(prep)
    what = (f"this plan has {total:,} tasks ({facts['to_compute']:,} to compute: "
            f"{_duration_text(facts['estimated_seconds'])} and about {human_size(facts['estimated_bytes'])} of results)")
    if not sys.stdin.isatty():
        raise UsageError(f"{what}, more than {limit:,}; add --yes to run it (--dry-run shows the plan)")
    if not typer.confirm(f"{what}. Run it?", default=False, err=True):
        raise UsageError("not run: the plan was not confirmed")


def _execute_live(prep: Any, ex: Any) -> Any:
    from rich.live import Live

    from backtest.run import execute

    display = _Display(prep)
    if not prep.shards or not err_console.is_terminal:
        summary = execute(prep, executor=ex)
    else:
        with Live(display.render(None), console=err_console, refresh_per_second=8, transient=False) as live:
            def update(p: Progress) -> None:
                if display.due():
                    live.update(display.render(p))

            summary = execute(prep, update, ex)
            live.update(display.render(display.last))
    style = {"done": "green", "failed": "red", "interrupted": "yellow"}[summary.status]
    console.print(
        f"[{style}]{summary.status}[/] run [bold]{summary.run_id}[/]: {summary.tasks} tasks, "
        f"{summary.computed} computed, {summary.cached} cached, {summary.failed} failed in {summary.seconds:.2f}s"
        + (f" — {summary.message}" if summary.message else "")
    )
    from backtest.cli.render import warn_line as warn

    for note in summary.set_aside:
        warn(note)
    if prep.remote is not None:
        for note in prep.remote.new_warnings():
            warn(note)
        if prep.remote.summary():
            err_console.print(prep.remote.summary(), style="dim", highlight=False)
    if prep.shards:
        for line in summary.sandbox_lines(prep.executor_url):
            err_console.print(line, style="yellow" if "NOT" in line or "sandbox off" in line else "dim",
                              highlight=False)
    for line in summary.differs:
        err_console.print(f"[bold red]different bits under the same key:[/] {line}", highlight=False)
    if summary.differs:
        console.print(f"these differences stay listed in: bt logs {summary.run_id}")
    if summary.failed:
        console.print(f"see failures with: bt report {summary.run_id}; tracebacks: bt logs {summary.run_id}")
    elif summary.status == "interrupted":
        console.print("run the same command again to compute only what is missing")
    else:
        console.print(f"see results with: bt report {summary.run_id}")
    return summary


class _Display:
    def __init__(self, prep: Any) -> None:
        self.prep = prep
        self.last: Progress | None = None
        self._t = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._t < 0.1:
            return False
        self._t = now
        return True

    def render(self, p: Progress | None) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        if p is not None:
            self.last = p
        total = p.total if p else len(self.prep.tasks) + self.prep.pending
        done = p.done if p else len(self.prep.cached)
        elapsed = time.monotonic() - p.started if p else 0.0
        computed = p.computed if p else 0
        rate = computed / elapsed if elapsed > 0 else 0.0
        left = total - done
        eta = f"{left / rate:.0f}s" if rate > 0 and left else "–"
        line = Text.assemble(
            (f"{done}/{total} tasks ", "bold"),
            f"{len(self.prep.cached)} cached, {computed} computed, ",
            (f"{p.failed if p else 0} failed", "red" if p and p.failed else ""),
            f" · {rate:,.0f} tasks/s · ETA {eta} · {self.prep.executor_url}",
        )
        bar = Table.grid()  # a grid row ends its line; a bare ProgressBar would run into the next renderable
        bar.add_row(ProgressBar(total=max(total, 1), completed=done, width=60))
        parts: list[Any] = [line, bar]
        if p and p.workers:
            hosts: dict[str, list[Any]] = {}
            for w in p.workers:
                hosts.setdefault(w.host, []).append(w)
            t = Table(box=None, show_header=True, header_style="dim")
            for c in ("host", "workers", "busy", "shards done", "failures", "state"):
                t.add_column(c)
            for host, ws in hosts.items():
                states = sorted({w.state for w in ws})
                t.add_row(host, str(len(ws)), str(sum(w.state == "busy" for w in ws)),
                          str(sum(w.shards_done for w in ws)), str(sum(w.failures for w in ws)), ", ".join(states))
            parts.append(t)
        if p and p.notes:
            parts.extend(Text(n, style="yellow") for n in p.notes[-3:])
        return Group(*parts)


def report(
    run_id: Annotated[str, typer.Argument(help="The run id (bt runs lists them; a unique prefix works; latest: the newest run).", show_default=False)],
    top: Annotated[int | None, typer.Option(help="How many tasks to show or export, best first (default: 10 in the table, all in files).", show_default=False)] = None,
    sort: Annotated[str, typer.Option(help="Metric to rank by, e.g. sharpe, total_return, calmar.")] = "sharpe",
    symbol: Annotated[str | None, typer.Option(help="Only this symbol.")] = None,
    params: Annotated[str | None, typer.Option(help="Only tasks with these parameters: fast=10,slow=50.")] = None,
    trades: Annotated[bool, typer.Option("--trades", help="The trades of the one task selected by --symbol/--params.")] = False,
    equity: Annotated[bool, typer.Option("--equity", help="The equity curve (ts, equity, drawdown, position) of the one task selected by --symbol/--params, computed again and checked against its stored result.")] = False,
    fmt: Annotated[Format | None, typer.Option("--format", help="table, csv, json (the output contract, see the README), parquet or html (default: from --out's suffix, else table).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout (html: default ./<run-id>.html).")] = None,
    x: Annotated[str | None, typer.Option("--x", help="html: the heatmap's across parameter (default: the first that varies).", show_default=False)] = None,
    y: Annotated[str | None, typer.Option("--y", help="html: the heatmap's up parameter (default: the next that varies).", show_default=False)] = None,
    metric: Annotated[str | None, typer.Option(help="html: the heatmap's and distribution's metric (default: --sort).", show_default=False)] = None,
    charts: Annotated[int, typer.Option(help="html: chart the equity of this many top tasks (and each symbol's best).")] = 5,
    tz: Annotated[str, typer.Option(help="Show times in this time zone, e.g. America/New_York.")] = "UTC",
    open_: Annotated[bool, typer.Option("--open", help="html: open the report in the default browser.")] = False,
    stitched: Annotated[bool, typer.Option("--stitched", help="Walk-forward runs: one row per symbol with the stitched out-of-sample metrics (instead of one per fold).")] = False,
    min_trades: Annotated[int | None, typer.Option("--min-trades", help="Tasks with fewer trades are not eligible: still shown (flagged, and \"eligible\": false in exports), ranked after every eligible task.", show_default=False)] = None,
) -> None:
    """Show a run's results: leaderboard, best parameters per symbol, summary, failures; or write
    them as csv, json, parquet, or one self-contained HTML report with charts.

    Examples:
      bt report latest --sort calmar --top 20
      bt report sma_cross-3f2a9c --format html --open            (charts; opens with no network)
      bt report sma_cross-3f2a9c --format html --x fast --y slow --metric total_return
      bt report sma_cross-3f2a9c --out results.csv               (the format follows the suffix)
      bt report sma_cross-3f2a9c --symbol DEMO01 --params fast=10,slow=40 --trades --format csv
      bt report sma_cross-3f2a9c --symbol DEMO01 --params fast=10,slow=40 --equity --out curve.parquet
      bt report sma_cross-3f2a9c --sort sortino --min-trades 20      (a one-trade fluke does not rank first)
    """
    from backtest import report as rep

    if top is not None and top < 1:
        raise UsageError(f"--top must be at least 1, not {top}")
    if charts < 0:
        raise UsageError(f"--charts must be 0 or more, not {charts}")
    tz = _check_tz(tz)
    fmt = _format_for(fmt, out)
    if trades and equity:
        raise UsageError("--trades and --equity each export one table; give one of them")
    if out is not None:
        _check_out(out)
    rep.check_sort(sort)
    if metric is not None:
        rep.check_sort(metric, "--metric")
    min_trades = rep.check_min_trades(min_trades)
    if fmt in (Format.json, Format.csv, Format.parquet) and not (trades or equity or stitched):
        if _stream_export(run_id, fmt, out, sort, top, symbol, params, min_trades):
            return
    if fmt == Format.table and not (trades or equity or stitched or symbol or params):
        if _catalog_table(run_id, sort, top or 10, tz, out, min_trades):
            return
    run_row, records = rep.task_records(run_id)
    rep.mark_eligible(records, min_trades)
    if symbol:
        present = sorted({r["symbol"] for r in records})
        if symbol.upper() not in {p.upper() for p in present}:
            shown = ", ".join(present[:10]) + (" ..." if len(present) > 10 else "")
            raise UsageError(f'--symbol {symbol}: not a symbol of run {run_row["run_id"]}; its symbols: {shown}')
    selected = rep.select_task(records, symbol, rep.parse_params_filter(params))
    if not (trades or equity) and _walk_forward_report(run_row, records, fmt, out, symbol, stitched, tz, sort, metric,
                                                       x, y, charts, open_):
        return
    if stitched:
        raise UsageError(f"--stitched is for walk-forward runs; {run_row['run_id']} is a plain run")
    if trades or equity:
        what = "--trades" if trades else "--equity"
        if len(selected) != 1:
            raise UsageError(f"{what} needs exactly one task; --symbol/--params select {len(selected)} "
                             "(give the symbol and every varying parameter, e.g. --symbol DEMO01 --params fast=10,slow=40)")
        if selected[0]["status"] != "done":
            raise UsageError(f"that task failed; it has no {what[2:]} (bt logs {run_row['run_id']} shows why)")
        if fmt == Format.html:
            raise UsageError(f"{what} exports a table: use --format table, csv, json or parquet")
        if equity:
            from backtest.report.equity import curves, equity_table
            from backtest.worker import tuning

            tuning.warm_up()
            (curve,) = curves(run_row, [selected[0]["key"]], records=records)
            table = equity_table(curve)
            if fmt == Format.table:
                console.print(rep.render_equity(selected[0], table, tz))
            else:
                _emit(rep.write_table(table, fmt.value, out))
            return
        rows = rep.trades_rows(selected[0]["key"], tz=tz)
        from backtest.report.equity import with_excursions
        from backtest.worker import tuning

        tuning.warm_up()
        said = with_excursions(run_row, selected[0]["key"], rows, records)
        if said:
            from backtest.cli.render import warn_line

            warn_line(said)
        if fmt == Format.table:
            console.print(rep.render_task(selected[0], rows))
        else:
            _emit(rep.write_rows(rows, fmt.value, out))
        return
    if fmt == Format.html:
        _write_html(run_row, records, out, sort, metric, x, y, charts, tz, open_, bool(symbol or params))
        return
    if fmt == Format.table:
        if (symbol or params) and len(selected) == 1:
            body = rep.render_task(selected[0], None)
        else:
            body = rep.render_run(run_row, selected, sort, top or 10, tz, total=len(records),
                                  facts=rep.run_facts(run_row, tz=tz), contrib=rep.portfolio_contrib(selected, sort))
        _show(body, out)
        return
    ranked = rep.ranked(selected, sort) + [r for r in selected if r["status"] != "done"]
    if top is not None:
        ranked = ranked[:top]
    if fmt == Format.json:
        text = rep.contract_json(ranked)
        if out:
            out.write_text(text)
        else:
            _emit(text)
        return
    _emit(rep.write_rows(rep.flat_rows(ranked), fmt.value, out))


def _plain_run(run_id: str) -> tuple[Path, Any, dict[str, Any]] | None:
    """(data root, catalog, run row) of a plain run; None for a walk-forward run (its reports are
    per fold)."""
    from backtest import paths
    from backtest.catalog import Catalog
    from backtest.store.archive import is_walk_forward

    root = paths.root()
    catalog = Catalog(root / "catalog.duckdb")
    run = catalog.run(run_id)
    return None if is_walk_forward(root, run) else (root, catalog, run)


def _catalog_table(run_id: str, sort: str, top: int, tz: str, out: Path | None, min_trades: int | None) -> bool:
    """The table report of a whole plain run, gathered by the catalog (it never loads every
    task); False for a walk-forward run."""
    from backtest import report as rep
    from backtest.report.stream import catalog_view

    found = _plain_run(run_id)
    if found is None:
        return False
    _, catalog, run = found
    view = catalog_view(catalog, run["run_id"], sort, top, min_trades)
    body = rep.render_view(run, view, sort, top, facts=rep.run_facts(run, tz=tz),
                           contrib=rep.portfolio_contrib(view.top, sort))
    _show(body, out)
    return True


def _stream_export(run_id: str, fmt: Format, out: Path | None, sort: str, top: int | None, symbol: str | None,
                   params: str | None, min_trades: int | None) -> bool:
    """json, csv or parquet of a plain run, a batch of rows at a time (bounded memory whatever the
    run's size); False for a walk-forward run (its report is per fold)."""
    from backtest import report as rep
    from backtest.report.stream import export

    found = _plain_run(run_id)
    if found is None:
        return False
    root, catalog, run = found
    wanted = rep.parse_params_filter(params)
    if symbol:
        present = [r["symbol"] for r in catalog._read("SELECT DISTINCT symbol FROM run_tasks WHERE run_id = ? "
                                                      "ORDER BY symbol", [run["run_id"]])]
        if symbol.upper() not in {p.upper() for p in present}:
            shown = ", ".join(present[:10]) + (" ..." if len(present) > 10 else "")
            raise UsageError(f'--symbol {symbol}: not a symbol of run {run["run_id"]}; its symbols: {shown}')
    export(run["run_id"], fmt.value, out, sort, top, symbol, wanted, root, min_trades)
    return True


def _show(body: Any, out: Path | None, width: int = 120) -> None:
    """A report's tables on the terminal, or as plain text in ``out``."""
    if out is None:
        console.print(body)
        return
    from rich.console import Console

    with out.open("w") as f:
        Console(file=f, width=width, no_color=True, highlight=False).print(body)
    err_console.print(f"wrote {out}")


def _walk_forward_report(run_row: dict[str, Any], records: list[dict[str, Any]], fmt: Format, out: Path | None,
                         symbol: str | None, stitched: bool, tz: str, sort: str, metric: str | None, x: str | None,
                         y: str | None, charts: int, open_: bool) -> bool:
    """The report of a walk-forward run (False for a plain run: the caller reports it)."""
    import json

    from backtest import paths
    from backtest import report as rep
    from backtest.report import walkforward as wfr

    root = paths.root()
    v = wfr.view(run_row, records, root)
    if v is None:
        return False
    if fmt == Format.html:
        _write_html(run_row, records, out, sort, metric, x, y, charts, tz, open_, bool(symbol))
        return True
    rows = [r for r in v.rows if not symbol or r.symbol.upper() == symbol.upper()]
    names = list(dict.fromkeys(r.symbol for r in rows))
    if fmt == Format.table or stitched:
        from backtest.worker import tuning

        tuning.warm_up()
        results = wfr.stitched(run_row, v, records, root, names)
    if fmt == Format.table:
        body = wfr.render(run_row, v, results, rep.run_facts(run_row, tz=tz), rep._varying(records))
        _show(body, out, 140)
        return True
    if fmt == Format.json:
        items = [r.to_json() for r in results] if stitched else [r.to_json() for r in rows]
        text = json.dumps(items, allow_nan=False)
        if out:
            out.write_text(text)
        else:
            _emit(text)
        return True
    flat = wfr.flat_stitched(results) if stitched else wfr.flat_rows(rows)
    _emit(rep.write_rows(flat, fmt.value, out))
    return True


def _format_for(fmt: Format | None, out: Path | None) -> Format:
    """--format as given, else the one --out's suffix names, else the table."""
    if fmt is not None:
        if out is not None and fmt != Format.table:
            suffix = out.suffix.lower().lstrip(".")
            if suffix in {f.value for f in Format} - {"table"} and suffix != fmt.value:
                raise UsageError(f"--format {fmt.value} but --out {out} ends in .{suffix}; make them agree")
        return fmt
    if out is not None:
        suffix = out.suffix.lower().lstrip(".")
        if suffix == "htm":
            return Format.html
        if suffix in {f.value for f in Format} - {"table"}:
            return Format(suffix)
    return Format.table


def _check_tz(tz: str) -> str:
    if tz.upper() == "UTC":
        return "UTC"
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise UsageError(f'--tz "{tz}" is not a time zone; give an IANA name such as America/New_York or UTC') from None
    return tz


def _write_html(run_row: dict[str, Any], records: list[dict[str, Any]], out: Path | None, sort: str, metric: str | None, x: str | None,
                y: str | None, charts: int, tz: str, open_: bool, filtered: bool) -> None:
    from backtest.report import html

    if filtered:
        raise UsageError("the HTML report covers the whole run; leave out --symbol/--params (its leaderboard filters by symbol)")
    path = out if out is not None else Path.cwd() / f"{run_row['run_id']}.html"
    if out is None:
        _check_out(path)
    err_console.print(f"writing the report of run {run_row['run_id']} ...", style="dim")
    written, seconds, size = html.write(run_row["run_id"], path, html.Options(sort, metric, x, y, charts, tz),
                                        have=(run_row, records))
    console.print(f"wrote {written} ({size / 1e6:.1f} MB, {seconds:.1f} s)")
    if open_:
        import webbrowser

        if not webbrowser.open(written.resolve().as_uri()):
            err_console.print(f"no browser found to open it; open {written} yourself")


def _check_out(out: Path) -> None:
    """An --out path that cannot be written is one clear line, before any work."""
    folder = out.expanduser().resolve().parent
    if not folder.is_dir():
        raise UsageError(f"cannot write {out}: the folder {folder} does not exist; create it or choose another --out")
    if out.is_dir():
        raise UsageError(f"cannot write {out}: it is a folder; give a file name, e.g. {out / 'report.csv'}")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {out}: the folder {folder} is not writable")


def _emit(text: str | None) -> None:
    if text is not None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("report")(report)
