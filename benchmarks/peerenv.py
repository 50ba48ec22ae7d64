"""The peers' own virtual environment, benchmarks/.peers/ (git-ignored; never a dependency of bt).

Built once with this Python from ``peers/requirements.txt`` (every package pinned) and reused; a
changed requirements file, or a Python of another version, rebuilds it. Building needs the
package index (PyPI); using it does not.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from common import BENCH_DIR, PEERS_VENV

REQUIREMENTS = BENCH_DIR / "peers" / "requirements.txt"
STAMP = PEERS_VENV / "bench-stamp.json"


def python() -> Path:
    return PEERS_VENV / "bin" / "python"


def _wanted() -> dict[str, str]:
    return {
        "requirements_sha256": hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest(),
        "python": "{}.{}".format(*sys.version_info[:2]),
    }


def ensure(progress: Callable[[str], None] = print) -> Path:
    """The peers' python, building the venv first if it is missing or stale."""
    wanted = _wanted()
    if STAMP.exists() and python().exists():
        try:
            if json.loads(STAMP.read_text()) == wanted:
                return python()
        except ValueError:
            pass
    progress(f"building the peers' environment in {PEERS_VENV} (once; pinned in {REQUIREMENTS.name}) ...")
    if PEERS_VENV.exists():
        shutil.rmtree(PEERS_VENV)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(python()), "-m", "pip", "--disable-pip-version-check", "-q"]
    log = PEERS_VENV / "install.log"
    with log.open("w") as f:
        done = subprocess.run([*pip, "install", "-r", str(REQUIREMENTS)], stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"installing the peers failed (full log: {log}):\n{tail}")
    # Import once: byte-compiles, and fails here (not mid-benchmark) if the set does not work.
    subprocess.run([str(python()), "-c", "import vectorbt, backtesting"], check=True)
    STAMP.write_text(json.dumps(wanted))
    return python()


def versions() -> dict[str, str]:
    """Versions of the peers and of what they run on, as the peers' venv has them."""
    code = (
        "import json, sys, numpy, numba, pandas, vectorbt, backtesting;"
        "print(json.dumps({'python': sys.version.split()[0], 'numpy': numpy.__version__,"
        " 'numba': numba.__version__, 'pandas': pandas.__version__,"
        " 'vectorbt': vectorbt.__version__, 'backtesting': backtesting.__version__}))"
    )
    out = subprocess.run([str(python()), "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out)
