"""`bt cache push|pull`: a run's results moved to or from the shared result cache."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from backtest.cli.render import console, err_console, human_size, warn_line
from backtest.cli.runs import RUN_HELP
from backtest.errors import UsageError

cache_app = typer.Typer(
    help="Move a run's results to or from the result cache shared on object storage (--remote-cache).",
    no_args_is_help=True,
)

_URI_HELP = ("The shared result cache: s3://bucket/prefix, or another URI pyarrow.fs opens (default: "
             "BT_REMOTE_CACHE). Endpoint, region and credentials as for --store.")


def _remote(uri: str | None, read_only: bool = False) -> Any:
    from backtest import paths
    from backtest.store.remote import RemoteCache, check_uri, configured

    found, ro = configured(uri, read_only or None)
    if found is None:
        raise UsageError("no remote cache given: add --remote-cache s3://bucket/prefix or set BT_REMOTE_CACHE")
    check_uri(found)
    return RemoteCache(found, paths.root(), ro)


@cache_app.command("push")
def push(
    run_id: Annotated[str, typer.Argument(help=RUN_HELP, show_default=False)],
    remote_cache: Annotated[str | None, typer.Option("--remote-cache", metavar="URI", help=_URI_HELP, show_default=False)] = None,
) -> None:
    """Upload a run's results to the shared result cache, with its job, strategy source and catalog row (so that others can pull it by its id).

    A run with --remote-cache uploads what it computes by itself; push is for runs made without one, or interrupted.

    Examples:
      bt cache push latest --remote-cache s3://team-bt/cache
      BT_REMOTE_CACHE=s3://team-bt/cache bt cache push sma_cross-3f2a9c
    """
    from backtest import paths
    from backtest.run.share import push_run

    remote = _remote(remote_cache)
    err_console.print(f"pushing run {run_id} to the remote cache {remote.where} ...", style="dim", highlight=False)
    moved = push_run(run_id, remote, paths.root())
    for note in remote.new_warnings():
        warn_line(note)
    packs = moved.moved + moved.present
    console.print(f"pushed run {moved.run_id}: {moved.results:,} results in {packs:,} pack{'s' if packs != 1 else ''}, "
                  f"{moved.moved:,} uploaded ({human_size(moved.bytes)}), {moved.present:,} already there",
                  highlight=False)


@cache_app.command("pull")
def pull(
    run_id: Annotated[str, typer.Argument(help="A run id this catalog records (or a unique prefix, or latest), or the id of a run someone pushed.", show_default=False)],
    remote_cache: Annotated[str | None, typer.Option("--remote-cache", metavar="URI", help=_URI_HELP, show_default=False)] = None,
) -> None:
    """Fetch a run's results from the shared result cache into this data root, each checked against its checksum.

    For a run only the cache knows (pushed from another machine), its job and strategy source are fetched too: running the same job here then computes nothing.

    Examples:
      bt cache pull sma_cross-3f2a9c --remote-cache s3://team-bt/cache
      bt cache pull latest
    """
    from backtest import paths
    from backtest.run.share import pull_run

    remote = _remote(remote_cache, read_only=True)
    moved = pull_run(run_id, remote, paths.root())
    for note in remote.new_warnings():
        warn_line(note)
    console.print(f"pulled run {moved.run_id}: {moved.moved:,} results fetched, {moved.present:,} already here"
                  + (f", {moved.missing:,} not in the cache" if moved.missing else ""), highlight=False)
    if not moved.known_here:
        console.print("this catalog does not record that run: run its job here to record it (its tasks are "
                      "cached now)", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
