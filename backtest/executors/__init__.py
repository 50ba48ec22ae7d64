"""Executors, chosen by URL scheme (STYLE 6): ``local://N``, ``inline://``, ``ssh://h1,h2``,
``dask://host:port``. Optional backends are imported only when chosen."""

from __future__ import annotations

from backtest.errors import ExecutorError, UsageError
from backtest.executors.base import Executor, ExecutorOptions

SCHEMES = ("local", "inline", "ssh", "dask")


def from_url(url: str, options: ExecutorOptions) -> Executor:
    """Build the executor a URL names; an unknown scheme lists the known ones."""
    from dataclasses import replace

    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UsageError(f'executor "{url}" is not a URL; use one of: ' + ", ".join(f"{s}://" for s in SCHEMES))
    if scheme == "local":
        from backtest.executors.local import LocalExecutor

        if rest:
            try:
                n = int(rest)
            except ValueError:
                n = 0
            if n < 1:
                raise UsageError(f'"{url}": the number of workers must be a whole number ≥ 1, e.g. local://4')
            options = replace(options, workers=n)
        return LocalExecutor(options)
    if scheme == "inline":
        from backtest.executors.inline import InlineExecutor

        return InlineExecutor(options)
    if scheme == "ssh":
        try:
            from backtest.executors.ssh import SSHExecutor
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ExecutorError(f"the SSH executor is unavailable: {exc}") from exc
        return SSHExecutor.from_url(rest, options)
    if scheme == "dask":
        from backtest.executors.dask_ import DaskExecutor

        return DaskExecutor(rest, options)
    raise UsageError(f'unknown executor scheme "{scheme}://"; known: ' + ", ".join(f"{s}://" for s in SCHEMES))
