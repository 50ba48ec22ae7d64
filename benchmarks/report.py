"""What run.py prints and writes: the machine, the versions, one table per suite, RESULTS.md."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
from measure import Measurement


@dataclass
class SuiteResult:
    name: str
    title: str
    rows: list[Measurement] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def bt_primary(self) -> Measurement | None:
        return next((r for r in self.rows if r.engine == "bt"), None)


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(
            next(
                ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")
            ).split()[1]
        )
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": model,
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
    }


def cpu_probe() -> str:
    """Seconds a fixed pure-Python loop takes here, best of three: how fast the (shared) machine
    is right now, so that runs on different days can be compared. Lower is faster."""
    import time

    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        s = 0
        for i in range(3_000_000):
            s += i * i % 7
        best = min(best, time.perf_counter() - t0)
    return f"{best:.2f} s"


def bt_versions() -> dict[str, str]:
    import numba
    import numpy

    try:
        import backtest

        bt = f"{backtest.__version__} (engine {getattr(backtest, 'ENGINE_VERSION', '?')})"
    except ImportError:
        bt = "not installed"
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=common.REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=common.REPO_DIR,
            capture_output=True,
            text=True,
        ).stdout.strip()
        bt += f", commit {rev}{' + uncommitted changes' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "environment": sys.prefix,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "bt": bt,
    }


def fmt_rate(x: float) -> str:
    return "—" if not x or math.isnan(x) else f"{x:.3g}"


def row_cells(r: Measurement, bt: Measurement | None) -> list[str]:
    lo, hi = r.wall_range
    ratio = "—" if bt is None else f"{r.wall / bt.wall:,.1f}"
    variant = r.variant + (f" — {r.extrapolated}" if r.extrapolated else "")
    return [
        r.engine,
        variant,
        str(r.procs),
        f"{r.wall:.3f}" if r.wall < 10 else f"{r.wall:.1f}",
        f"{lo:.3g}–{hi:.3g}",
        fmt_rate(r.throughput),
        f"{r.peak_rss / 2**20:,.0f}",
        ratio,
    ]


HEADERS = ["engine", "variant", "procs", "wall s", "min–max", "bar-evals/s", "peak MB", "÷ bt"]


def phase_lines(s: SuiteResult) -> list[str]:
    out = []
    measured = [r for r in s.rows if not r.derived_from]
    for r in measured:
        ph = r.phase_medians()
        if ph:
            several = sum(1 for o in measured if o.engine == r.engine) > 1
            out.append(
                (f"{r.engine} [{r.variant}]: " if several else f"{r.engine}: ")
                + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in ph.items())
                + (" (measured subset)" if r.extrapolated else "")
            )
    return out


def row_notes(s: SuiteResult) -> list[str]:
    """Notes attached to single rows (e.g. a repeat whose answers differed from repeat 0's)."""
    return [f"{r.engine} [{r.variant}]: {n}" for r in s.rows for n in r.notes]


def print_suite(s: SuiteResult) -> None:
    bt = s.bt_primary()
    try:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=None if sys.stdout.isatty() else 160)
        if not s.rows:
            console.print(f"\n[bold]{s.title}[/bold]")
        else:
            t = Table(title=s.title, title_justify="left")
            for hd in HEADERS:
                t.add_column(hd, justify="left" if hd in ("engine", "variant") else "right")
            for r in s.rows:
                t.add_row(*row_cells(r, bt))
            console.print(t)
    except ImportError:
        print(f"\n{s.title}")
        for cells in ([HEADERS] if s.rows else []) + [row_cells(r, bt) for r in s.rows]:
            print("  " + " | ".join(cells))
    for line in s.checks:
        print(f"  check: {line}")
    for line in s.notes + row_notes(s) + phase_lines(s):
        print(f"  note: {line}")


def _row(results: list[SuiteResult], suite: str, engine: str, pick: Any = None) -> Measurement | None:
    for s in results:
        if s.name == suite:
            for r in s.rows:
                if r.engine == engine and (pick is None or pick(r)):
                    return r
    return None


def target_lines(results: list[SuiteResult]) -> list[str]:
    """The benchmark targets, judged from this run's rows only."""
    out: list[str] = []

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**MISSED**"

    def warm(r: Measurement) -> bool:
        return r.variant.startswith("warm")

    bt = _row(results, "sma_grid", "bt", warm)
    if bt is not None:
        vbt = _row(results, "sma_grid", "vectorbt", lambda r: not r.derived_from)
        vbt_nojit = _row(results, "sma_grid", "vectorbt", lambda r: bool(r.derived_from))
        if vbt is not None and vbt_nojit is not None:
            a, b = vbt.wall / bt.wall, vbt_nojit.wall / bt.wall
            out.append(
                f"sma_grid, bt (warm) ≥ 30x vectorbt's throughput with its stats: {b:.1f}x against vectorbt"
                f" less its JIT warm-up (both warm), {a:.1f}x against vectorbt's fresh process: {verdict(b >= 30)}"
                " (judged on the first)"
            )
        bpy = _row(results, "sma_grid", "backtesting.py")
        if bpy is not None:
            r = bpy.wall / bt.wall
            out.append(
                f"sma_grid, bt (warm) ≥ 250x backtesting.py's throughput (its row is extrapolated): {r:.0f}x: {verdict(r >= 250)}"
            )
        # judged on the memory the run took from the machine (summed Pss: the fork server's pages
        # that its workers share counted once); the summed RSS, which counts them in every
        # process, shown beside it
        peaks = {
            r.variant: (r.peak_pss / 2**20, r.peak_rss / 2**20)
            for s in results
            if s.name == "sma_grid"
            for r in s.rows
            if r.engine == "bt"
        }
        worst = max(pss for pss, _ in peaks.values())
        out.append(
            "sma_grid, bt peak memory ≤ 600 MB (summed Pss; summed RSS in brackets): "
            + ", ".join(f"{pss:,.0f} MB ({rss:,.0f} MB; {k})" for k, (pss, rss) in peaks.items())
            + f": {verdict(worst <= 600)}"
        )
        out.append(f"sma_grid, bt (warm) ≤ 1.5 s wall: {bt.wall:.2f} s: {verdict(bt.wall <= 1.5)}")
    small = _row(results, "small", "bt", warm)
    if small is not None:
        out.append(f"small, 400 backtests in < 2 s (bt, warm): {small.wall:.2f} s: {verdict(small.wall < 2)}")
    cached = _row(results, "rerun", "bt", lambda r: r.variant.startswith("cached"))
    if cached is not None:
        out.append(f"rerun, fully cached ≤ 0.5 s: {cached.wall:.2f} s: {verdict(cached.wall <= 0.5)}")
    helped = _row(results, "startup", "bt")
    if helped is not None:
        out.append(f"startup, `bt --help` ≤ 0.3 s: {helped.wall:.3f} s: {verdict(helped.wall <= 0.3)}")
    return out


def results_markdown(results: list[SuiteResult], meta: dict[str, Any]) -> str:
    md = [
        "# Benchmark results",
        "",
        f"Written by `{meta['command']}` on {meta['date']} (UTC). What is measured and how the engines'",
        "semantics are matched: [README.md](README.md). Wall times are of fresh processes, end to end",
        "(interpreter start, imports, data load, compute, stats, writing answers); peak MB is the larger",
        "of the process tree's summed RSS (sampled every 50 ms) and the largest single-process high-water",
        "mark, over the repeats. `÷ bt` is the row's median wall time over bt's first row's",
        "(how many times faster bt is); `bar-evals/s` is bars x combos of the full job / median wall.",
        "Every process runs with Python's byte-code cache on (`PYTHONPYCACHEPREFIX=benchmarks/.work/pycache`,",
        "written by the untimed warm-ups), whatever `PYTHONDONTWRITEBYTECODE` the machine sets.",
        "",
        "## Machine",
        "",
    ]
    md += [f"- {k}: {v}" for k, v in meta["machine"].items()]
    md += [
        f"- load average (1/5/15 min) at start: {meta['load_start']}, at end: {meta['load_end']}"
        " — the 2 cores are shared with other engineers' work, so times are noisy",
        f"- CPU speed probe (a fixed pure-Python loop, best of 3; lower is faster): {meta.get('probe_start', '?')}"
        f" at start, {meta.get('probe_end', '?')} at end (see README.md: Machine speed)",
        "",
        "## Versions",
        "",
    ]
    md += ["- bt's environment: " + ", ".join(f"{k} {v}" for k, v in meta["bt_versions"].items())]
    if meta.get("peer_versions"):
        md += [
            "- peers' environment (benchmarks/.peers/): "
            + ", ".join(f"{k} {v}" for k, v in meta["peer_versions"].items())
        ]
    peer_repeats = meta.get("peer_repeats", meta["repeats"])
    md += [
        f"- repeats: {meta['repeats']} timed (median, min–max), {meta['warmup']} untimed warm-up run(s) per row;"
        + (
            f" the peers' rows {peer_repeats} timed repeat(s) each;"
            if peer_repeats != meta["repeats"]
            else ""
        )
        + f" peers ran with {meta['peer_jobs']} process(es)"
    ]
    if targets := target_lines(results):
        md += ["", "## Targets (this run's rows)", ""]
        md += [f"- {t}" for t in targets]
    for s in results:
        md += ["", f"## {s.name}: {s.title}", ""]
        bt = s.bt_primary()
        if s.rows:
            md += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
            md += ["| " + " | ".join(row_cells(r, bt)) + " |" for r in s.rows]
            md.append("")
        md += [f"- check: {c}" for c in s.checks]
        md += [f"- {n}" for n in s.notes + row_notes(s)]
        md += [f"- phases (median, seconds inside the process): {p}" for p in phase_lines(s)]
    return "\n".join(md) + "\n"
