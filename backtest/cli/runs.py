"""`bt runs` (and `bt runs rm`), `bt logs`, `bt verify`, `bt compare`, `bt gc`, `bt catalog rebuild`:
the recorded runs and their upkeep."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from backtest.cli.render import console, err_console
from backtest.errors import UsageError

runs_app = typer.Typer(invoke_without_command=True)


@runs_app.callback()
def runs(ctx: typer.Context, limit: Annotated[int, typer.Option(help="How many runs to list.")] = 20) -> None:
    """List runs, newest first: id, what ran (strategy, symbols, range, parameter sets), when,
    tasks, cached, failed, status, time. bt runs rm RUN... removes runs.

    Examples:
      bt runs --limit 5
      bt runs rm sma_cross-3f2a9c
    """
    if ctx.invoked_subcommand is not None:
        return
    from backtest import paths
    from backtest.catalog import Catalog
    from backtest.report import render_runs
    from backtest.run import coordinator_alive as _pid_alive

    if limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    cat = Catalog(paths.root() / "catalog.duckdb")
    cat.mark_stale_runs(_pid_alive) if cat.path.exists() else None
    rows = cat.runs(limit)
    if not rows:
        console.print("no runs yet; start one with: bt run strategies/sma_cross.py")
        return
    console.print(render_runs(rows))


@runs_app.command("rm")
def runs_rm(
    run_ids: Annotated[list[str], typer.Argument(help="Run ids (a unique prefix works; latest: the newest run).", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Remove a run that is still running too.")] = False,
) -> None:
    """Remove runs from the catalog (their rows, task outcomes and logs); results stay until bt gc.

    Their results stay in the results store (other runs may share them); bt gc deletes the
    results no run refers to any more.

    Example: bt runs rm sma_cross-3f2a9c sma_cross-77a0b1
    """
    from backtest import paths
    from backtest.catalog import Catalog
    from backtest.run import coordinator_alive

    cat = Catalog(paths.root() / "catalog.duckdb")
    rows = {r["run_id"]: r for r in (cat.run(i) for i in run_ids)}  # unknown/ambiguous: one line, exit 2
    live = set(cat.running(coordinator_alive)) & set(rows)
    if live and not force:
        raise UsageError(f"run {sorted(live)[0]} is still running; stop it first (Ctrl+C in its terminal), or give --force")
    cat.remove_runs(list(rows))
    for rid, r in rows.items():
        console.print(f"removed run {rid} ({r['strategy']}, {r['tasks']} tasks); its results stay until bt gc")


def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")] = False,
) -> None:
    """Delete stored results no recorded run refers to, and damaged result files set aside.

    Results lose their last run with bt runs rm. Refuses while a run is going on.

    Examples:
      bt gc --dry-run
      bt gc
    """
    from backtest import paths
    from backtest.catalog import Catalog
    from backtest.run import coordinator_alive
    from backtest.store.results import ResultStore

    root = paths.root()
    cat = Catalog(root / "catalog.duckdb")
    live = cat.running(coordinator_alive)
    if live:
        raise UsageError(f"run {live[0]} is going on; run bt gc when it has finished (its results are not recorded yet)")
    store = ResultStore(root)
    used = cat.referenced_keys()
    unused = [k for k in store.keys() if k not in used]
    damaged = store.damaged_files()

    def size(paths_: list[Any]) -> int:
        total = 0
        for p in paths_:
            try:
                total += p.stat().st_size
            except OSError:
                pass
        return total

    files = [store.path(k) for k in unused]
    freed = size(files) + size(damaged)
    what = (f"{len(unused)} result(s) no run refers to and {len(damaged)} damaged file(s) set aside: "
            f"{freed / 1e6:.1f} MB")
    if dry_run:
        console.print(f"would delete {what}")
        for k in unused[:10]:
            console.print(f"  {k}")
        if len(unused) > 10:
            console.print(f"  and {len(unused) - 10} more")
        for p in damaged[:10]:
            console.print(f"  {p}")
        return
    cat.forget_results(unused)
    for k in unused:
        store.remove(k)
    for p in damaged:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    console.print(f"deleted {what}")


def compare(
    run_a: Annotated[str, typer.Argument(help="A run id.", show_default=False)],
    run_b: Annotated[str, typer.Argument(help="Another run id.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Compare two runs: what differs in what they ran, the tasks they share, how metrics moved.

    Tasks with the same key are the same result by construction; tasks of the same symbol and
    parameters whose keys differ (other settings, code or data) are compared metric by metric.

    Example: bt compare sma_cross-3f2a9c sma_cross-77a0b1
    """
    import json

    from backtest.report import compare_runs, render_compare

    found = compare_runs(run_a, run_b)
    if as_json:
        console.out(json.dumps(found, allow_nan=False), highlight=False)
        return
    console.print(render_compare(found))


def logs(run_id: Annotated[str, typer.Argument(help="The run id (a unique prefix works; latest: the newest run).", show_default=False)]) -> None:
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
    run_id: Annotated[str, typer.Argument(help="The run id (a unique prefix works; latest: the newest run).", show_default=False)],
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
            console.print(f"  {k}")
        raise typer.Exit(1)
    console.print(f"[green]ok[/]: {rep.checked} tasks of run {rep.run_id} recomputed, all bit-for-bit identical")


catalog_app = typer.Typer(help="Maintain the catalog (the DuckDB index of runs and results).", no_args_is_help=True)


@catalog_app.command("rebuild")
def catalog_rebuild() -> None:
    """Re-index every stored result into the catalog's results table (the results store is the truth).

    A result file that cannot be read is left out and named (the next run that needs it computes
    it again); temporary files left by workers killed mid-write (over 10 minutes old) are removed.

    Example: bt catalog rebuild
    """
    from backtest.catalog.rebuild import rebuild

    done = rebuild()
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
