"""A strategy's parameter grid, kept by hash so that a rerun plans without importing the strategy.

Expanding the grid imports the strategy (and numba, ~0.3 s); the result depends only on the
strategy's source, the ``--param`` specs and bt's version, so it is kept under
``<root>/grids/<hash>.json`` once a whole job has been checked (bad input leaves nothing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backtest.run.request import RunRequest
from backtest.spec import StrategySource


def _path(req: RunRequest, root: Path, code_hash: str) -> Path:
    from backtest.hashing import token
    from backtest.version import ENGINE_VERSION, __version__

    key = token({"bt": __version__, "engine": ENGINE_VERSION, "code": code_hash, "name": req.strategy_name,
                 "params": list(req.params)})
    return root / "grids" / f"{key}.json"


def grid_cached(req: RunRequest, root: Path, text: str | None) -> bool:
    """Whether this strategy code (its source and the local modules it imports) and these --param
    specs were expanded before."""
    from backtest.deps import strategy_source

    return text is not None and _path(req, root, strategy_source(text, req.strategy, req.strategy_name).hash).is_file()


def load_source(path: Path, name: str | None, text: str | None = None) -> tuple[Any, StrategySource]:
    """Import the strategy (from ``text`` when the file was read already); its class and source."""
    from backtest.deps import strategy_source
    from backtest.strategy import load_strategy, load_strategy_text

    cls = load_strategy(path, name) if text is None else load_strategy_text(text, path, name)
    return cls, strategy_source(cls.__bt_source__, path, cls.__name__)


def grid_of(req: RunRequest, root: Path, text: str | None) -> tuple[StrategySource, list[dict[str, Any]], list[int], bool]:
    """The strategy's source, parameter sets, the warm-up each needs and whether it is a portfolio
    strategy: kept ones when this source (``text``, the file as read once for the run) and these
    specs were expanded before."""
    from dataclasses import replace

    from backtest.deps import strategy_source
    from backtest.strategy import expand_grid, is_portfolio, parse_param_specs, warmup_bars

    if text is not None:
        src = strategy_source(text, req.strategy, req.strategy_name)
        path = _path(req, root, src.hash)
        try:
            saved = json.loads(path.read_text())
            return (replace(src, name=saved["name"]), saved["params_list"], saved["warmups"],
                    bool(saved.get("portfolio")))
        except (OSError, ValueError, KeyError):
            pass
    cls, src = load_source(req.strategy, req.strategy_name, text)
    params_list = expand_grid(cls, parse_param_specs(cls, req.params))
    warmups = [int(warmup_bars(cls, p)) for p in params_list]
    return src, params_list, warmups, is_portfolio(cls)


def remember_grid(req: RunRequest, root: Path, text: str | None, src: StrategySource,
                  params_list: list[dict[str, Any]], warmups: list[int], portfolio: bool) -> None:
    """Keep what ``grid_of`` expanded (only when it came from that same source text)."""
    from backtest.store.fsutil import write_once

    if text is None or src.source != text:
        return
    write_once(_path(req, root, src.hash),
               json.dumps({"name": src.name, "params_list": params_list, "warmups": warmups,
                          "portfolio": portfolio}).encode())
