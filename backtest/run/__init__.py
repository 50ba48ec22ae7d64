"""One ``bt run``: a request is checked and planned (``prepare``), executed and recorded
(``execute``, ``record``); ``verify`` reruns a recorded run to compare bits.

    from backtest.run import RunRequest, run
    summary = run(RunRequest(strategy=Path("strategies/sma_cross.py"), start="2020", end="2024"))
"""

from __future__ import annotations

from backtest.run.execute import coordinator_alive, execute, run
from backtest.run.prepare import prepare, prepare_started
from backtest.run.request import Prepared, Progress, RunRequest, RunSummary
from backtest.run.verify import VerifyReport, verify

__all__ = ["Prepared", "Progress", "RunRequest", "RunSummary", "VerifyReport", "coordinator_alive", "execute",
           "prepare", "prepare_started", "run", "verify"]
