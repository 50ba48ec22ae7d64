"""Benchmarks of bt against vectorbt and backtesting.py, side by side in one run.

    python benchmarks/run.py                       # all suites, 3 timed repeats each
    python benchmarks/run.py --suite sma_grid --repeats 5
    python benchmarks/run.py --suite small --engines bt,vectorbt
    nox -s bench -- --suite startup

Suites: ``selftest`` (the answer check and the peers' semantics against a slow reference; no
times), ``sma_grid`` (20 symbols x 98 280 minute bars x 90 SMA combos), ``small`` (400 daily
backtests), ``rerun`` (bt's cached and one-changed-parameter reruns), ``startup`` (``bt --help``),
``report`` (``bt report --format html`` of the sma_grid run and the demo, beside backtesting.py's
plot of one task), ``scale`` (grids of 120 400 and 1 000 000 tasks, step by step: a few minutes),
``all`` (every one, selftest first). Every timed run is a fresh process; the peers run in their
own venv (benchmarks/.peers/, built on first use). Answers are checked before any time is shown;
a disagreement exits 1 and writes nothing. The tables go to stdout and to benchmarks/RESULTS.md.
See benchmarks/README.md for what is measured and how the engines' semantics are matched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bt_side  # noqa: E402
import check  # noqa: E402
import common  # noqa: E402
import peerenv  # noqa: E402
from measure import Measurement, measure_repeats, python_env, run_measured  # noqa: E402
from report import SuiteResult, bt_versions, cpu_probe, machine, print_suite, results_markdown, target_lines  # noqa: E402

SUITES = ("selftest", "sma_grid", "small", "rerun", "startup", "report", "portfolio", "walkforward", "scale")
ENGINES = ("bt", "vectorbt", "backtesting.py")
PEER_SCRIPTS = {"vectorbt": "vectorbt_sma.py", "backtesting.py": "backtesting_sma.py"}
RESULTS_MD = common.BENCH_DIR / "RESULTS.md"


@dataclass
class Harness:
    args: argparse.Namespace
    ctx: bt_side.BenchContext
    say: Callable[[str], None]
    peer_python: Path | None = None

    def wants(self, engine: str) -> bool:
        return engine in self.args.engines

    def peer_env(self) -> dict[str, str]:
        return python_env(TQDM_DISABLE="1")

    # -- peers ---------------------------------------------------------------------------------

    def peer_row(
        self,
        engine: str,
        workload: str,
        data_path: Path,
        variant: str,
        bar_evals: int,
        *,
        symbols: str = "all",
        combos: str = "all",
        extra: tuple[str, ...] = (),
        scale: float = 1.0,
        extrapolated: str = "",
    ) -> Measurement:
        assert self.peer_python is not None
        grid = "sma_grid" if workload == "sma_grid" else "small"
        answers_dir = self.ctx.work_dir / "answers"
        script = str(common.BENCH_DIR / "peers" / PEER_SCRIPTS[engine])
        jobs = str(self.args.peer_jobs)

        def argv(out: Path, sym: str, comb: str, more: tuple[str, ...] = ()) -> list[str]:
            return [
                str(self.peer_python),
                script,
                "--data",
                str(data_path),
                "--grid",
                grid,
                "--symbols",
                sym,
                "--combos",
                comb,
                "--jobs",
                jobs,
                "--out",
                str(out),
                *extra,
                *more,
            ]

        for _ in range(self.ctx.warmup):  # small and untimed: byte code, numba's on-disk caches, page cache
            run_measured(
                argv(answers_dir / f"{engine}-warmup.json", "0", "every:30", ("--bars", "3000")),
                env=self.peer_env(),
                timeout=self.ctx.timeout,
            ).check()
        m = Measurement(
            engine, workload, variant, bar_evals, extrapolated=extrapolated, procs=self.args.peer_jobs
        )

        def collect(i: int, res: Any) -> tuple[dict[str, float], dict[common.TaskKey, dict[str, Any]]]:
            doc = common.read_answers(answers_dir / f"{engine}-{workload}-{i}.json")
            answers = {
                k: {f: t[f] for f in ("final_equity", "trades", "closed_trades")}
                for k, t in common.answers_by_key(doc).items()
            }
            return doc["phases"], answers

        return measure_repeats(
            m,
            lambda i: (
                argv(answers_dir / f"{engine}-{workload}-{i}.json", symbols, combos),
                self.peer_env(),
                None,
            ),
            self.args.peer_repeats,
            collect=collect,
            scale=scale,
            timeout=self.ctx.timeout,
            progress=self.say,
        )

    # -- bt ------------------------------------------------------------------------------------

    def bt_rows(self, suite: SuiteResult, hook: Callable[[bt_side.BenchContext], list[Measurement]]) -> None:
        if not self.wants("bt"):
            return
        try:
            suite.rows[:0] = hook(self.ctx)
        except bt_side.NotWired as exc:
            self.say(f"  {exc}")
            suite.notes.append(str(exc))

    # -- checks --------------------------------------------------------------------------------

    def check_answers(self, suite: SuiteResult, data_path: Path) -> None:
        """The suite's answer checks; raises ``check.AnswerMismatch`` on any that fails."""
        rows = {(r.engine, r.variant): r for r in suite.rows}
        vbt = next((r for r in suite.rows if r.engine == "vectorbt" and r.answers), None)
        bpy = next((r for r in suite.rows if r.engine == "backtesting.py"), None)
        data = common.load_data(data_path)
        n_ref = self.args.ref_sample
        for r in rows.values():
            if r.engine != "bt" or not r.bar_evals:
                continue
            if r.answers is None:
                raise check.AnswerMismatch(f"bt [{r.variant}] returned no answers: nothing was checked")
            if vbt is not None and vbt.answers:
                keys = check.sample_keys(vbt.answers, self.args.check_sample)
                rep = check.require_agreement(
                    vbt.answers, r.answers, names=("vectorbt", f"bt [{r.variant}]"), keys=keys
                )
                suite.checks.append(rep.summary())
            # bt is also held to the slow reference itself (closed round trips included), not only to vectorbt
            suite.checks.append(
                reference_check(data, r.answers, n_ref, "fractional", f"bt [{r.variant}]").summary()
            )
        if vbt is not None and vbt.answers:
            suite.checks.append(reference_check(data, vbt.answers, n_ref, "fractional", "vectorbt").summary())
        if bpy is not None and bpy.answers:
            suite.checks.append(
                reference_check(data, bpy.answers, n_ref, "integer", "backtesting.py").summary()
                + " (reference with integer units)"
            )
            if vbt is not None and vbt.answers:
                rep = check.compare(
                    vbt.answers,
                    bpy.answers,
                    names=("vectorbt", "backtesting.py"),
                    rtol=math.inf,
                    fields=("final_equity", "trades", "closed_trades"),
                )
                line = rep.summary().replace(", all agree", ": trade counts agree") + (
                    " (equity differs by design: whole units)"
                )
                if not rep.ok:
                    line = "WARNING " + line
                suite.checks.append(line)


def without_jit(m: Measurement) -> Measurement:
    """The same runs less their JIT warm-up (``prewarm_s``): vectorbt as a notebook that compiled already sees it.

    Derived, not measured separately: wall − prewarm_s of each run. Its answers are not checked
    again (they are the same runs')."""
    runs = [replace(r, wall_s=r.wall_s - r.phases["prewarm_s"]) for r in m.runs]
    return Measurement(
        m.engine,
        m.workload,
        "same runs less numba JIT warm-up (wall − prewarm)",
        m.bar_evals,
        runs,
        procs=m.procs,
        derived_from=m.variant,
    )


def reference_check(
    data: common.SyntheticData, answers: dict[common.TaskKey, dict[str, Any]], n: int, units: str, name: str
) -> check.CheckReport:
    """``name``'s answers on a seeded sample of ``n`` tasks against the slow reference (raises on disagreement)."""
    keys = check.sample_keys(answers, n, seed=1)
    ref = {}
    for sym, fast, slow in keys:
        i = data.symbols.index(sym)
        ref[(sym, fast, slow)] = check.reference_sma_long_only(
            data.open[i].tolist(), data.close[i].tolist(), fast, slow, units=units
        )
    return check.require_agreement(
        ref,
        answers,
        names=(f"reference ({units})", name),
        keys=keys,
        fields=("final_equity", "trades", "closed_trades"),
    )


# ---------------------------------------------------------------------------------------------
# Suites


def suite_selftest(h: Harness) -> SuiteResult:
    s = SuiteResult("selftest", "Self-test: the answer check, and the peers against a slow reference")
    check.self_check_comparator()
    s.checks.append(
        "comparator flags a 1e-8 relative equity difference, a trade off by one, a missing task, NaN"
    )
    cases = [
        (common.DAILY, "small", "0", "5:100,10:200,40:100", 0),
        (common.MINUTE, "sma_grid", "0", "5:20,15:100,50:200", 20_000),
    ]
    for spec, grid, sym, combos, bars in cases:
        path = common.ensure_data(spec)
        data = common.load_data(path)
        cut = common.SyntheticData(
            data.symbols,
            data.bars_per_day,
            data.bar_ns,
            data.ts[: bars or None],
            *(getattr(data, a)[:, : bars or None] for a in ("open", "high", "low", "close", "volume")),
        )
        where = f"{spec.name} {data.symbols[int(sym)]}, {cut.ts.shape[0]} bars, combos {combos}"
        for engine, units in (("vectorbt", "fractional"), ("backtesting.py", "integer")):
            if not h.wants(engine):
                continue
            out = h.ctx.work_dir / "answers" / f"selftest-{engine}.json"
            argv = [
                str(h.peer_python),
                str(common.BENCH_DIR / "peers" / PEER_SCRIPTS[engine]),
                "--data",
                str(path),
                "--grid",
                grid,
                "--symbols",
                sym,
                "--combos",
                combos,
                "--out",
                str(out),
            ]
            if bars:
                argv += ["--bars", str(bars)]
            run_measured(argv, env=h.peer_env(), timeout=h.ctx.timeout).check()
            answers = common.answers_by_key(common.read_answers(out))
            rep = reference_check(cut, answers, len(answers), units, engine)
            s.checks.append(f"{rep.summary()} [{where}; reference with {units} units]")
            h.say(f"  {s.checks[-1]}")
    return s


def suite_sma_grid(h: Harness) -> SuiteResult:
    s = SuiteResult(
        "sma_grid",
        f"SMA grid, minute bars: {common.MINUTE.symbols} symbols x {common.MINUTE.bars:,} bars x "
        f"{len(common.SMA_GRID)} combos = {bt_side.SMA_GRID_BAR_EVALS:,} bar-evaluations",
    )
    path = common.ensure_data(common.MINUTE)
    h.bt_rows(s, bt_side.run_bt_sma_grid)
    if h.wants("vectorbt"):
        m = h.peer_row(
            "vectorbt",
            "sma_grid",
            path,
            "from_signals + stats, 1 portfolio per symbol",
            bt_side.SMA_GRID_BAR_EVALS,
            extra=("--batch", "symbol", "--prewarm"),
        )
        s.rows += [m, without_jit(m)]
    if h.wants("backtesting.py"):
        n_sym, combos = h.args.bpy_symbols, h.args.bpy_combos
        n_combos = (
            len(common.SMA_GRID[:: int(combos.split(":")[1])])
            if combos.startswith("every:")
            else len(common.SMA_GRID)
        )
        scale = common.MINUTE.symbols * len(common.SMA_GRID) / (n_sym * n_combos)
        label = f"extrapolated from {n_sym} symbol(s) x {n_combos} combos (x{scale:g})"
        s.rows.append(
            h.peer_row(
                "backtesting.py",
                "sma_grid",
                path,
                "Backtest.run per combo",
                bt_side.SMA_GRID_BAR_EVALS,
                symbols=",".join(str(i) for i in range(n_sym)),
                combos=combos,
                scale=scale,
                extrapolated=label,
            )
        )
    h.check_answers(s, path)
    return s


def suite_small(h: Harness) -> SuiteResult:
    s = SuiteResult(
        "small",
        f"Many small backtests: {common.DAILY.symbols} symbols x {len(common.SMALL_GRID)} SMA combos = "
        f"{common.DAILY.symbols * len(common.SMALL_GRID)} tasks on {common.DAILY.bars:,} daily bars (10 years)",
    )
    path = common.ensure_data(common.DAILY)
    h.bt_rows(s, bt_side.run_bt_small)
    if h.wants("vectorbt"):
        m = h.peer_row(
            "vectorbt",
            "small",
            path,
            "from_signals + stats, 1 portfolio of 400 columns",
            bt_side.SMALL_BAR_EVALS,
            extra=("--batch", "all", "--prewarm"),
        )
        s.rows += [m, without_jit(m)]
    if h.wants("backtesting.py"):
        s.rows.append(
            h.peer_row("backtesting.py", "small", path, "Backtest.run per task", bt_side.SMALL_BAR_EVALS)
        )
    h.check_answers(s, path)
    return s


def suite_rerun(h: Harness) -> SuiteResult:
    s = SuiteResult("rerun", "Reruns of the SMA grid in bt (no peer has a result cache)")
    h.bt_rows(s, bt_side.run_bt_rerun)
    return s


def suite_startup(h: Harness) -> SuiteResult:
    s = SuiteResult("startup", "Startup: `bt --help` in a fresh process")
    h.bt_rows(s, bt_side.run_bt_startup)
    if s.rows:
        floor = Measurement("python", "startup", "python -c pass (interpreter floor)", 0)
        s.rows.append(
            measure_repeats(
                floor,
                lambda i: ([sys.executable, "-c", "pass"], python_env(), None),
                h.ctx.repeats,
                progress=h.say,
            )
        )
    return s


def suite_report(h: Harness) -> SuiteResult:
    """`bt report RUN --format html` of the sma_grid run and of the daily demo, beside
    backtesting.py's `Backtest.plot()` of one task of the same minute bars (bench_report.py)."""
    import statistics

    import bench_report

    s = SuiteResult("report", "HTML report: `bt report RUN --format html` in a fresh process (file size in the notes)")
    out = bench_report.WORK / "report-bench"
    out.mkdir(parents=True, exist_ok=True)
    targets = {"sma_grid": (3.0, 8e6), "demo": (None, 5e6)}
    sizes: dict[str, int] = {}
    for name, (root, run_id) in (("sma_grid", bench_report._grid_root(progress=False)),
                                 ("demo", bench_report._demo_root())):
        html = out / f"{name}.html"
        argv = [*bt_side.bt_command(), "--data", str(root), "report", run_id, "--format", "html", "--out", str(html)]
        run_measured(argv, env=python_env(), timeout=h.ctx.timeout).check()  # warm-up
        m = Measurement("bt", "report", f"html report of the {name} run (1 800 tasks)", 0)
        s.rows.append(measure_repeats(m, lambda i, a=argv: (a, python_env(), bench_report.REPO), h.ctx.repeats,
                                      timeout=h.ctx.timeout, progress=h.say))
        sizes[name] = html.stat().st_size
        t_max, size_max = targets[name]
        good = (t_max is None or m.wall <= t_max) and sizes[name] <= size_max
        s.checks.append(f"{name}: {m.wall:.2f} s, {sizes[name] / 1e6:.2f} MB (target " +
                        (f"<= {t_max:g} s, " if t_max else "") + f"<= {size_max / 1e6:g} MB): " +
                        ("met" if good else "MISSED"))
    if h.wants("backtesting.py"):
        python = str(h.peer_python) if h.peer_python is not None else sys.executable
        peer = bench_report._peer_plot(out / "peer.html", h.ctx.repeats, python)
        if isinstance(peer, str):
            s.notes.append(f"backtesting.py Backtest.plot(): {peer}")
        else:
            times, size = peer
            med = statistics.median(times)
            grid = s.rows[0].wall
            s.notes.append(f"backtesting.py Backtest.plot() of ONE task of the same minute bars: {med:.2f} s, "
                           f"{size / 1e6:.2f} MB; bt's report of all 1 800 tasks is {grid / med:.2f}x its time "
                           f"and {sizes['sma_grid'] / size:.2f}x its size")
    return s


def suite_portfolio(h: Harness) -> SuiteResult:
    """Cross-sectional momentum on 100 symbols x 120 sets against vectorbt (bench_portfolio.py)."""
    import bench_portfolio

    return bench_portfolio.run_suite(h)


def suite_scale(h: Harness) -> SuiteResult:
    """SMA grids of 120 400 and 1 000 000 tasks, step by step, against their targets (bench_scale.py)."""
    import bench_scale

    return bench_scale.run_suite(h)


def suite_walkforward(h: Harness) -> SuiteResult:
    """One walk-forward run against the same folds as plain runs (bench_walkforward.py)."""
    import bench_walkforward

    return bench_walkforward.run_suite(h)


SUITE_FUNCS: dict[str, Callable[[Harness], SuiteResult]] = {
    "selftest": suite_selftest,
    "sma_grid": suite_sma_grid,
    "small": suite_small,
    "rerun": suite_rerun,
    "startup": suite_startup,
    "report": suite_report,
    "portfolio": suite_portfolio,
    "walkforward": suite_walkforward,
    "scale": suite_scale,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--suite", action="append", choices=[*SUITES, "all"], help="suite to run (repeatable; default all)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per row (default 3)")
    ap.add_argument(
        "--peer-repeats",
        type=int,
        default=None,
        help="timed repeats of the peers' rows (default: --repeats; vectorbt's sma_grid takes minutes per repeat)",
    )
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per row (default 1)")
    ap.add_argument(
        "--engines", default=",".join(ENGINES), help="comma-separated subset of: " + ", ".join(ENGINES)
    )
    ap.add_argument(
        "--peer-jobs",
        type=int,
        default=1,
        help="processes each peer may use (default 1, as vectorbt and a backtesting.py loop run)",
    )
    ap.add_argument(
        "--bpy-symbols", type=int, default=1, help="backtesting.py sma_grid subset: first N symbols"
    )
    ap.add_argument(
        "--bpy-combos", default="all", help="backtesting.py sma_grid subset: 'all' or 'every:K' combos"
    )
    ap.add_argument("--check-sample", type=int, default=0, help="tasks compared bt vs vectorbt (0: all)")
    ap.add_argument(
        "--ref-sample", type=int, default=3, help="tasks per engine checked against the slow reference"
    )
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds before one process is killed")
    ap.add_argument(
        "--results",
        type=Path,
        default=RESULTS_MD,
        help="markdown file to write (default benchmarks/RESULTS.md)",
    )
    ap.add_argument("--no-results", action="store_true", help="do not write the markdown file")
    ap.add_argument("-v", "--verbose", action="store_true", help="show each repeat's time as it finishes")
    args = ap.parse_args(argv)
    # A SIGTERM unwinds like Ctrl+C, so the running child's session is killed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if bad := [e for e in args.engines if e not in ENGINES]:
        ap.error(f"unknown engine(s) {bad}; known: {', '.join(ENGINES)}")
    if args.peer_repeats is None:
        args.peer_repeats = args.repeats
    if args.repeats < 1 or args.peer_repeats < 1 or args.warmup < 0 or args.peer_jobs < 1:
        ap.error("--repeats, --peer-repeats and --peer-jobs must be >= 1, --warmup >= 0")
    suites = list(SUITES) if not args.suite or "all" in args.suite else list(dict.fromkeys(args.suite))

    def say(line: str) -> None:
        if not args.verbose:  # no time before the answers are checked, unless asked
            line = line.split(":", 1)[0] + ": done" if " repeat " in line else line
        print(line, flush=True)

    common.WORK_DIR.mkdir(parents=True, exist_ok=True)
    ctx = bt_side.BenchContext(
        common.WORK_DIR,
        common.ensure_data(common.MINUTE),
        common.ensure_data(common.DAILY),
        args.repeats,
        args.warmup,
        args.timeout,
        say,
    )
    h = Harness(args, ctx, say)
    meta: dict[str, Any] = {
        "command": "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "bt_versions": bt_versions(),
        "load_start": "/".join(f"{x:.2f}" for x in os.getloadavg()),
        "probe_start": cpu_probe(),
        "repeats": args.repeats,
        "peer_repeats": args.peer_repeats,
        "warmup": args.warmup,
        "peer_jobs": args.peer_jobs,
    }
    if any(e != "bt" for e in args.engines) and any(s in ("selftest", "sma_grid", "small", "report", "portfolio") for s in suites):
        h.peer_python = peerenv.ensure(say)
        meta["peer_versions"] = peerenv.versions()
    results = []
    try:
        for name in suites:
            say(f"suite {name} ...")
            results.append(SUITE_FUNCS[name](h))
    except check.AnswerMismatch as exc:
        print(f"\nFAILED: the engines' answers disagree, so no times are reported.\n{exc}", file=sys.stderr)
        return 1
    meta["load_end"] = "/".join(f"{x:.2f}" for x in os.getloadavg())
    meta["probe_end"] = cpu_probe()
    for s in results:
        print_suite(s)
    if targets := target_lines(results):
        print("\nTargets:")
        for t in targets:
            print("  " + t.replace("**", ""))
    if not args.no_results:
        body = results_markdown(results, meta)
        common._atomic_write(args.results, lambda f: f.write(body.encode()))
        print(f"\nwrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
