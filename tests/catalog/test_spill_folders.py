"""DuckDB spills what does not fit its memory limit to a folder per instance in the system's
temporary folder; a bt process ends with ``os._exit`` (its instances never close, which would
remove them), so an ``atexit`` handler, registered with the first folder named, removes its own
folders as it leaves, and only its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SPILLING = r"""
import os, sys
from backtest.catalog.connection import spill_folder
folder = spill_folder("writer")
os.makedirs(folder)
open(os.path.join(folder, "duckdb_temp_block"), "w").close()
print(folder, flush=True)
sys.argv = ["bt", "--help"]
from backtest.launch import main
main()
"""


def test_a_bt_process_removes_its_spill_folders_and_no_other(tmp_path: Path) -> None:
    other = tmp_path / "bt-duckdb-1-writer"  # another process's: not ours to remove
    other.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", SPILLING], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.splitlines()[0])
    assert folder.parent == tmp_path and folder.name.startswith("bt-duckdb-")
    assert not folder.exists() and other.is_dir()
