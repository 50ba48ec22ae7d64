"""Bad input to bt's commands: one clear line on stderr, exit 2, no traceback, nothing recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import bt, write_strategy


@pytest.fixture
def ran(root: Path, sma_path: Path) -> tuple[Path, str]:
    code, out, err = bt("--data", root, "run", sma_path, "--from", "2021", "--param", "fast=5", "--param", "slow=20",
                        "--executor", "inline://", "--json")
    assert code == 0, err
    return root, json.loads(out)["run_id"]


@pytest.mark.parametrize(("args", "message"), [
    (["runs", "--limit", "-1"], "--limit must be at least 1, not -1"),
    (["runs", "--limit", "0"], "--limit must be at least 1, not 0"),
    (["report", "{rid}", "--top", "-1"], "--top must be at least 1, not -1"),
    (["report", "{rid}", "--symbol", "ZZZ"], "--symbol ZZZ: not a symbol of run {rid}; its symbols: AAA, BBB, CCC"),
    (["report", "{rid}", "--format", "csv", "--out", "{tmp}/no/such/dir/x.csv"], "the folder {tmp}/no/such/dir does not exist"),
    (["report", "{rid}", "--format", "csv", "--out", "{tmp}"], "it is a folder"),
    (["run", "{sma}", "--timeout", "0"], "--timeout must be more than 0 seconds, not 0"),
    (["run", "{sma}", "--timeout", "-1"], "--timeout must be more than 0 seconds, not -1"),
    (["run", "{sma}", "--from", ""], "--from is empty"),
])
def test_one_line_exit_2(ran: tuple[Path, str], sma_path: Path, tmp_path: Path, args: list[str], message: str) -> None:
    root, rid = ran
    fill = {"rid": rid, "sma": str(sma_path), "tmp": str(tmp_path)}
    code, out, err = bt("--data", root, *(a.format(**fill) for a in args))
    assert code == 2, (out, err)
    assert message.format(**fill) in " ".join(err.split()) and "Traceback" not in out + err


def test_data_pointing_at_a_file_is_refused(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, out, err = bt("--data", afile, "runs")
    assert code == 2 and f"--data {afile} is a file" in " ".join(err.split())


def test_an_ambiguous_run_prefix_says_so_and_lists_the_matches(root: Path, sma_path: Path) -> None:
    ids = []
    for fast in (5, 6):
        code, out, err = bt("--data", root, "run", sma_path, "--from", "2021", "--param", f"fast={fast}",
                            "--param", "slow=20", "--executor", "inline://", "--json")
        ids.append(json.loads(out)["run_id"])
    code, out, err = bt("--data", root, "report", "sma")
    text = " ".join(err.split())
    assert code == 2 and 'run "sma" is ambiguous: it begins 2 run ids' in text
    assert all(i in text for i in ids)


def test_a_strategy_that_calls_sys_exit_fails_its_task_not_its_worker(root: Path, tmp_path: Path) -> None:
    path = write_strategy(tmp_path, '''
import sys
class Quitter(Strategy):
    n = 1
    def signals(self, bars):
        sys.exit(3)
''', "quitter.py")
    code, out, err = bt("--data", root, "run", path, "--from", "2021", "--symbols", "AAA", "-w", "1", "--json")
    assert code == 1 and json.loads(out)["failed"] == 1
    code, out, err = bt("--data", root, "logs", json.loads(out)["run_id"])
    assert "the strategy called sys.exit(3)" in out and "worker died" not in out


def test_latest_names_the_newest_run(root: Path, sma_path: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    code, out, err = bt("--data", empty, "report", "latest")
    assert code == 2 and "no runs recorded yet, so there is no latest" in " ".join(err.split())
    ids = []
    for fast in (5, 6):
        code, out, err = bt("--data", root, "run", sma_path, "--from", "2021", "--param", f"fast={fast}",
                            "--param", "slow=20", "--executor", "inline://", "--json")
        assert code == 0, err
        ids.append(json.loads(out)["run_id"])
    code, out, err = bt("--data", root, "report", "latest", "--format", "json")
    assert code == 0 and {r["params"]["fast"] for r in json.loads(out)} == {6}
    for command in ("logs", "verify"):
        code, out, err = bt("--data", root, command, "latest")
        assert code == 0 and ids[1] in out, (command, out, err)
