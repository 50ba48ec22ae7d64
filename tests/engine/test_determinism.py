"""The same task in two separate processes gives the same bits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import hashlib, sys
import numpy as np
sys.path.insert(0, {tests!r})
from engine.helpers import make_bars
from backtest.engine import METRIC_NAMES, SimSettings, run_grid
from backtest.strategy import load_strategy

cls = load_strategy({strategy!r})
bars = make_bars(5000, seed=11, start=300, vol=0.003, step_ns=60 * 10**9)
settings = SimSettings(commission=0.001, slippage=0.0002, stop_loss=0.02, fee=0.5)
(out,) = run_grid(cls, bars, [{{"fast": 10, "slow": 40, "short": True}}], settings, want_equity=True)
digest = hashlib.sha256()
digest.update(np.array([out.metrics[k] for k in METRIC_NAMES], dtype=np.float64).tobytes())
digest.update(out.trades.tobytes())
digest.update(out.equity.tobytes())
print(len(out.trades), digest.hexdigest())
"""


def run_once(seed: str) -> str:
    code = SCRIPT.format(tests=str(ROOT / "tests"), strategy=str(ROOT / "strategies" / "sma_cross.py"))
    env = dict(os.environ, PYTHONHASHSEED=seed)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_two_processes_same_bytes():
    first, second = run_once("1"), run_once("2")
    assert first == second
    assert int(first.split()[0]) > 10  # a task with real trades
