"""``python -m backtest.worker``: see ``backtest.worker.main``."""

from backtest.worker.main import main

main()
