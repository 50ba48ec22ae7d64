"""`bt run --dry-run` shows the plan and runs nothing; a very large plan asks first (or --yes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import bt_in as bt
from helpers import run_json

from backtest.store.results import ResultStore


def test_dry_run_prints_the_plan_and_records_nothing(root: Path, sma_path: Path) -> None:
    code, out, err = bt(root, "run", sma_path, "--from", "2020", "--param", "fast=5,10", "--param", "slow=20,40",
                        "--dry-run")
    assert code == 0, err
    text = " ".join(out.split())
    assert "plan: 12 tasks (0 cached, 12 to compute)" in text and "3 symbols, 4 parameter sets" in text
    assert "estimate:" in text and "nothing was run or recorded" in text
    assert "no runs yet" in bt(root, "runs")[1] and not ResultStore(root).keys()
    run_json(root, sma_path, "--from", "2020", "--param", "fast=5,10", "--param", "slow=20,40")
    code, out, _ = bt(root, "run", sma_path, "--from", "2020", "--param", "fast=5,10,20", "--param", "slow=20,40",
                      "--dry-run", "--json")
    plan = json.loads(out)
    assert plan == {**plan, "dry_run": True, "tasks": 15, "cached": 12, "to_compute": 3, "symbols": 3,
                    "parameter_sets": 5}  # fast < slow: (20, 20) is not a set
    assert plan["estimated_bytes"] > 0 and plan["shards"] >= 1


def test_a_plan_over_the_limit_needs_yes(root: Path, sma_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BT_CONFIRM_TASKS", "10")
    args = ("run", sma_path, "--from", "2020", "--param", "fast=5,10", "--param", "slow=20,40")
    code, out, err = bt(root, *args)
    assert code == 2 and "Traceback" not in err
    line = " ".join(err.split())
    assert "this plan has 12 tasks (12 to compute:" in line and "more than 10; add --yes" in line
    assert "no runs yet" in bt(root, "runs")[1]
    done = run_json(root, *args[1:], "--yes")
    assert done["computed"] == 12
    monkeypatch.setenv("BT_CONFIRM_TASKS", "many")
    code, _, err = bt(root, *args)
    assert code == 2 and "BT_CONFIRM_TASKS must be a whole number" in err


def test_a_bad_host_cache_bound_is_one_line_before_anything_is_recorded(root: Path, sma_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BT_HOST_CACHE_MB", "lots")
    code, _, err = bt(root, "run", sma_path, "--from", "2021", "--executor", "ssh://nobody@127.0.0.1:1")
    assert code == 2 and "BT_HOST_CACHE_MB must be a whole number of MB (0: no bound), not 'lots'" in err
    assert "Traceback" not in err and "no runs yet" in bt(root, "runs")[1]
