"""How a ``bt`` process ends (``backtest.launch``): without the interpreter's teardown, but after
the ``atexit`` handlers that anything it ran registered, with its exit code, and quietly when its
output pipe was closed (``bt ... | head``). Also where ``atexit._run_exitfuncs`` is missing: then
it exits the ordinary way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAULTY, write_strategy

#: the console script's code in a new process, with CPython's handler runner taken away first
WITHOUT_RUNNER = "import atexit, sys; del atexit._run_exitfuncs; from backtest.launch import main; main(sys.argv[1:])"

# A strategy whose module registers an atexit handler: planning imports it in bt's own process.
REGISTERS = """
import atexit
import os


def _note():
    with open(os.environ["BT_TEST_AT_EXIT"], "a") as fh:
        fh.write("ran\\n")


atexit.register(_note)
""" + FAULTY


def bt_process(*args: object, runner: bool = True, env: dict[str, str] | None = None,
               stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    command = ["-m", "backtest"] if runner else ["-c", WITHOUT_RUNNER]
    return subprocess.run([sys.executable, *command, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("runner", [True, False], ids=["fast exit", "ordinary exit"])
@pytest.mark.parametrize(("extra", "code"), [([], 0), (["--param", "nope=1"], 2)], ids=["done", "bad input"])
def test_atexit_handlers_registered_by_what_a_command_ran_run(root: Path, tmp_path: Path, runner: bool,
                                                             extra: list[str], code: int) -> None:
    strategy = write_strategy(tmp_path, REGISTERS, "registers.py")
    marker = tmp_path / "at_exit.txt"
    res = bt_process("--data", root, "run", strategy, "--from", "2020", "--to", "2020", *extra, "--dry-run",
                     "--json", runner=runner, env={"BT_TEST_AT_EXIT": str(marker)})
    assert res.returncode == code, res.stderr
    assert marker.read_text() == "ran\n"  # once
    if code == 0:
        assert '"dry_run": true' in res.stdout  # the output was flushed before the process ended
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("runner", [True, False], ids=["fast exit", "ordinary exit"])
@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["data", "ls"],
                                  ["run", "{sma}", "--from", "2020", "--dry-run", "--json"]])
def test_a_closed_output_pipe_ends_quietly(root: Path, sma_path: Path, runner: bool, args: list[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``bt ... | head`` where head has gone: no traceback, no 'Exception ignored'. Output is
    buffered, as in a user's shell (what is left to flush as bt leaves cannot be written)."""
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        res = bt_process("--data", root, *(a.format(sma=sma_path) for a in args), runner=runner, stdout=write_end)
    finally:
        os.close(write_end)
    assert res.returncode in (0, 1)  # (click exits 1 when its own writes fail)
    assert res.stderr == ""
