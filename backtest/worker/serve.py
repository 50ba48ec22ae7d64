"""A worker's loop: answer the coordinator's frames until the input ends."""

from __future__ import annotations

import gc
import os
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backtest.spec import ShardSpec
from backtest.worker.protocol import FrameWriter, read_frame
from backtest.worker.shard import Runner
from backtest.worker.tuning import cores, warm_up

if TYPE_CHECKING:
    from backtest.worker.sandbox import SandboxOptions


def serve(stdin: Any, writer: FrameWriter, data_root: Path | None, heartbeat: float,
          coordinator_timeout: float = 0.0, results: Path | None = None, sandbox: SandboxOptions | None = None) -> None:
    """Answer frames until the input ends. A reader thread takes frames off the input as they
    come, even while a shard runs, so that with ``coordinator_timeout`` the worker can tell that
    its coordinator has gone silent (a frozen or cut-off coordinator sends no pings) and exit.

    With ``sandbox``, the worker enters it after warming up and before it starts any thread
    (unsharing namespaces and Landlock apply to the calling thread only) or loads any strategy."""
    import queue
    import socket

    stop = threading.Event()
    inbox: queue.Queue[tuple[dict[str, Any], bytes] | None] = queue.Queue()
    last_heard = [time.monotonic()]

    def read() -> None:
        try:
            while True:
                frame = read_frame(stdin)
                last_heard[0] = time.monotonic()
                if frame is None or frame[0]["t"] == "stop":
                    break
                if frame[0]["t"] != "ping":
                    inbox.put(frame)
        except Exception:
            pass
        inbox.put(None)

    def beat() -> None:
        while not stop.wait(heartbeat):
            try:
                writer.send({"t": "hb"})
            except (OSError, ValueError):
                os._exit(3)  # nobody is listening any more

    def watch() -> None:
        """Exit once the coordinator has been silent for ``coordinator_timeout``. A thread of its
        own: a write to a cut-off coordinator blocks (the SSH channel's window is full and sshd
        stops reading), and a check made between writes would wait with it."""
        while not stop.wait(min(0.5, coordinator_timeout / 4)):
            if time.monotonic() - last_heard[0] > coordinator_timeout:
                os._exit(4)  # the coordinator went silent: never outlive it

    try:
        warm_up(every=sandbox is not None)
    except Exception:  # noqa: S110 - the first shard meets (and reports) the same problem
        pass
    box = sandbox.enter() if sandbox is not None else None
    if coordinator_timeout:
        threading.Thread(target=watch, daemon=True, name="bt-watchdog").start()
    runner = Runner(data_root, results, box)
    gc.freeze()  # numpy, numba and the kernels stay for good: no full collection walks them again
    gc.enable()
    writer.send({"t": "hello", "pid": os.getpid(), "cores": cores(), "host": socket.gethostname(),
                 "env": runner.env, "sandbox": box.protections.to_json() if box else None})
    threading.Thread(target=read, daemon=True, name="bt-read").start()
    threading.Thread(target=beat, daemon=True, name="bt-heartbeat").start()
    try:
        while True:
            frame = inbox.get()
            if frame is None:
                break
            msg, _ = frame
            kind = msg["t"]
            if kind == "strategy":
                try:
                    runner.add_strategy(msg)
                except Exception as exc:
                    writer.send({"t": "fatal", "error": str(exc), "details": traceback.format_exc()})
            elif kind == "shard":
                runner.run_shard(ShardSpec.from_wire(msg["shard"]), writer.send)
                if box is not None:
                    box.after_shard()
    finally:
        stop.set()
        if box is not None:
            box.close()
