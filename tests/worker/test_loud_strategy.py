"""A strategy that prints without end: its tasks succeed, and its output is kept up to a limit,
with a note saying how much was dropped."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import bt, write_strategy

LOUD = """
class Loud(Strategy):
    n = 1
    grid = {"n": [1]}

    def signals(self, bars):
        line = "x" * 999 + "\\n"
        for _ in range(70_000):  # 70 MB, past the worker protocol's 64 MB frame
            print(line, end="")
        return np.ones(len(bars.close))
"""


def test_seventy_megabytes_of_output_are_cut_with_a_note(root: Path, tmp_path: Path) -> None:
    path = write_strategy(tmp_path, LOUD, "loud.py")
    for executor in ("local://", "inline://"):
        code, out, err = bt("--data", root, "run", path, "--from", "2021", "--to", "2021", "--symbols", "AAA",
                            "--executor", executor, "--force", "--json")
        summary = json.loads(out.strip().splitlines()[-1])
        assert code == 0 and summary["computed"] == 1 and summary["failed"] == 0, out + err
        code, logs, _ = bt("--data", root, "logs", summary["run_id"])
        assert code == 0 and "[bt: 69,000,000 more characters of output were dropped" in logs
        assert len(logs) < 2_000_000
