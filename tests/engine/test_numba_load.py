"""Workers load cached kernels the lean way (``backtest.engine.numba_load``): the same bits as
numba's ordinary load, without readying numba's compiler, and compiling afterwards still works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Every shipped strategy (between them they call every indicator and signal kernel the strategies
# use), under settings that take every branch of the simulation (stops, close fills, integer
# units), then an error raised inside a kernel, then a kernel compiled after the loads.
SCRIPT = """
import hashlib, json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from engine.helpers import make_bars
from backtest.engine import METRIC_NAMES, SimSettings, run_grid
from backtest.engine.run import warm_up
from backtest.strategy import expand_grid, load_strategy

warm_up()
from backtest.engine import numba_load
lean = numba_load.install()
bars = make_bars(3000, seed=5, start=300, vol=0.004, step_ns=60 * 10**9)
digest = hashlib.sha256()
settings = [SimSettings(commission=0.001, slippage=0.0002, fee=0.5),
            SimSettings(stop_loss=0.01, take_profit=0.02, fill="close", units="integer")]
for path in {strategies!r}:
    cls = load_strategy(path)
    for s in settings:
        for out in run_grid(cls, bars, expand_grid(cls)[:3], s, want_equity=True):
            digest.update(np.array([out.metrics[k] for k in METRIC_NAMES], dtype=np.float64).tobytes())
            digest.update(out.trades.tobytes())
            digest.update(out.equity.tobytes())
from backtest.engine.indicators import sma_nb
try:
    sma_nb(bars.close, 0)
    error = None
except ValueError as exc:
    error = str(exc)
readied = "numba.np.linalg" in sys.modules  # imported by numba readying its compiler, not by loads
from numba import njit

@njit
def total(x):
    return sma_nb(x, 3)[2:].sum()

print(json.dumps({{"lean": lean, "digest": digest.hexdigest(), "error": error, "readied": readied,
                  "compiled": float(total(np.arange(10.0)))}}))
"""


def run(full: bool) -> dict:
    strategies = sorted(str(p) for p in (ROOT / "strategies").glob("*.py"))
    code = SCRIPT.format(tests=str(ROOT / "tests"), strategies=strategies)
    env = {k: v for k, v in os.environ.items() if k != "BT_NUMBA_FULL_LOAD"}
    if full:
        env["BT_NUMBA_FULL_LOAD"] = "1"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="no kernels are compiled or loaded")
def test_lean_load_gives_the_same_bits_and_compiling_still_works():
    full = run(full=True)  # numba's own load (and it fills the cache, if it was cold)
    lean = run(full=False)  # every kernel now comes from the cache
    assert full["lean"] is False and full["readied"] is True
    assert lean["lean"] is True
    assert lean["readied"] is False, "a cached kernel made numba ready its compiler: the lean load was not used"
    assert lean["digest"] == full["digest"]
    assert lean["error"] == full["error"] == "sma_nb: n must be >= 1"
    assert lean["compiled"] == full["compiled"] == sum((i + (i - 1) + (i - 2)) / 3 for i in range(2, 10))
