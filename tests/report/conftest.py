"""A real run to report on: the SMA strategy over three symbols' daily bars, with one failing task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import bt, write_strategy
from reportkit import REPORTED


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, market: Path) -> tuple[Path, str]:
    """(data root, run id) of a finished 3 symbols × 12 sets run (35 done, 1 failed)."""
    import shutil

    work = tmp_path_factory.mktemp("reported")
    root = work / "bt"
    shutil.copytree(market, root)
    strat = write_strategy(work, REPORTED, "crossing.py")
    code, out, err = bt("--data", root, "run", strat, "--from", "2019-06", "--to", "2021-12",
                        "--param", "fast=5,10,15", "--param", "slow=20,30,50,80", "--executor", "inline://", "--json")
    assert code == 1, err  # a run with a failed task exits 1
    summary = json.loads(out)
    assert summary["failed"] == 1 and summary["tasks"] == 36
    return root, summary["run_id"]
