"""The one exception tree of `bt`.

Library code raises these; the CLI turns any ``BtError`` into one red line and the error's
``exit_code``. Third-party errors are re-raised at the boundary with ``raise ... from exc``.

::

    BtError                      exit 2 unless stated
    ├── UsageError               bad command-line input (dates, grids, flags)
    ├── DataError                data store: import, validation, reading
    │   └── ValidationError      a file's content is wrong (names file, line, what, how to fix)
    ├── StrategyError            loading a strategy, bad parameters, bad strategy output
    ├── PlanError                the job cannot be planned (no data in range, empty universe)
    ├── CatalogError             the catalog (unknown run id, ...)
    ├── ResultError              results store (missing or corrupt result file)
    └── ExecutorError            executors: unknown scheme, lost workers, hosts
        └── HostError            one SSH host failed (unreachable, wrong environment, host key)
            └── HostRefused      it answers but cannot be used; retrying will not help
                                 (defined in backtest/executors/ssh/connect.py, next to its causes)
"""

from __future__ import annotations


class BtError(Exception):
    """Base of every error `bt` raises on purpose. ``str(err)`` is the one line shown;
    ``details`` holds what does not fit on it (e.g. a strategy's trimmed traceback)."""

    exit_code: int = 2
    details: str = ""


class UsageError(BtError):
    pass


class DataError(BtError):
    pass


class ValidationError(DataError):
    pass


class StrategyError(BtError):
    pass


class PlanError(BtError):
    pass


class CatalogError(BtError):
    pass


class ResultError(BtError):
    pass


class ExecutorError(BtError):
    pass


class HostError(ExecutorError):
    pass


def did_you_mean(word: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """Return ' Did you mean "x"?' for the closest choice, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f' Did you mean "{close[0]}"?' if close else ""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, or DuckDB's IOException, which carries no errno) says that a
    disk or a quota is full."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


def unexpected(exc: BaseException) -> tuple[str, int]:
    """The one line (and exit code) for an exception no command turned into a ``BtError``: what
    the machine did (a full disk, a path it refused), or else an error in bt itself."""
    import os

    if disk_full(exc):
        from backtest import paths

        where = getattr(exc, "filename", None) or paths.root()
        return (f"the disk is full (writing {where}); free some space and run the command again: what "
                "was stored before stays, and a rerun computes only what is missing", 1)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}", 1
    if type(exc).__module__.startswith("_duckdb") or type(exc).__module__.startswith("duckdb"):
        return f"the catalog could not be written or read ({exc}); bt catalog rebuild re-creates it from the results", 1
    debug = "" if os.environ.get("BT_DEBUG") else " (BT_DEBUG=1 shows the traceback)"
    return f"internal error: {type(exc).__name__}: {exc}{debug}; please report it", 1
