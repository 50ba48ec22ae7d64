"""The HTML report: how long `bt report RUN --format html` takes and how big its file is, beside
backtesting.py's `Backtest.plot()` (also Bokeh, also one HTML file) on the same minute bars.

    python benchmarks/bench_report.py                 # sma_grid run (20 x 98 280 minute bars x 90 sets) and the daily demo
    python benchmarks/bench_report.py --repeats 5 --no-peer

Targets: the sma_grid run's report <= 3 s and <= 8 MB; the daily demo's <= 5 MB. Every timing is
a fresh `bt` process, as a user runs it (wall time, start-up included). The set-up (untimed):
the benchmark's minute data imported into benchmarks/.work/bt-root-report and one run of the
sma_grid job; the daily demo (`bt data demo`, one run of strategies/sma_cross.py 2020-2024) in
benchmarks/.work/bt-root-report-demo.

The peer row is backtesting.py plotting ONE backtest (one symbol, one parameter set) of the same
98 280 minute bars; bt's report holds all 1 800 tasks, a heatmap over the grid, and 24 charted
tasks. The ratio compares what a researcher waits for, not equal work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bt_side  # noqa: E402
import common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = Path(__file__).resolve().parent / ".work"


def _bt(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*bt_side.bt_command(), "--data", str(root), *args], cwd=REPO, text=True,
                          capture_output=True, check=True)


def _timed_report(root: Path, run_id: str, out: Path, repeats: int) -> tuple[list[float], int]:
    _bt(root, "report", run_id, "--format", "html", "--out", str(out))  # warm-up: byte-compile, page in
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _bt(root, "report", run_id, "--format", "html", "--out", str(out))
        times.append(time.perf_counter() - t0)
    return times, out.stat().st_size


def _grid_root(progress: bool) -> tuple[Path, str]:
    root = WORK / "bt-root-report"
    data = common.ensure_data(common.MINUTE, WORK)
    bt_side.prepare_root(root, data, print if progress else (lambda s: None))
    res = subprocess.run(bt_side.run_argv(root, bt_side.SMA_GRID_PARAMS, force=False), cwd=REPO, text=True,
                         capture_output=True, check=True)
    return root, json.loads(res.stdout.strip().splitlines()[-1])["run_id"]


def _demo_root() -> tuple[Path, str]:
    root = WORK / "bt-root-report-demo"
    if not (root / "bars").exists():
        _bt(root, "data", "demo")
    res = _bt(root, "run", "strategies/sma_cross.py", "--from", "2020", "--to", "2024", "--json")
    return root, json.loads(res.stdout.strip().splitlines()[-1])["run_id"]


def _peer_plot(out: Path, repeats: int, python: str = sys.executable) -> tuple[list[float], int] | str:
    """backtesting.py's plot of one backtest on the first symbol's minute bars, in a fresh process
    of ``python`` (the peers' venv in run.py; this interpreter when run alone)."""
    code = f"""
import sys, time, warnings
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
t0 = time.perf_counter()
import common, pandas as pd
from backtesting import Backtest
from peers.backtesting_sma import _strategy_class
data = common.load_data({str(common.ensure_data(common.MINUTE, WORK))!r})
frame = pd.DataFrame({{"Open": data.open[0], "High": data.high[0], "Low": data.low[0], "Close": data.close[0],
                      "Volume": data.volume[0]}}, index=pd.DatetimeIndex(data.ts.view("datetime64[ns]")))
bt = Backtest(frame, _strategy_class(), cash=common.CASH, commission=common.COMMISSION)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    bt.run(fast=10, slow=40)
    bt.plot(filename={str(out)!r}, open_browser=False)
"""
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        res = subprocess.run([python, "-c", code], cwd=REPO, text=True, capture_output=True)
        if res.returncode != 0:
            return "not available: " + (res.stderr.strip().splitlines() or ["failed"])[-1]
        times.append(time.perf_counter() - t0)
    return times[1:], out.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true", help="skip backtesting.py's plot")
    args = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / "report-bench"
    out.mkdir(exist_ok=True)
    grid_root, grid_run = _grid_root(progress=True)
    demo_root, demo_run = _demo_root()
    rows = []
    grid_t, grid_size = _timed_report(grid_root, grid_run, out / "grid.html", args.repeats)
    demo_t, demo_size = _timed_report(demo_root, demo_run, out / "demo.html", args.repeats)
    rows.append(("bt report --format html, sma_grid run (1 800 tasks, 24 charts)", grid_t, grid_size, 3.0, 8e6))
    rows.append(("bt report --format html, daily demo run (1 800 tasks)", demo_t, demo_size, None, 5e6))
    peer = None if args.no_peer else _peer_plot(out / "peer.html", args.repeats)
    print(f"{'what':<66} {'median s':>9} {'min s':>7} {'MB':>6}  target")
    ok = True
    for label, times, size, t_max, mb_max in rows:
        med = statistics.median(times)
        good = (t_max is None or med <= t_max) and size <= mb_max
        ok &= good
        target = (f"<= {t_max:g} s, " if t_max else "") + f"<= {mb_max / 1e6:g} MB: " + ("met" if good else "MISSED")
        print(f"{label:<66} {med:9.2f} {min(times):7.2f} {size / 1e6:6.2f}  {target}")
    if isinstance(peer, str):
        print(f"{'backtesting.py Backtest.plot(), one task of the same minute bars':<66} {peer}")
    elif peer is not None:
        times, size = peer
        med = statistics.median(times)
        print(f"{'backtesting.py Backtest.plot(), one task of the same minute bars':<66} {med:9.2f} {min(times):7.2f} "
              f"{size / 1e6:6.2f}")
        print(f"bt report (all 1 800 tasks) vs backtesting.py plot (one task): {statistics.median(grid_t) / med:.2f}x "
              f"the time, {grid_size / size:.2f}x the size")
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
