"""Helpers shared by the tests: deterministic synthetic bars and strategy files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DAY_NS = 86_400_000_000_000
SYMBOLS = ("AAA", "BBB", "CCC")


def synth_daily(seed: int, start: str = "2019-01-01", days: int = 780) -> tuple[np.ndarray, ...]:
    """Deterministic daily bars on weekdays: a seeded random walk with gaps and wicks."""
    rng = np.random.default_rng(seed)
    d0 = np.datetime64(start, "D")
    dates = np.arange(d0, d0 + int(days * 1.5))
    dates = dates[np.is_busday(dates)][:days]
    ts = dates.astype("datetime64[ns]").astype(np.int64) + 21 * 3_600_000_000_000  # 21:00 UTC
    ret = rng.normal(0.0003, 0.015, days)
    close = 50.0 * np.exp(np.cumsum(ret))
    open_ = np.concatenate([[50.0], close[:-1]]) * np.exp(rng.normal(0, 0.003, days))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.005, days)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.005, days)))
    volume = rng.integers(1_000, 100_000, days).astype(np.float64)
    return ts, open_, high, low, close, volume


STRATEGY_HEAD = """
import numpy as np
from backtest.strategy import Strategy
"""


def write_strategy(directory: Path, body: str, name: str = "strat.py") -> Path:
    path = directory / name
    path.write_text(STRATEGY_HEAD + textwrap.dedent(body))
    return path


# A plain-numpy moving-average strategy whose parameter n picks misbehaviour in the fault tests.
FAULTY = """
class Faulty(Strategy):
    n = 5
    mode = "ok"
    warmup = 10

    def signals(self, bars):
        if self.mode == "raise" and self.n == 7:
            raise ValueError("boom at n=7")
        if self.mode == "loop" and self.n == 7:
            while True:
                pass
        if self.mode == "hog" and self.n == 7:
            hoard = []
            while True:
                hoard.append(np.ones(50_000_000))
        if self.mode == "print":
            print(f"hello from n={self.n}")
        if self.mode == "slow":
            import time
            time.sleep(0.4)
        c = bars.close
        ma = np.convolve(c, np.ones(self.n) / self.n)[: len(c)]
        return np.where(c > ma, 1.0, 0.0)
"""


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids whose environment has ``name=value``: the processes a test's command started (workers
    and fork servers inherit the coordinator's environment), not another bt's on the machine."""
    wanted = f"{name}={value}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in env:
            found.append(int(pid))
    return found


def processes_with(marker: str) -> list[int]:
    """Pids whose command line mentions ``marker`` (to prove no worker outlives its executor)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd:
            found.append(int(pid))
    return found


def loaded_by(code: str, modules: Sequence[str]) -> tuple[list[str], str]:
    """Run ``code`` in a fresh interpreter: which of ``modules`` it imported (sorted), and what it
    printed. Guards that a command keeps heavy imports out of its path."""
    probe = f"{code}\nimport json as _j, sys as _s\nprint(_j.dumps(sorted(m for m in {list(modules)!r} if m in _s.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    printed, _, last = out.stdout.rstrip("\n").rpartition("\n")
    return json.loads(last), printed


def bt(*args: object) -> tuple[int, str, str]:
    """Run a ``bt`` command in this process (typer's runner): (exit code, stdout, stderr). An
    exception other than the command's exit is raised, so a traceback fails the test."""
    from typer.testing import CliRunner

    from backtest.cli import _register, app

    if not app.registered_groups:  # once: registering twice would list every command twice
        _register()
    res = CliRunner().invoke(app, [*map(str, args)])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def bt_in(root: Path, *args: object) -> tuple[int, str, str]:
    """``bt --data ROOT ARGS...`` in this process."""
    return bt("--data", root, *args)


def run_json(root: Path, *args: object) -> dict:
    """``bt --data ROOT run ARGS... --json``: its summary, after checking it exited 0."""
    code, out, err = bt_in(root, "run", *args, "--json")
    assert code == 0, err + out
    return json.loads(out.strip().splitlines()[-1])


# A strategy that imports a helper module beside it, which imports a module of a package beside it.
HELPED_STRATEGY = """
import json
import numpy as np
from backtest.strategy import Strategy
from myind import momentum

class Helped(Strategy):
    n = 10
    grid = {"n": [5, 10, 20]}

    def signals(self, bars):
        return np.where(momentum(bars.close, self.n) > 0, 1.0, 0.0)
"""

HELPED_MYIND = """
import numpy as np
from tools.scale import factor

def momentum(x, n):
    out = np.zeros(len(x))
    out[n:] = (x[n:] - x[:-n]) * factor()
    return out
"""


def helped_project(folder: Path, sign: str = "1.0") -> Path:
    """A strategy with a helper module beside it, which imports a module of a package beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "strat.py").write_text(textwrap.dedent(HELPED_STRATEGY))
    (folder / "myind.py").write_text(textwrap.dedent(HELPED_MYIND))
    (folder / "tools").mkdir(exist_ok=True)
    (folder / "tools" / "__init__.py").write_text("")
    (folder / "tools" / "scale.py").write_text(f"from .unit import ONE\n\ndef factor():\n    return ONE * {sign}\n")
    (folder / "tools" / "unit.py").write_text("ONE = 1.0\n")
    (folder / "tools" / "unused.py").write_text("X = 1\n")
    (folder / "notes.py").write_text("print('not imported by the strategy')\n")
    return folder / "strat.py"
