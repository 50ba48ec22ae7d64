"""The ``bt`` console script: a few lines that run before the command line's heavy imports.

When the command is ``bt run --force`` on this machine (so there surely is work), the local
workers' fork server (``backtest.executors.forkserver``) is started first of all, so that its warm-up
(numpy, numba) overlaps the coordinator's own start-up, parsing and planning; then
``backtest.cli`` takes over. Without ``--force``, whether there is anything to compute is known
only from the plan: ``bt run`` then starts the workers while it plans when the job is new
(``runner.prepare_started``), or after planning for what is missing; a fully cached rerun starts
none.

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
    if _forced_local_run(sys.argv[1:] if argv is None else argv):
        from backtest.executors.forkserver import preload

        preload(sandbox=not _sandbox_off(argv if argv is not None else sys.argv[1:]))  # `bt run` adopts it, or
        # stops it if the input turns out bad or the guess about the sandbox was wrong
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


def _sandbox_off(args: list[str]) -> bool:
    """Whether ``args`` hold ``--sandbox off`` (a guess made before parsing, like the one below)."""
    return any(a == "--sandbox=off" or (a == "--sandbox" and args[i + 1:i + 2] == ["off"])
               for i, a in enumerate(args))


def _forced_local_run(args: list[str]) -> bool:
    """Whether ``args`` look like ``bt run --force`` on the local executor (a cheap guess, made
    before the command line is parsed: a wrong guess costs only a fork server started for nothing)."""
    words = [a for a in args if not a.startswith("-")]
    if "run" not in words[:3] or "--force" not in args or any(a in ("--help", "-h") for a in args):
        return False
    for i, a in enumerate(args):
        if a in ("--hosts", "--accept-new-hosts") or a.startswith("--hosts="):
            return False
        if a == "--executor" or a.startswith("--executor="):
            url = a.partition("=")[2] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            if not url.startswith("local"):
                return False
    return True
