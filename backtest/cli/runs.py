"""`bt runs` (and `bt runs rm`), `bt logs`, `bt verify`, `bt compare`, `bt gc`, `bt catalog rebuild`:
the recorded runs and their upkeep."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from backtest.cli.render import console, err_console, warn_line
from backtest.errors import UsageError

if TYPE_CHECKING:
    from rich.table import Table

RUN_HELP = "A run id (bt runs lists them), a unique prefix of one, or latest (the newest run)."

runs_app = typer.Typer(invoke_without_command=True)


@runs_app.callback()
def runs(ctx: typer.Context, limit: Annotated[int, typer.Option(help="How many runs to list.")] = 20) -> None:
    """List runs, newest first: the run id and strategy, what ran (symbols, date range, parameter sets), tasks, cached, failed, status, time taken, when it started.

    bt runs rm RUN... removes runs; bt gc then deletes the results no run refers to.

    Example: bt runs --limit 5
    """
    if ctx.invoked_subcommand is not None:
        return
    from backtest import paths
    from backtest.catalog import Catalog
    from backtest.run import coordinator_alive
    from backtest.run.recover import recovery

    if limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    root = paths.root()
    cat = Catalog(root / "catalog.duckdb", recover=recovery(root))
    cat.mark_stale_runs(coordinator_alive)
    rows = cat.runs(limit)
    if not rows:
        console.print("no runs yet; start one with: bt run strategies/sma_cross.py")
        return
    console.print(render_runs(rows, root, console.width))


# the runs table ----------------------------------------------------------------------------------

_STATUS_STYLE = {"done": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}


def _symbols(symbols: Sequence[str]) -> str:
    """The names when there are three or fewer, else how many."""
    return ", ".join(symbols) if len(symbols) <= 3 else str(len(symbols))


def _span(start_ns: int, end_ns: int) -> tuple[str, str]:
    """(from, to) as dates (UTC); years alone when the range is whole years; "" for an open end."""
    import datetime as dt

    def day(ns: int) -> dt.date:
        return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).date()

    first = None if start_ns <= 0 else day(start_ns)
    last = None if end_ns >= 2**63 - 1 else day(end_ns)
    if (first is None or (first.month, first.day) == (1, 1)) and (last is None or (last.month, last.day) == (12, 31)):
        return (str(first.year) if first else ""), (str(last.year) if last else "")
    return (first.isoformat() if first else ""), (last.isoformat() if last else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _run_cells(run: dict[str, Any], root: Path) -> dict[str, Any]:
    """One run's cells: texts, and the (from, to) pair of its range ("–" where its job file is gone)."""
    import datetime as dt

    from backtest.store.archive import scope_of

    job = scope_of(root, run)
    created = dt.datetime.fromtimestamp(run["created"])
    stamp = created.strftime("%m-%d" if created.year == dt.datetime.now().year else "%Y-%m-%d")
    return {
        "run": run["run_id"], "strategy": run["strategy"] or "",
        "symbols": (_symbols(job["names"]) if "names" in job else str(job["symbols"])) if job else "–",
        "range": _span(job["start_ns"], job["end_ns"]) if job else ("–", ""),
        "sets": str(job["sets"]) if job else "–",
        "tasks": str(run["tasks"]), "cached": str(run["cached"]), "failed": str(run["failed"]),
        "status": run["status"] or "", "time": _duration(run["seconds"]),
        "when": (stamp, created.strftime("%H:%M")),
    }


def _range_text(span: tuple[str, str], width: int | None = None) -> str:
    """``from–to``; the two dates on two lines when wider than ``width``."""
    first, last = span
    if first == "–":
        return "–"
    if not first and not last:
        return "all"
    one = f"{first}–{last}"
    return one if width is None or len(one) <= width or not (first and last) else f"{first}\n{last}"


def _when_text(when: tuple[str, str], width: int | None = None) -> str:
    one = f"{when[0]} {when[1]}"
    return one if width is None or len(one) <= width else f"{when[0]}\n{when[1]}"


def _widest(texts: Sequence[str]) -> int:
    return max((len(line) for t in texts for line in t.split("\n")), default=0)


def render_runs(runs: Sequence[dict[str, Any]], root: Path, width: int = 80) -> Table:
    """The runs table, laid out for ``width`` columns: one line a run when everything fits (with a
    strategy column), else the strategy under the run id, then as needed: start times on two
    lines, date ranges on two lines, symbol names wrapped, and last the run id (and, if it must,
    the strategy name) wrapped. Nothing is cut short with "…"."""
    from rich.table import Table
    from rich.text import Text

    cells = [_run_cells(r, root) for r in runs]
    numeric = ("sets", "tasks", "cached", "failed")
    fixed = {c: max([len(c), *(len(x[c]) for x in cells)]) for c in (*numeric, "status", "time")}
    run_w = max(3, _widest([c["run"] for c in cells]))
    strategy_w = max(8, _widest([c["strategy"] for c in cells]))
    widths = {
        "run": run_w,
        "symbols": max(7, _widest([c["symbols"] for c in cells])),
        "range": max(5, _widest([_range_text(c["range"]) for c in cells])),
        "when": max(4, _widest([_when_text(c["when"]) for c in cells])),
    }

    def total(columns: dict[str, int]) -> int:  # one space between columns
        return sum(columns.values()) + sum(fixed.values()) + len(columns) + len(fixed) - 1

    stacked = total({**widths, "strategy": strategy_w}) > width
    if stacked:
        widths["run"] = max(run_w, strategy_w)
        narrower = [  # in this order, each only as far as needed
            ("when", _widest([_when_text(c["when"], 0) for c in cells])),
            ("range", max(5, _widest([_range_text(c["range"], 0) for c in cells]))),
            ("symbols", max(7, *(len(n) + 1 for c in cells for n in c["symbols"].split(", ")))),
            ("run", max(8, strategy_w)),
            ("run", 8),
        ]
        for column, least in narrower:
            excess = total(widths) - width
            if excess > 0:  # a time or a range is on one line or two: no width in between helps
                wraps = column in ("symbols", "run")
                widths[column] = max(least, widths[column] - excess) if wraps else min(least, widths[column])

    t = Table(title="runs, newest first", title_justify="left", box=None, pad_edge=False, padding=(0, 1, 0, 0))
    t.add_column("run", width=widths["run"], overflow="fold")
    if not stacked:
        t.add_column("strategy", width=strategy_w, overflow="fold")
    t.add_column("symbols", width=widths["symbols"], overflow="fold")
    t.add_column("range", width=widths["range"], overflow="fold")
    for name in numeric:
        t.add_column(name, justify="right", width=fixed[name], no_wrap=True)
    t.add_column("status", width=fixed["status"], no_wrap=True)
    t.add_column("time", justify="right", width=fixed["time"], no_wrap=True)
    t.add_column("when", width=widths["when"], overflow="fold")
    for c in cells:
        run = Text(c["run"], style="bold")
        if stacked:
            run = Text.assemble(run, "\n", (c["strategy"], "dim"))
        row: list[Any] = [run] + ([] if stacked else [c["strategy"]])
        row += [c["symbols"], _range_text(c["range"], widths["range"]), *(c[n] for n in numeric),
                Text(c["status"], style=_STATUS_STYLE.get(c["status"], "")), c["time"],
                _when_text(c["when"], widths["when"])]
        t.add_row(*row)
    return t


# removing runs, and their results ------------------------------------------------------------------


@runs_app.command("rm")
def runs_rm(
    run_ids: Annotated[list[str], typer.Argument(help=RUN_HELP + " Several may be given.", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Remove a run recorded as still running, too (e.g. one a coordinator on another machine recorded, which bt cannot check).")] = False,
) -> None:
    """Remove runs from the catalog: their run rows, task outcomes and logs. Their results stay in the results store (other runs may share them): bt gc deletes those no run refers to any more.

    A run that is still running (its coordinator is alive) is refused unless --force. All the runs named are checked before any is removed.

    Example: bt runs rm sma_cross-3f2a9c sma_cross-77a0b1
    """
    from backtest import paths
    from backtest.catalog import Catalog
    from backtest.run import coordinator_alive

    cat = Catalog(paths.root() / "catalog.duckdb")
    named = [cat.run(i)["run_id"] for i in run_ids]  # unknown or ambiguous: one line, exit 2, nothing removed
    removed = cat.remove_runs(named, coordinator_alive, force)
    for r in removed.runs:
        console.print(f"removed run {r['run_id']} ({r['strategy']}, {r['status']}): {r['tasks']} task outcome(s), "
                      f"{r['logs']} log entr{'y' if r['logs'] == 1 else 'ies'}", highlight=False)
    if removed.unreferenced:
        console.print(f"{removed.unreferenced} result(s) no run refers to any more: bt gc deletes them",
                      highlight=False)


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


SHOWN = 5  # keys and files a dry run names


def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted (how many, their size, the first few); delete nothing.")] = False,
) -> None:
    """Delete the stored results no recorded run refers to any more, and damaged result files set aside.

    Results are shared by content: a result is kept while any recorded run names it, so bt runs rm frees only what no other run uses. A later bt run that needs a deleted result computes it again. Refuses while a run is going on (its newest results are not recorded yet). A store made before pack files (one file a task) has the files it keeps packed.

    Example: bt runs rm sma_cross-3f2a9c && bt gc --dry-run && bt gc
    """
    from backtest import paths
    from backtest.catalog.gc import collect
    from backtest.run import coordinator_alive
    from backtest.run.recover import recovery

    found = collect(coordinator_alive, dry_run, recover=recovery(paths.root()))
    verb = "would delete" if dry_run else "deleted"
    if not found.keys and not found.damaged:
        console.print("nothing to delete: every stored result belongs to a recorded run", highlight=False)
    else:
        console.print(f"{verb} {len(found.keys)} result(s) no run refers to ({_bytes(found.size)})", highlight=False)
        if dry_run:
            for k in found.keys[:SHOWN]:
                console.print(f"  {k}", highlight=False)
            if len(found.keys) > SHOWN:
                console.print(f"  and {len(found.keys) - SHOWN} more", highlight=False)
        if found.damaged:
            console.print(f"{verb} {len(found.damaged)} damaged result file(s) set aside ({_bytes(found.damaged_size)})",
                          highlight=False)
            if dry_run:
                for p in found.damaged[:SHOWN]:
                    console.print(f"  {p}", highlight=False, soft_wrap=True)  # a path is never broken
                if len(found.damaged) > SHOWN:
                    console.print(f"  and {len(found.damaged) - SHOWN} more", highlight=False)
    if found.packed:
        console.print(f"packed {found.packed} result file(s) of the one-file-a-task layout into {found.packs} "
                      "pack(s)", highlight=False)
    if dry_run and found.live:
        warn_line(f"run {found.live[0]['run_id']} is going on: results it has not recorded yet may be listed "
                  "here, and bt gc refuses until it ends")
    if dry_run and (found.keys or found.damaged):
        console.print("nothing was deleted (dry run); bt gc deletes them", highlight=False)


# comparing two runs --------------------------------------------------------------------------------


class CompareFormat(StrEnum):
    table = "table"
    json = "json"


def compare(
    run_a: Annotated[str, typer.Argument(help="A, the baseline: " + RUN_HELP[0].lower() + RUN_HELP[1:], show_default=False)],
    run_b: Annotated[str, typer.Argument(help="B, compared with A: " + RUN_HELP[0].lower() + RUN_HELP[1:], show_default=False)],
    fmt: Annotated[CompareFormat, typer.Option("--format", help="table, or json for machine use.")] = CompareFormat.table,
    as_json: Annotated[bool, typer.Option("--json", hidden=True, help="Same as --format json.")] = False,
) -> None:
    """Compare two runs: what differs in what they ran (strategy, code, symbols, date range, grid, settings), the tasks they share, and how the key metrics moved.

    Tasks with the same key are the same result by construction (shared). Tasks of the same symbol and parameters whose keys differ (other settings, code, range or data) are compared: per metric, the median and the largest absolute difference B − A, and over how many tasks. Naming the same run twice is an error.

    Example: bt compare sma_cross-3f2a9c latest
    """
    import json

    from backtest.catalog.compare import compare_runs

    found = compare_runs(run_a, run_b)
    if as_json or fmt == CompareFormat.json:
        console.out(json.dumps(found, allow_nan=False), highlight=False)
        return
    console.print(render_compare(found))


_FRACTIONS = {"total_return", "max_drawdown", "win_rate"}


def _diff(metric: str, v: float | None, signed: bool = True) -> str:
    if v is None:
        return "–"
    sign = "+" if signed and v != 0 else ""
    if metric in _FRACTIONS:
        return f"{v * 100:{sign}.2f} pp"
    if metric == "trades":
        return f"{v:{sign},.0f}" if float(v).is_integer() else f"{v:{sign},.1f}"
    return f"{v:{sign}.3f}"


def _names(values: Sequence[Any], most: int) -> str:
    texts = [str(x).lower() if isinstance(x, bool) else str(x) for x in values]
    return ", ".join(texts[:most]) + (f" and {len(texts) - most} more" if len(texts) > most else "")


def _value(field: str, v: Any, other: Any) -> str:
    """A cell of the "what differs" table: ``v``, next to the other run's ``other``."""
    if v is None:
        return {"from": "first bar", "to": "last bar"}.get(field, "–")
    if field == "symbols" and isinstance(v, list):
        if len(v) <= 6:
            return ", ".join(v)
        extra = [s for s in v if s not in set(other or [])]
        return f"{len(v)} symbols" + (f", {len(extra)} the other has not: {_names(extra, 5)}" if extra else "")
    if isinstance(v, list):
        return _names(v, 12) if len(v) <= 14 else f"{len(v)} values: {_names(v, 6)}"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def render_compare(c: dict[str, Any]) -> Any:
    """The comparison as rich tables (``c`` from ``compare_runs``)."""
    import datetime as dt

    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    for name in ("a", "b"):
        r = c[name]
        when = dt.datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M")
        parts.append(Text.assemble((f"{name.upper()}  ", "bold"), (r["run_id"], "bold"),
                                   f"  {r['strategy'] or ''}, {r['status']}, {r['tasks']} tasks, {when}"))
    parts.append(Text())
    labels = {"code_hash": "code", "parameter_sets": "parameter sets",
              "data_partitions_not_in_other": "data (partitions the other did not read)"}
    if c["differences"]:
        t = Table(title="what differs", title_justify="left", box=None, pad_edge=False, padding=(0, 2, 0, 0))
        t.add_column("", no_wrap=True, style="bold")
        t.add_column("A", overflow="fold")
        t.add_column("B", overflow="fold")
        for d in c["differences"]:
            f = d["field"]
            label = labels.get(f) or f.removeprefix("settings.")
            if f.startswith("param."):
                label = f"grid: {f.removeprefix('param.')}"
            va, vb = (d[k][:12] if f == "code_hash" and d[k] else d[k] for k in ("a", "b"))
            t.add_row(label, _value(f, va, vb), _value(f, vb, va))
        parts.append(t)
    else:
        parts.append(Text("they ran the same strategy code, symbols, range, grid and settings", style="dim"))
    tasks = c["tasks"]
    parts += [Text(), Text(f"tasks: {tasks['shared']} shared (the same key: the same result), {tasks['matched']} "
                           f"of the same symbol and parameters computed differently, {tasks['only_a']} only in A, "
                           f"{tasks['only_b']} only in B")]
    if tasks["matched"]:
        t = Table(title=f"B − A over the {tasks['matched']} tasks computed differently", title_justify="left",
                  caption="pp: percentage points", caption_justify="left", box=None, pad_edge=False,
                  padding=(0, 2, 0, 0))
        t.add_column("metric", no_wrap=True)
        for col in ("median difference", "max abs difference", "count"):
            t.add_column(col, justify="right", no_wrap=True)
        for m in c["metrics"]:
            t.add_row(m["metric"], _diff(m["metric"], m["median_diff"]), _diff(m["metric"], m["max_abs_diff"], False),
                      str(m["count"]))
        parts += [Text(), t]
    return Group(*parts)


def logs(run_id: Annotated[str, typer.Argument(help=RUN_HELP, show_default=False)]) -> None:
    """Show a run's captured strategy output, worker events and failure tracebacks.

    Example: bt logs latest
    """
    from backtest import paths
    from backtest.catalog import Catalog

    cat = Catalog(paths.root() / "catalog.duckdb")
    run_row = cat.run(run_id)
    entries = cat.logs(run_row["run_id"])
    fails = cat.failures(run_row["run_id"])
    if not entries and not fails:
        console.print(f"run {run_row['run_id']}: no output and no failures")
    for e in entries:
        console.rule(f"{e['worker'] or ''} {('shard ' + e['shard']) if e['shard'] else ''}".strip(), align="left")
        console.out(e["text"].rstrip(), highlight=False)
    for f in fails:
        console.rule(f"[red]failed[/] {f['symbol']} {f['params']} ({f['attempts']} attempts)", align="left")
        console.out((f["details"] or f["error"] or "").rstrip(), highlight=False)


def verify(
    run_id: Annotated[str, typer.Argument(help=RUN_HELP, show_default=False)],
    sample: Annotated[int | None, typer.Option(help="Recompute only this many tasks, chosen at random (seeded).")] = None,
) -> None:
    """Recompute a run's tasks and check the results are bit-for-bit identical to the stored ones.

    Example: bt verify sma_cross-3f2a9c --sample 20     (exit 1 on any mismatch)
    """
    from backtest.run import verify as do_verify

    if sample is not None and sample < 1:
        raise UsageError("--sample must be at least 1")
    rep = do_verify(run_id, sample)
    if rep.data_changed:
        console.print(f"[red]data changed or removed[/] since run {rep.run_id}: its results cannot be recomputed "
                      "from the same bars (bt run computes them on today's data):")
        for line in rep.data_changed[:20]:
            console.print(f"  {line}")
        raise typer.Exit(1)
    bad = rep.mismatched + rep.missing
    if bad:
        console.print(f"[red]{len(bad)} of {rep.checked} tasks differ[/] from their stored results in run {rep.run_id}:")
        for k in bad[:20]:
            console.print(f"  {k}: {rep.why.get(k, 'not stored')}", highlight=False)
        if rep.mismatched:
            console.print("the same key made other bits: the task depends on something its key does not cover "
                          "(a file it reads, code loaded by name, randomness); bt run --force keeps the new results")
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: {rep.checked} tasks of run {rep.run_id} recomputed, all bit-for-bit identical")


catalog_app = typer.Typer(help="Maintain the catalog (the DuckDB index of runs and results).", no_args_is_help=True)


@catalog_app.command("rebuild")
def catalog_rebuild() -> None:
    """Re-index every stored result into the catalog's results table (the results store is the truth).

    A result file that cannot be read is left out and named (the next run that needs it computes
    it again); temporary files left by workers killed mid-write (over 10 minutes old) are removed.
    A catalog file that cannot be opened at all is set aside (catalog.duckdb.damaged-TIME) and a
    new one made.

    Example: bt catalog rebuild
    """
    from backtest.catalog.rebuild import rebuild

    done = rebuild()
    if done.set_aside:
        warn_line(f"the catalog could not be opened: moved it to {done.set_aside} and made a new one; the runs "
                  "it recorded are not in the new one (their results are, and a rerun of a job is fully cached)")
    console.print(f"indexed {done.indexed} results")
    if done.damaged:
        shown = ", ".join(k[:12] for k in done.damaged[:5]) + (" ..." if len(done.damaged) > 5 else "")
        err_console.print(f"left out {len(done.damaged)} damaged result file(s) ({shown}); "
                          "the next run that needs them computes them again")
    if done.removed:
        console.print(f"removed {done.removed} leftover temporary file(s) of interrupted writers")


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
    app.command("compare")(compare)
    app.command("gc")(gc)
    app.command("logs")(logs)
    app.command("verify")(verify)
    app.add_typer(catalog_app, name="catalog")
