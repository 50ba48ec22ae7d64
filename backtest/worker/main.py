"""The one worker program: runs shards, whatever the transport.

``python -m backtest.worker [--data ROOT] [--max-memory BYTES] [--heartbeat SECONDS]`` speaks the
framed protocol of ``backtest.worker.protocol`` on stdin/stdout. It stays alive across shards (numba
compiles once), sends a heartbeat every second from a thread, and exits when its input ends or
when its output can no longer be written (the coordinator or the SSH channel is gone), so it
never outlives the run that started it.

The package's parts: ``main`` (this: options, then ``serve`` or the fork server), ``serve`` (the
frame loop), ``shard`` (a shard spec becomes outcomes), ``protocol`` (the frames), ``tuning``
(thread pools, malloc, warm-up), ``numba_load`` (the lean load of cached kernels) and
``forkserver`` (the server side of local workers forked from one warm process).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

from backtest.worker.protocol import FrameWriter
from backtest.worker.serve import serve
from backtest.worker.tuning import POOLS, keep_freed_memory


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m backtest.worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="root for relative partition paths")
    ap.add_argument("--results", type=Path, default=None,
                    help="write result files into this bt root's results store and send only their metrics "
                         "(for workers on the coordinator's machine)")
    ap.add_argument("--max-memory", type=int, default=None,
                    help="address-space cap in bytes (0: none; default: none, or with --sandbox the worker's share)")
    ap.add_argument("--sandbox", action="store_true",
                    help="enter the sandbox (backtest/worker/sandbox.py) before loading any strategy")
    ap.add_argument("--readable", type=Path, action="append", default=[], metavar="DIR",
                    help="with --sandbox: a folder of bars strategies may read besides --data's (an SSH host's cache)")
    ap.add_argument("--share", type=int, default=1, metavar="N",
                    help="with --sandbox: N workers share this machine's memory (the default memory cap)")
    ap.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    ap.add_argument("--coordinator-timeout", type=float, default=0.0,
                    help="exit when nothing (not even a ping) came from the coordinator for this long (0: never)")
    ap.add_argument("--fork-server", type=int, default=None, metavar="FD",
                    help="run as the fork server of a local executor on control socket FD "
                         "(see backtest/worker/forkserver.py)")
    args = ap.parse_args(argv)
    # The imports and the warm-up make ~500 000 objects that all live as long as the process:
    # collecting while they are made only walks them again and again (0.05-0.15 of ~0.5 CPU-s).
    # On again, with them frozen, once warm (``serve``).
    gc.disable()
    for name, value in POOLS.items():
        os.environ.setdefault(name, value)  # before numpy's import: BLAS reads it once, at load
    if args.fork_server is not None:
        from backtest.worker.forkserver import serve as fork_server

        fork_server(args.fork_server, main, args.sandbox)
        return
    # The protocol owns the real stdout; anything else written to fd 1 (a stray print in C code)
    # goes to stderr instead of corrupting frames.
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Import the heavy modules now, while the coordinator is still planning, and before any
    # memory cap (numba's import maps a lot of address space).
    import backtest.data  # noqa: F401
    import backtest.engine  # noqa: F401
    import backtest.strategy  # noqa: F401

    keep_freed_memory()  # a forked worker has it from its fork server already; ~0.1 ms
    if args.max_memory and not args.sandbox:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (args.max_memory, args.max_memory))
    sandbox = None
    if args.sandbox:
        from backtest.worker.sandbox import SandboxOptions

        sandbox = SandboxOptions(args.data, args.results, args.max_memory, args.share, args.readable)
    serve(sys.stdin.buffer, FrameWriter(proto_out), args.data, args.heartbeat, args.coordinator_timeout,
          args.results, sandbox)
