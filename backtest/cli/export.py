"""`bt export mlflow`: a run sent to another tool."""

from __future__ import annotations

from typing import Annotated

import typer

from backtest.cli.render import console, err_console, warn_line
from backtest.cli.runs import RUN_HELP

export_app = typer.Typer(help="Send a run to another tool (MLflow).", no_args_is_help=True)


@export_app.command("mlflow")
def mlflow_(
    run_id: Annotated[str, typer.Argument(help=RUN_HELP, show_default=False)],
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="Where MLflow keeps runs: http://HOST:PORT for a tracking server, sqlite:///FILE.db for a local database (default: MLFLOW_TRACKING_URI, else MLflow's default).", show_default=False)] = None,
    experiment: Annotated[str | None, typer.Option(help="The MLflow experiment, made if missing (default: the strategy's name).", show_default=False)] = None,
    top: Annotated[int | None, typer.Option(help="Export only the best N tasks by --sort.", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Export every task even when there are more than 1,000 (without it, --top N is needed then).")] = False,
    sort: Annotated[str, typer.Option(help="The metric --top ranks by (and the report's), e.g. sharpe, calmar.")] = "sharpe",
    trades: Annotated[bool, typer.Option("--trades", help="Attach each task's trades as trades.csv to its MLflow run (MAE/MFE included: the tasks are computed again for them).")] = False,
) -> None:
    """Export a run to MLflow: one parent MLflow run for the run (tags: run id, strategy, source hash, data hashes, executor, versions; params: the fixed settings; artifacts: the HTML report, the strategy source, the job) and one nested run per task (params: its parameters and symbol; metrics: every metric; tags: its task key).

    Exporting the same run again updates the same MLflow runs (found by their tags) instead of adding new ones. Needs the MLflow client: pip install 'bt-farm\\[mlflow]'.

    Examples:
      bt export mlflow latest --tracking-uri http://127.0.0.1:5000
      bt export mlflow sma_cross-3f2a9c --top 50 --sort calmar --experiment sma-research
      bt export mlflow sma_cross-3f2a9c --all --trades --tracking-uri sqlite:///mlflow.db
    """
    from backtest.report import mlflow as mlf

    if experiment is not None:
        experiment = mlf.check_experiment(experiment)
    sel = mlf.select(run_id, top, all_, sort)  # refusals (unknown run, too many tasks) before MLflow is loaded
    client, uri = mlf.mlflow_client(tracking_uri)
    err_console.print(f"exporting {len(sel.tasks)} of the {sel.total} tasks of run {sel.run['run_id']} to MLflow "
                      f"at {uri} ...", style="dim", highlight=False, soft_wrap=True)
    done = mlf.export(sel, client, uri, experiment, sort, trades)
    for note in (done.report_note, done.trades_note):
        if note:
            warn_line(note)
    counts = [f"{done.created} task run(s) made"] + ([f"{done.completed} completed"] if done.completed else [])
    counts.append(f"{done.kept} already exported")
    console.print(f"exported run {done.run_id} to MLflow experiment \"{done.experiment}\": {', '.join(counts)}; "
                  f"artifacts {', '.join(done.artifacts)} ({done.seconds:.1f} s)", highlight=False, soft_wrap=True)
    console.print(f"  {mlf.describe(done)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
