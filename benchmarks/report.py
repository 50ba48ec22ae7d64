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
    for r in s.rows:
        ph = r.phase_medians()
        if ph and not r.derived_from:
            out.append(
                f"{r.engine}: "
                + ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in ph.items())
                + (" (measured subset)" if r.extrapolated else "")
            )
    return out


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
        for line in ([HEADERS] if s.rows else []) + [row_cells(r, bt) for r in s.rows]:
            print("  " + " | ".join(line))
    for line in s.checks:
        print(f"  check: {line}")
    for line in s.notes + phase_lines(s):
        print(f"  note: {line}")


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
        "",
        "## Machine",
        "",
    ]
    md += [f"- {k}: {v}" for k, v in meta["machine"].items()]
    md += [
        f"- load average (1/5/15 min) at start: {meta['load_start']}, at end: {meta['load_end']}"
        " — the 2 cores are shared with other engineers' work, so times are noisy",
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
    md += [
        f"- repeats: {meta['repeats']} timed (median, min–max), {meta['warmup']} untimed warm-up run(s) per row;"
        f" peers ran with {meta['peer_jobs']} process(es)"
    ]
    for s in results:
        md += ["", f"## {s.name}: {s.title}", ""]
        bt = s.bt_primary()
        if s.rows:
            md += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
            md += ["| " + " | ".join(row_cells(r, bt)) + " |" for r in s.rows]
            md.append("")
        md += [f"- check: {c}" for c in s.checks]
        md += [f"- {n}" for n in s.notes]
        md += [f"- phases (median, seconds inside the process): {p}" for p in phase_lines(s)]
    return "\n".join(md) + "\n"
