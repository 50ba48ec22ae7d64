"""`bt runs`, `bt logs`, `bt verify`, `bt catalog rebuild`: the recorded runs and their upkeep."""

from __future__ import annotations

from typing import Annotated

import typer

from backtest.cli.render import console, err_console
from backtest.errors import UsageError


def runs(limit: Annotated[int, typer.Option(help="How many runs to list.")] = 20) -> None:
    """List runs, newest first: id, when, strategy, tasks, cached, failed, status, time.

    Example: bt runs --limit 5
    """
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
    app.command("runs")(runs)
    app.command("logs")(logs)
    app.command("verify")(verify)
    app.add_typer(catalog_app, name="catalog")
