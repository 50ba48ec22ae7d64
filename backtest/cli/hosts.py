"""`bt hosts ...`: check the SSH hosts of a farm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from backtest.cli.render import human_size

app = typer.Typer(help="Check the SSH hosts of a farm, and free the disk bt uses on them.", no_args_is_help=True)


@app.command("check")
def check(
    file: Annotated[
        Path,
        typer.Argument(
            help="Hosts file: one \\[user@]host[:port] a line, options cores=N python=PATH key=PATH."
        ),
    ],
    accept_new_hosts: Annotated[
        bool,
        typer.Option(
            "--accept-new-hosts", help="Record the keys of hosts not yet in known_hosts (never changed ones)."
        ),
    ] = False,
    install: Annotated[
        bool,
        typer.Option(
            "--install",
            help="Also build bt's environment on hosts that lack it (first contact takes a while).",
        ),
    ] = False,
    known_hosts: Annotated[
        Path | None,
        typer.Option(
            "--known-hosts",
            envvar="BT_KNOWN_HOSTS",
            help="known_hosts file (default: ssh config, then ~/.ssh/known_hosts).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for a host to answer.")] = 10.0,
    trial: Annotated[bool, typer.Option(
        "--trial/--no-trial", help="Run one small task on each host whose environment matches (a real worker, "
        "result compared bit for bit with this machine's).")] = True,
) -> None:
    """Reach every host in parallel; show reachability, cores, Python, environment, latency, the
    disk bt uses there, and whether a task really runs there.

    Exits 1 when any host fails.  Example: bt hosts check farm.txt --accept-new-hosts
    """
    from backtest.cli.render import console
    from backtest.executors.ssh.check import check_hosts
    from backtest.executors.ssh.connect import SSHSettings
    from backtest.executors.ssh.hostsfile import read_hosts_file

    specs = read_hosts_file(file)
    settings = SSHSettings(
        known_hosts=known_hosts, accept_new_hosts=accept_new_hosts, connect_timeout=timeout
    )
    with console.status(f"checking {len(specs)} host{'s' if len(specs) != 1 else ''} ..."):
        reports = check_hosts(specs, settings, install=install)
    ready = [i for i, r in enumerate(reports) if r.ok and r.environment.endswith("match")]
    if trial and ready:
        from dataclasses import replace

        from backtest.run.trial import trial_hosts

        with console.status(f"running a task on {len(ready)} host{'s' if len(ready) != 1 else ''} ..."):
            outcomes = trial_hosts([reports[i].spec for i in ready], settings)
        for i, (outcome, box) in zip(ready, outcomes, strict=True):
            bad = outcome.startswith("failed: ")
            reports[i] = replace(reports[i], trial="failed" if bad else outcome,
                                 error=outcome.removeprefix("failed: ") if bad else None, sandbox=box)
    console.print(hosts_table(reports))
    for r in reports:
        if r.sandbox:
            console.print(f"sandbox on {r.spec.name}: {r.sandbox}", style="yellow" if "NOT" in r.sandbox else None,
                          highlight=False)
    failed = [r for r in reports if not r.ok]
    if failed:
        console.print(f"[red]{len(failed)} of {len(reports)} hosts failed[/]")
        raise typer.Exit(1)


@app.command("clean")
def clean(
    file: Annotated[Path, typer.Argument(help="Hosts file (as for bt hosts check).", show_default=False)],
    everything: Annotated[bool, typer.Option(
        "--all", help="Delete everything bt keeps on the hosts, the current environment too (the next run "
        "builds it again).")] = False,
    known_hosts: Annotated[Path | None, typer.Option(
        "--known-hosts", envvar="BT_KNOWN_HOSTS", help="known_hosts file (default: ssh config, then "
        "~/.ssh/known_hosts).", show_default=False)] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for a host to answer.")] = 10.0,
) -> None:
    """Free the disk bt uses on the hosts (~/.cache/bt): old environments and copies of bt, shipped
    packages and data (shipped again when a run needs them), strategy copies, records of gone
    workers. Keeps the environment this bt uses unless --all. Refused on a host where a bt worker
    runs. Exits 1 when any host fails.

    Example: bt hosts clean farm.txt
    """
    from rich.markup import escape
    from rich.table import Table

    from backtest.cli.render import console
    from backtest.executors.ssh.check import clean_hosts
    from backtest.executors.ssh.connect import SSHSettings
    from backtest.executors.ssh.hostsfile import read_hosts_file

    specs = read_hosts_file(file)
    settings = SSHSettings(known_hosts=known_hosts, connect_timeout=timeout)
    with console.status(f"cleaning {len(specs)} host{'s' if len(specs) != 1 else ''} ..."):
        reports = clean_hosts(specs, settings, everything=everything)
    table = Table()
    for name, justify in (("host", "left"), ("freed", "right"), ("left", "right"), ("error", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in reports:
        table.add_row(escape(r.spec.name), human_size(r.freed) if not r.error else "-",
                      human_size(r.left) if not r.error else "-", f"[red]{escape(r.error)}[/]" if r.error else "")
    console.print(table)
    freed = sum(r.freed for r in reports)
    failed = [r for r in reports if r.error]
    console.print(f"freed {human_size(freed)} on {len(reports) - len(failed)} host(s)"
                  + (f"; [red]{len(failed)} of {len(reports)} hosts failed[/]" if failed else ""))
    if failed:
        raise typer.Exit(1)


def hosts_table(reports: list) -> object:
    """A rich Table of HostReports (tests render it to a StringIO console)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_lines=False)
    for name, justify in (
        ("host", "left"),
        ("reachable", "center"),
        ("cores", "right"),
        ("python", "left"),
        ("environment", "left"),
        ("latency ms", "right"),
        ("disk", "right"),
        ("trial", "left"),
        *((("data", "left"),) if any(r.data != "-" for r in reports) else ()),
        ("error", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")
    for r in reports:
        env_style = (
            "green"
            if r.environment.endswith("match")
            else ("red" if r.environment == "differs" else "yellow")
        )
        table.add_row(
            escape(r.spec.name),
            "[green]yes[/]" if r.reachable else "[red]no[/]",
            str(r.cores) if r.cores is not None else "-",
            r.python or "-",
            f"[{env_style}]{escape(r.environment)}[/]" if r.environment != "-" else "-",
            f"{r.latency_ms:.1f}" if r.latency_ms is not None else "-",
            human_size(r.disk),
            ("[red]failed[/]" if r.trial == "failed" else f"[green]{escape(r.trial)}[/]") if r.trial != "-" else "-",
            *((escape(r.data),) if any(x.data != "-" for x in reports) else ()),
            f"[red]{escape(r.error)}[/]" if r.error else "",
        )
    return table
