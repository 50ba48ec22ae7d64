"""The worker program on its own: protocol, liveness, never outliving its coordinator."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from backtest.worker.protocol import encode, read_frame


def start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "backtest.worker", "--heartbeat", "0.2", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def test_hello_heartbeats_and_clean_stop() -> None:
    with start() as p:
        assert p.stdout is not None and p.stdin is not None
        hello = read_frame(p.stdout)
        assert hello is not None and hello[0]["t"] == "hello" and hello[0]["cores"] >= 1
        assert {"python", "numpy", "numba", "bt"} <= set(hello[0]["env"])
        beat = read_frame(p.stdout)
        assert beat is not None and beat[0]["t"] == "hb"
        p.stdin.write(encode({"t": "stop"}))
        p.stdin.flush()
        assert p.wait(timeout=10) == 0


def test_a_silent_coordinator_makes_the_worker_exit() -> None:
    with start("--coordinator-timeout", "1.5") as p:
        t0 = time.monotonic()
        assert p.wait(timeout=30) == 4  # stdin stays open, but no ping comes
        assert time.monotonic() - t0 < 20


def test_pings_keep_it_alive() -> None:
    with start("--coordinator-timeout", "1.5") as p:
        assert p.stdin is not None
        t_end = time.monotonic() + 4
        while time.monotonic() < t_end:
            p.stdin.write(encode({"t": "ping"}))
            p.stdin.flush()
            time.sleep(0.3)
        assert p.poll() is None
        p.stdin.close()  # input ends: the worker ends
        assert p.wait(timeout=10) == 0


def test_a_silent_coordinator_makes_the_worker_exit_even_while_its_output_is_blocked() -> None:
    """A cut-off coordinator neither pings nor reads: the worker's writes block on a full pipe
    (as on an SSH channel whose window is full), and it must still exit on time."""
    import fcntl

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: one page, full after the hello and ~250 beats
    try:
        with subprocess.Popen([sys.executable, "-m", "backtest.worker", "--heartbeat", "0.001",
                               "--coordinator-timeout", "2"], stdin=subprocess.PIPE, stdout=write_end,
                              stderr=subprocess.DEVNULL) as p:
            t0 = time.monotonic()
            assert p.wait(timeout=60) == 4  # nobody reads its output, nobody pings it
            assert time.monotonic() - t0 < 30
            assert len(os.read(read_end, 65536)) >= 4000  # its output was blocked, the pipe full
    finally:
        os.close(read_end)
        os.close(write_end)
