"""Workers load cached kernels the lean way (``backtest.worker.numba_load``): the same bits as
numba's ordinary load, without readying numba's compiler, and compiling afterwards still works."""

from __future__ import annotations

import json
import math
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
from backtest.worker.tuning import warm_up
from backtest.strategy import expand_grid, load_strategy

from backtest.worker import numba_load

loaded = numba_load._load_runtime
runtime = []  # whether the runtime's machine code came from bt's file in the kernels' cache folder
numba_load._load_runtime = lambda *a: runtime.append(loaded(*a)) or runtime[-1]
warm_up()
lean = numba_load.install()
bars = make_bars(3000, seed=5, start=300, vol=0.004, step_ns=60 * 10**9)
digest = hashlib.sha256()
settings = [SimSettings(commission=0.001, slippage=0.0002, fee=0.5),
            SimSettings(stop_loss=0.01, take_profit=0.02, fill="close", units="integer")]
from backtest.engine.universe import align
from backtest.strategy import is_portfolio
# portfolio strategies run on three symbols' bars (the portfolio kernel loads the lean way too)
universe = align([make_bars(3000, seed=k, start=300, vol=0.004, step_ns=60 * 10**9) for k in (5, 6, 7)], 0, 0)
for path in {strategies!r}:
    cls = load_strategy(path)
    for s in settings:
        data = universe if is_portfolio(cls) else bars
        for out in run_grid(cls, data, expand_grid(cls)[:3], s, want_equity=True):
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
skipped = sorted(m for m in ("numpy.ma", "numba.np.arrayobj") if m not in sys.modules)


class Sub(np.ndarray):
    pass


import numba

# a subclass is typed by numba's own function, which rejects masked arrays
sub = [str(numba.typeof(bars.close.view(Sub))), float(sma_nb(bars.close.view(Sub), 3)[-1])]
try:
    numba.typeof(np.ma.masked_array(bars.close))
    masked = None
except Exception as exc:
    masked = f"{{type(exc).__name__}}: {{exc}}"
from numba import njit

@njit
def total(x):
    return sma_nb(x, 3)[2:].sum()

print(json.dumps({{"lean": lean, "digest": digest.hexdigest(), "error": error, "readied": readied,
                  "skipped": skipped, "sub": sub,
                  "runtime": ["loaded" if r is not None else "compiled" for r in runtime], "masked": masked, "compiled": float(total(np.arange(10.0)))}}))
"""


def run(full: bool = False) -> dict:
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
    # nor import numba's array module (for a kernel's environment) or numpy.ma (to type an ndarray)
    assert lean["skipped"] == ["numba.np.arrayobj", "numpy.ma"]
    assert full["skipped"] == [] and full["runtime"] == []
    assert len(lean["runtime"]) == 1  # once, however many kernels load
    assert lean["sub"] == full["sub"] and full["sub"][0] == "array(float64, 1d, C)" and math.isfinite(full["sub"][1])
    assert lean["masked"] == full["masked"] and "MaskedArray" in full["masked"]
    assert lean["digest"] == full["digest"]
    assert lean["error"] == full["error"] == "sma_nb: n must be >= 1"
    assert lean["compiled"] == full["compiled"] == sum((i + (i - 1) + (i - 2)) / 3 for i in range(2, 10))


def runtime_files() -> list[Path]:
    from backtest.engine.sim import simulate_nb

    return sorted(Path(simulate_nb._cache.cache_path).glob("bt-nrt-*.bin"))


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="no kernels are compiled or loaded")
def test_the_runtimes_machine_code_is_kept_and_a_damaged_file_is_compiled_again():
    full = run(full=True)
    for f in runtime_files():
        f.unlink()
    first = run()  # compiles numba's runtime and keeps its machine code
    assert first["runtime"] == ["compiled"]
    (kept,) = runtime_files()
    second = run()
    assert second["runtime"] == ["loaded"]
    data = bytearray(kept.read_bytes())
    data[-100] ^= 0xFF  # one bit pattern changed in the machine code: the checksum no longer holds
    kept.write_bytes(bytes(data))
    third = run()
    assert third["runtime"] == ["compiled"]
    kept.write_bytes(b"bt-nrt-1\n")  # cut short
    assert run()["runtime"] == ["compiled"]
    assert run()["runtime"] == ["loaded"]  # written whole again
    assert first["digest"] == second["digest"] == third["digest"] == full["digest"]
    assert first["error"] == second["error"] == full["error"]


def test_the_tested_numba_releases_and_the_pinned_range_agree():
    """The lean load relies on numba internals: it runs only on releases it is tested with, and
    pyproject.toml caps numba just above the newest of them. Raising the cap without testing the
    lean load on the new release (and listing it) fails here; so does listing a release the cap
    excludes, or installing (as CI does) a numba that is not listed."""
    import tomllib

    import numba
    from packaging.requirements import Requirement
    from packaging.version import Version

    from backtest.worker.numba_load import TESTED_NUMBA, tested

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [Requirement(d).specifier for d in deps if Requirement(d).name == "numba"]
    caps = [Version(s.version) for s in spec if s.operator == "<"]
    assert len(caps) == 1, f"numba needs exactly one upper bound in pyproject.toml, got {spec}"
    newest = max(Version(v) for v in TESTED_NUMBA)
    assert caps[0] == Version(f"{newest.major}.{newest.minor + 1}"), (caps[0], TESTED_NUMBA)
    assert all(spec.contains(f"{v}.0") for v in TESTED_NUMBA)
    assert tested(numba.__version__), f"numba {numba.__version__} is installed but not in TESTED_NUMBA"
    assert not tested("0.1.0") and tested(f"{newest}.9")


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="no kernels are compiled or loaded")
def test_an_untested_numba_loads_the_ordinary_way() -> None:
    """A numba release outside the tested list: ``install`` does nothing, kernels still load."""
    code = (
        "import numba, sys\n"
        "numba.__version__ = '0.1.0'\n"
        "from backtest.worker.tuning import warm_up\n"
        "from backtest.worker import numba_load\n"
        "warm_up()\n"
        "from numba.core.caching import FunctionCache\n"
        "print(numba_load.install(), getattr(FunctionCache, '_bt_lean', False), 'numba.np.linalg' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BT_NUMBA_FULL_LOAD"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]  # not installed; the compiler was readied
