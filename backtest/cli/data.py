"""`bt data ...`: import, inspect and remove market data (thin: one library call per command)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from backtest.data import ImportReport

app = typer.Typer(
    help="Import, inspect and remove market data.\n\n"
    "Bars are stored under the data root (--data / BT_DATA), or on an object store (--store / BT_STORE, "
    "e.g. s3://bucket/prefix), as one Parquet file per symbol and year, each with a content hash that goes into the keys of every result computed from it. "
    "Workers keep uncompressed copies of the partitions they read under cache/bars/ (a cache: "
    "BT_BARS_CACHE_MB bounds it, default 2048; 0 keeps none).",
    no_args_is_help=True,
)


def _store() -> Any:
    from backtest.data import Store

    return Store()


def _where(store: Any) -> str:
    """The store as messages name it: the local bars folder, or the object store's URI (no secrets)."""
    return str(store.root / "bars") if type(store).__name__ == "Store" else str(store.where)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="CSV, .csv.gz or Parquet files, or directories of them.",
                                                 show_default=False)],
    symbol: Annotated[str | None, typer.Option(
        "--symbol", "-s", help="Symbol for the data (default: from the file name, e.g. AAPL.csv → AAPL; "
        "a 'symbol' column wins). With a symbol column, import only that symbol's rows.",
        show_default=False)] = None,
    tz: Annotated[str | None, typer.Option(
        "--tz", help="Time zone of timestamps written without one, e.g. America/New_York (default: UTC).",
        show_default=False)] = None,
    date_format: Annotated[str | None, typer.Option(
        "--date-format", help="How the timestamps are written, as strptime codes, e.g. %d/%m/%Y or "
        "%d.%m.%Y %H:%M (default: detected; dates with slashes read as month/day/year).",
        show_default=False)] = None,
    adjust: Annotated[bool, typer.Option(
        "--adjust", help="Rescale open/high/low/close by adj close / close (splits and dividends).")] = False,
    bars: Annotated[str | None, typer.Option(
        "--bars", help="The file holds trades (timestamp, price[, size]): aggregate them into bars of this "
        "frequency, e.g. 1s, 1min, 5min, 1h, 1d. A file of bars is resampled.", show_default=False)] = None,
    dedupe: Annotated[bool, typer.Option(
        "--dedupe", help="Keep the last of rows with the same timestamp instead of refusing the file.")] = False,
    dropna: Annotated[bool, typer.Option(
        "--dropna", help="Skip rows with a missing value instead of refusing the file.")] = False,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Replace the stored bars in the file's time span (default: differing bars are an "
        "error; identical ones are skipped).")] = False,
    repair: Annotated[bool, typer.Option(
        "--repair", help="Widen high/low to contain open and close where a vendor row does not.")] = False,
) -> None:
    """Import bars (or trades, with --bars) from CSV or Parquet files.

    Columns are found by name, in any order and case: date/datetime/time/timestamp,
    open, high, low, close, adj close, volume (optional), symbol (optional).
    Timestamps: ISO dates or datetimes, US 1/31/2020 9:30, epoch seconds or ms.
    A bad file is refused with its line and what to fix; nothing of it is written.
    Importing the same data again changes nothing; a new year adds one file.

    Examples:
      bt data import AAPL.csv
      bt data import ~/vendor/daily/ --tz America/New_York
      bt data import eu-quotes.csv --date-format %d/%m/%Y
      bt data import es-trades.csv.gz --symbol ES --bars 1min
    """
    from backtest.cli.render import console, error_line, warn_line
    from backtest.data import ImportFailed
    from backtest.data.sources import expand

    store = _store()
    files = expand(paths)
    kwargs = dict(symbol=symbol, tz=tz, date_format=date_format, adjust=adjust, bars=bars, dedupe=dedupe, dropna=dropna,
                  replace=replace, repair=repair)
    failed: ImportFailed | None = None
    if sys.stderr.isatty():
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

        from backtest.cli.render import err_console

        total = sum(f.stat().st_size for f in files)
        with Progress(TextColumn("importing"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=err_console, transient=True) as bar:
            task = bar.add_task(files[0].name, total=total)

            upcoming = iter([f.name for f in files[1:]] + [""])

            def step(path: str, size: int) -> None:  # called as each file is done
                bar.update(task, advance=size, description=next(upcoming, ""))

            try:
                reports = store.import_files(files, progress=step, **kwargs)
            except ImportFailed as exc:
                failed, reports = exc, exc.reports
    else:
        try:
            reports = store.import_files(files, **kwargs)
        except ImportFailed as exc:
            failed, reports = exc, exc.reports
    if reports:
        console.print(import_table(reports))
        for w in dict.fromkeys(f"{r.source}: {w}" for r in reports for w in r.warnings):
            warn_line(w)
    if failed is not None:
        for err in failed.errors:
            error_line(str(err))
        raise failed


def _table(title: str, names: tuple[str, ...], rows: list[list[str]], right: tuple[str, ...] = ()) -> Any:
    """A compact table whose columns never wrap; a last "file" column is cut (or left out) to fit."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from backtest.cli.render import console

    widths = [max([len(name)] + [len(row[k]) for row in rows]) for k, name in enumerate(names)]
    if names[-1] == "file":
        room = console.width - sum(w + 3 for w in widths[:-1]) - 2
        if room < 8:
            names, widths, rows = names[:-1], widths[:-1], [row[:-1] for row in rows]
        else:
            widths[-1] = min(widths[-1], room)
            rows = [row[:-1] + [row[-1] if len(row[-1]) <= room else row[-1][:room - 1] + "…"] for row in rows]
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name, width in zip(names, widths, strict=True):
        table.add_column(name, justify="right" if name in right else "left", no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def import_table(reports: list[ImportReport]) -> Any:
    """A rich Table of ImportReports."""
    from backtest.data.freq import fmt_ts

    files = list(dict.fromkeys(r.source for r in reports))
    rows = []
    for r in reports:
        new = f"{r.added:,}" + (f" ({r.replaced:,} replaced)" if r.replaced else "")
        rows.append([r.symbol, f"{r.rows:,}", fmt_ts(r.first_ts, utc=False), fmt_ts(r.last_ts, utc=False), r.freq,
                     new, f"{len(r.written)} of {len(r.written) + r.unchanged}", Path(r.source).name])
    table = _table(f"imported {len(files)} file{'s' if len(files) > 1 else ''} (times in UTC)",
                   ("symbol", "bars", "from", "to", "freq", "new", "written", "file"), rows,
                   right=("bars", "new", "written"))
    return table


@app.command("demo")
def demo(
    symbols: Annotated[int, typer.Option("--symbols", "-n", help="How many symbols (DEMO00, DEMO01, ...).")] = 20,
    freq: Annotated[str, typer.Option("--freq", help="Bar frequency: 1d, or intraday such as 1min, 5min, 1h "
                                                     "(09:30-16:00 New York).")] = "1d",
    start: Annotated[int, typer.Option("--from", help="First year.")] = 2015,
    end: Annotated[int, typer.Option("--to", help="Last year.")] = 2024,
    days: Annotated[int | None, typer.Option(
        "--days", help="Exactly this many trading days from Jan 1 of --from (instead of --to).",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same bars.")] = 0,
    replace: Annotated[bool, typer.Option("--replace", help="Remove demo symbols already in the store first.")] = False,
) -> None:
    """Write a synthetic universe (seeded random walks with gaps and wicks) to try bt on.

    Symbols DEMO00, DEMO01, ...; weekdays only; daily bars at midnight UTC,
    intraday bars 09:30-16:00 New York time. The same options give the same
    bars and the same hashes.

    Examples:
      bt data demo
      bt data demo --symbols 5 --freq 1min --from 2023 --days 20
    """
    import numpy as np

    from backtest.cli.render import console
    from backtest.data.demo import write_demo

    store = _store()
    with console.status("writing demo data ..."):
        names = write_demo(store, symbols=symbols, freq=freq, start_year=start, end_year=end, days=days,
                           seed=seed, replace=replace)
    first = {s.symbol: s for s in store.summary()}[names[0]]
    y0, y1 = (int(str(np.datetime64(t, "ns"))[:4]) for t in (first.first_ts, first.last_ts))
    console.print(f"wrote {len(names)} demo symbols ({names[0]} … {names[-1]}), {first.rows:,} {first.freq} bars "
                  f"each, into {_where(store)}", highlight=False)
    console.print(f"try: bt run strategies/sma_cross.py --from {max(y0, y1 - 4)} --to {y1}", highlight=False)


@app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")] = False,
) -> None:
    """List the symbols in the store: date range, bars, frequency, files and size on disk.

    Example:
      bt data ls
    """
    from backtest.cli.render import console
    from backtest.data.freq import fmt_ts

    store = _store()
    rows = store.summary()
    if as_json:
        import json

        print(json.dumps([r.__dict__ for r in rows]))
        return
    if not rows:
        console.print(f"the data store at {_where(store)} is empty; try `bt data demo` or `bt data import FILE`")
        return
    table = _table("times in UTC", ("symbol", "from", "to", "bars", "freq", "files", "size"),
                   [[r.symbol, fmt_ts(r.first_ts, utc=False), fmt_ts(r.last_ts, utc=False), f"{r.rows:,}", r.freq,
                     str(r.partitions), _mb(r.size)] for r in rows], right=("bars", "files", "size"))
    console.print(table)
    console.print(f"{len(rows)} symbols, {sum(r.rows for r in rows):,} bars, {_mb(sum(r.size for r in rows))} "
                  f"in {_where(store)}", highlight=False)


@app.command("show")
def show(
    symbol: Annotated[str, typer.Argument(help="The symbol, e.g. AAPL.", show_default=False)],
    rows: Annotated[int, typer.Option("--rows", "-n", help="How many first and last bars to show.")] = 5,
) -> None:
    """Show one symbol: its partition files and hashes, first and last bars, and statistics.

    Example:
      bt data show AAPL --rows 3
    """
    from backtest.cli.render import console
    from backtest.data.freq import fmt_ts
    from backtest.data.reader import bar_stats

    store = _store()
    parts = store.partitions(symbol)
    bars = store.read(symbol)
    console.print(_table(f"{parts[0].symbol}: {len(parts)} file{'s' if len(parts) > 1 else ''} (times in UTC)",
                         ("year", "bars", "from", "to", "size", "sha256"),
                         [[str(p.year), f"{p.rows:,}", fmt_ts(p.first_ts, utc=False), fmt_ts(p.last_ts, utc=False),
                           _mb(p.size), p.sha256[:12]] for p in parts], right=("bars", "size")))
    n = len(bars)
    head = list(range(min(rows, n)))
    tail = list(range(max(len(head), n - rows), n))
    shown = [[fmt_ts(int(bars.ts[i]), utc=False), *(_price(x[i]) for x in (bars.open, bars.high, bars.low, bars.close)),
              f"{bars.volume[i]:,.0f}"] for i in head + tail]
    if tail and tail[0] > len(head):
        shown.insert(len(head), ["…"] + [""] * 5)
    console.print(_table("first and last bars", ("ts", "open", "high", "low", "close", "volume"), shown,
                         right=("open", "high", "low", "close", "volume")))
    st = bar_stats(bars)
    lines = [("bars", f"{n:,} of {st['freq']}"),
             ("span", f"{fmt_ts(int(bars.ts[0]))} → {fmt_ts(int(bars.ts[-1]))}"),
             ("price", f"low {_price(st['low'])}, high {_price(st['high'])}, first open {_price(st['first_open'])}, "
                       f"last close {_price(st['last_close'])} ({st['change']:+.1%})"),
             ("bar returns", f"sd {st['return_sd']:.3%}, largest gap {st['largest_gap']:+.1%}"),
             ("volume", "none in the source" if st["volume_mean"] != st["volume_mean"]
              else f"mean {st['volume_mean']:,.0f}, zero on {st['volume_zero']:,.0f} bars")]
    for k, v in lines:
        console.print(f"[bold]{k:>12}[/]  {v}", highlight=False)


def _price(x: float | str) -> str:
    x = float(x)
    return f"{x:,.2f}" if abs(x) >= 1 else f"{x:.4g}"


@app.command("rm")
def rm(
    symbols: Annotated[list[str], typer.Argument(help="Symbols to remove.", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove symbols and their files from the store (results computed from them are kept).

    Example:
      bt data rm AAPL MSFT --yes
    """
    from backtest.cli.render import console

    store = _store()
    found = [(s, store.partitions(s)) for s in symbols]  # unknown symbols fail before anything is removed
    for _, parts in found:
        sym = parts[0].symbol
        if not yes and not typer.confirm(f"remove {sym} ({sum(p.rows for p in parts):,} bars in "
                                         f"{len(parts)} files)?", default=False):
            console.print(f"kept {sym}")
            continue
        store.remove(sym)
        console.print(f"removed {sym}")


@app.command("verify")
def verify(
    symbol: Annotated[str | None, typer.Argument(help="One symbol (default: all).", show_default=False)] = None,
) -> None:
    """Recompute every partition's content hash and compare it with the manifest.

    Exits 1 when a file does not match (changed or damaged outside bt).

    Example:
      bt data verify
    """
    from backtest.cli.render import console, error_line

    store = _store()
    problems = store.verify(symbol)
    for p in problems:
        error_line(p)
    if problems:
        raise typer.Exit(1)
    count = sum(len(store.partitions(s)) for s in ([symbol] if symbol else store.symbols()))
    console.print(f"all {count} partition files match their hashes")
