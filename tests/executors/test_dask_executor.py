"""The Dask executor passes the same contract, on a real local Dask cluster of worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from contract import ExecutorContract

from backtest.executors.base import Executor, ExecutorOptions

pytest.importorskip("distributed", reason="the dask extra is not installed (pip install 'bt-farm[dask]')")
# two clusters at once (the fixture's and bt's own): bt's may not ask for the port the other holds
pytestmark = pytest.mark.filterwarnings("error:Port .* is already in use")


@pytest.fixture(scope="module")
def scheduler() -> Any:
    from distributed import LocalCluster

    # on dask's default HTTP port, as a user's own cluster would be (bt's must then take another)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":8787") as cluster:
        yield cluster.scheduler_address


class TestDask(ExecutorContract):
    """Against a scheduler address (``dask://tcp://...``), as a user with a cluster would run it."""

    __test__ = True

    @pytest.fixture(autouse=True)
    def _scheduler(self, scheduler: str) -> None:
        self.address = scheduler

    def make(self, root: Path, **options: Any) -> Executor:
        from backtest.executors import from_url

        return from_url(f"dask://{self.address}", ExecutorOptions(data_root=root, **options))


def test_local_cluster_runs_a_job(root: Path, faulty: Path) -> None:
    from contract import drive

    from backtest.executors.base import TaskDone
    from backtest.executors.dask_ import DaskExecutor
    from backtest.run import RunRequest, prepare

    prep = prepare(RunRequest(strategy=faulty, params=["n=3:4"], start="2021"), root)
    events = drive(DaskExecutor("local", ExecutorOptions(data_root=root, workers=1)), prep)
    assert len([e for e in events if isinstance(e, TaskDone)]) == 6


def test_dask_url_and_unreachable_scheduler(tmp_path: Path) -> None:
    from backtest.errors import ExecutorError
    from backtest.executors import from_url
    from backtest.spec import StrategySource

    ex = from_url("dask://127.0.0.1:1", ExecutorOptions(data_root=tmp_path))
    with pytest.raises(ExecutorError, match="cannot reach the Dask scheduler at 127.0.0.1:1"):
        ex.start(StrategySource("h", "", "s.py", "S"))


def test_a_portfolio_run_on_dask_gives_the_bits_of_an_inline_run(scheduler: str, root: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from helpers import bt

    from backtest.store.results import ResultStore

    strategy = Path(__file__).resolve().parents[2] / "strategies" / "inverse_vol.py"
    other = tmp_path / "other"
    shutil.copytree(root, other)
    args = ["run", strategy, "--symbols", "AAA,BBB,CCC", "--from", "2020", "--param", "lookback=21,63", "--json"]
    outs = []
    for where, executor in ((root, f"dask://{scheduler}"), (other, "inline://")):
        code, out, err = bt("--data", where, *args, "--executor", executor)
        assert code == 0, out + err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert outs[0]["computed"] == outs[1]["computed"] == 2
    files = [{k: ResultStore(r).read_bytes(k) for k in ResultStore(r).keys()} for r in (root, other)]
    assert len(files[0]) == 2 and files[0] == files[1]
