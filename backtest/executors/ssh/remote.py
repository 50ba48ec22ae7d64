"""How the coordinator runs the host-side agent (``backtest/executors/ssh/agent.py``) without installing it."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def agent_source() -> str:
    return Path(__file__).with_name("agent.py").read_text(encoding="utf-8")


def agent_argv(python: str, *args: str) -> list[str]:
    """``[python, "-c", <agent source>, *args]``: the agent's command line on a host."""
    return [python, "-c", agent_source(), *args]
