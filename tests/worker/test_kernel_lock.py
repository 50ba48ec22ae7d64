"""Kernels compiled once per machine: worker processes warming up at the same time on a cold cache
wait for the first one's kernels instead of each compiling them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WARM = "from backtest.worker.tuning import warm_up; warm_up()"


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="nothing is compiled")
def test_processes_warming_up_together_compile_once(tmp_path: Path) -> None:
    copy = tmp_path / "code"
    shutil.copytree(ROOT / "backtest", copy / "backtest", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(copy), "NUMBA_DEBUG_CACHE": "1"}
    env.pop("NUMBA_CACHE_DIR", None)
    procs = [subprocess.Popen([sys.executable, "-c", WARM], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    saved = [sum("data saved to" in line and "simulate_nb" in line for line in out.splitlines()) for out in outs]
    loaded = [sum("data loaded from" in line and "simulate_nb" in line for line in out.splitlines()) for out in outs]
    assert sorted(saved) == [0, 0, 1], outs  # one compiled the simulation kernel ...
    assert sorted(loaded) == [0, 1, 1], outs  # ... the others loaded what it compiled
    assert (copy / "backtest" / "engine" / "__pycache__" / "bt-warm.lock").exists()
