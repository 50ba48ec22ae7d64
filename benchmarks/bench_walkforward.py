"""The walkforward suite: the 20-symbol daily demo, 2015-2024, the 90-set SMA grid, train=3y,
test=1y (7 folds), as one ``bt run --walk-forward`` against the same folds as separate plain runs
in sequence, and what a second walk-forward run with another ``--select`` computes.

- WFO: ``bt run strategies/sma_cross.py --from 2015 --to 2024 --walk-forward train=3y,test=1y
  --force`` in a fresh process (every task computed).
- By hand: for each fold, ``bt run --from TRAIN_FROM --to TRAIN_TO --force`` (the in-sample grid)
  and ``bt run --from TEST_FROM --to TEST_TO --force`` (the grid over the test window, from which
  each symbol's chosen set is read): 14 runs in sequence, their wall times summed. (Running only
  each symbol's chosen set out of sample would take 140 runs, one a (symbol, fold): more time.)
- Reselect: the same walk-forward with ``--select calmar``, not forced: it must compute exactly
  the out-of-sample tasks whose choice changed and nothing else.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from common import WORK_DIR
from measure import Measurement, measure_repeats, python_env

REPO = Path(__file__).resolve().parents[1]
STRATEGY = REPO / "strategies" / "sma_cross.py"
GRID = ["--param", "fast=5:50:5", "--param", "slow=20:200:20"]
WFO = ["--from", "2015", "--to", "2024", "--walk-forward", "train=3y,test=1y", *GRID]


def demo_root() -> Path:
    from bt_side import bt_command

    root = WORK_DIR / "bt-root-walkforward"
    if not (root / "bars" / "manifest.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([*bt_command(), "--data", str(root), "data", "demo"], check=True, capture_output=True,
                       env=python_env())
    return root


def bt(root: Path, *args: str) -> dict[str, Any]:
    from bt_side import bt_command

    done = subprocess.run([*bt_command(), "--data", str(root), *args], capture_output=True, text=True,
                          env=python_env(), check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]) if "--json" in args else {"out": done.stdout}


def folds(root: Path, run_id: str) -> list[tuple[str, str, str, str]]:
    rows = json.loads(bt(root, "report", run_id, "--format", "json")["out"])
    return sorted({(r["train_from"], r["train_to"], r["test_from"], r["test_to"]) for r in rows})


def by_hand(root: Path, windows: list[tuple[str, str, str, str]]) -> float:
    total = 0.0
    for train_from, train_to, test_from, test_to in windows:
        for lo, hi in ((train_from, train_to), (test_from, test_to)):
            t0 = time.perf_counter()
            bt(root, "run", str(STRATEGY), "--from", lo, "--to", hi, *GRID, "--force", "--json")
            total += time.perf_counter() - t0
    return total


def run_suite(h: Any) -> Any:
    from bt_side import bt_command
    from report import SuiteResult

    s = SuiteResult("walkforward", "Walk-forward: 20 daily symbols, 2015-2024, 90 SMA sets, train=3y test=1y "
                                   "(7 folds), one run against the same folds as plain runs")
    root = demo_root()
    argv = [*bt_command(), "--data", str(root), "run", str(STRATEGY), *WFO, "--force", "--json"]
    first = bt(root, "run", str(STRATEGY), *WFO, "--force", "--json")  # warm-up, and the folds
    windows = folds(root, first["run_id"])
    m = Measurement("bt", "walkforward", f"bt run --walk-forward ({first['tasks']} tasks, fresh process, --force)", 0)
    s.rows.append(measure_repeats(m, lambda i: (argv, python_env(), REPO), h.ctx.repeats, timeout=h.ctx.timeout,
                                  progress=h.say))
    hand = [by_hand(root, windows) for _ in range(h.ctx.repeats)]
    med = statistics.median(hand)
    s.checks.append(f"the same {len(windows)} folds as {2 * len(windows)} plain runs in sequence: {med:.2f} s "
                    f"(min {min(hand):.2f}); the walk-forward run {m.wall:.2f} s, {med / m.wall:.1f}x faster: "
                    + ("met" if m.wall < med else "MISSED"))
    # in a store holding only the demo's bars (the plain runs above stored every test-window task)
    import shutil

    clean = WORK_DIR / "bt-root-walkforward-reselect"
    shutil.rmtree(clean, ignore_errors=True)
    shutil.copytree(root / "bars", clean / "bars")
    root = clean
    first = bt(root, "run", str(STRATEGY), *WFO, "--json")
    base = bt(root, "run", str(STRATEGY), *WFO, "--json")  # all stored: computes nothing
    other = bt(root, "run", str(STRATEGY), *WFO, "--select", "calmar", "--json")
    rows_a = json.loads(bt(root, "report", base["run_id"], "--format", "json")["out"])
    rows_b = json.loads(bt(root, "report", other["run_id"], "--format", "json")["out"])
    changed = sum(1 for a, b in zip(rows_a, rows_b, strict=True) if a["params"] != b["params"])
    good = first["computed"] == first["tasks"] and base["computed"] == 0 and other["computed"] == changed
    s.checks.append(f"--select calmar after sharpe: {other['computed']} tasks computed of {other['tasks']}, the "
                    f"out-of-sample tasks of the {changed} (symbol, fold)s whose choice changed: "
                    + ("met" if good else "MISSED"))
    return s
