"""The ``bt`` console script: ``backtest.cli`` runs the command, then the process leaves quickly.

A command ends with ``os._exit`` once the ``atexit`` handlers have run and the output is flushed
(``_leave``): the interpreter's teardown, mostly garbage collections over every module's objects
(typer, rich, numpy, numba, duckdb), would add 30-70 ms to every command. The handlers are those
of a normal exit, in the same order: bt's own (``forkserver.preload``'s stop of a fork server
nobody adopted, the removal of this process's DuckDB spill folders) and any that a library or a
strategy registered.
"""

from __future__ import annotations

import atexit
import os
import sys


def main(argv: list[str] | None = None) -> None:
    from backtest.trace import mark

    mark("bt started")
    # bt itself does no linear algebra; OpenBLAS's threads (one per core, started at numpy's
    # import) would spin ~0.1 CPU-seconds on the cores the workers need. Workers inherit it.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from backtest.cli import main as cli_main

    try:
        cli_main(argv)
    except SystemExit as exc:  # the command line always ends this way (click's standalone mode)
        if exc.code is None or isinstance(exc.code, int):
            _leave(exc.code or 0)
        raise
    _leave(0)


def _leave(code: int) -> None:
    """Run the ``atexit`` handlers, flush the output, and exit without tearing the interpreter
    down. By now every command has closed and flushed what it wrote (result files, the catalog,
    stopped workers). ``atexit._run_exitfuncs`` is CPython's (private) way to run the handlers,
    each once, as a normal exit would; where it is missing, the process exits the ordinary way,
    teardown included. Unlike a normal exit, threads still running are not waited for (no
    command leaves one that matters)."""
    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_handlers is None:
        _flush_output()
        sys.exit(code)
    run_handlers()
    _flush_output()
    os._exit(code)


def _flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (bt ... | head): nothing more to say
            try:  # nor to try again (an ordinary exit flushes once more, and would report it)
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, stream.fileno())
                os.close(null)
            except (OSError, ValueError):
                pass
