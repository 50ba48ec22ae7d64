"""`bt export mlflow` of a 1 000-task run: to a real MLflow tracking server on 127.0.0.1 (SQLite
backend store, started here from the server's own environment, see tests/mlflow_server.py) and to
a local SQLite tracking URI; first export and re-export (every run found by its tags and updated).

    python benchmarks/bench_mlflow.py
    python benchmarks/bench_mlflow.py --trades        # each task's trades.csv attached too
    python benchmarks/bench_mlflow.py --rtt 20        # and to the server as if 20 ms away

The set-up (untimed): `bt data demo` (20 symbols of daily bars) in benchmarks/.work/bt-root-mlflow
and one run of strategies/sma_cross.py 2020-2024 over 50 parameter sets (fast 5..50 step 5 x slow
60..180 step 30): 1 000 tasks. Every timing is a fresh `bt` process, as a user runs it (wall time,
MLflow's import and the HTML report included; the report alone is timed too). With ``--rtt MS``
the same server is also reached through a proxy here that holds each direction's data MS/2 ms, as
a tracking server on another machine is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = Path(__file__).resolve().parent / ".work"
sys.path.insert(0, str(REPO / "tests"))

import mlflow_server  # noqa: E402

BT = [sys.executable, "-m", "backtest"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}


def _bt(root: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*BT, "--data", str(root), *args], cwd=cwd, text=True, capture_output=True, env=ENV)
    if res.returncode != 0:
        raise SystemExit(f"bt {' '.join(args)} failed ({res.returncode}):\n{res.stderr}{res.stdout}")
    return res


def _run(root: Path) -> str:
    if not (root / "bars").exists():
        _bt(root, "data", "demo")
    res = _bt(root, "run", "strategies/sma_cross.py", "--from", "2020", "--to", "2024", "-p", "fast=5:50:5",
              "-p", "slow=60:180:30", "--json")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["tasks"] == 1000, summary
    return str(summary["run_id"])


def _timed(root: Path, run_id: str, uri: str, trades: bool, cwd: Path, experiment: str = "bench") -> tuple[float, str]:
    t0 = time.perf_counter()
    res = _bt(root, "export", "mlflow", run_id, "--tracking-uri", uri, "--experiment", experiment, "--all",
              *(["--trades"] if trades else []), cwd=cwd)
    return time.perf_counter() - t0, res.stdout.strip().splitlines()[0]


def delayed(port: int, rtt_ms: float) -> tuple[str, Callable[[], None]]:
    """A proxy on 127.0.0.1 to ``port`` that holds each chunk rtt_ms/2 ms in each direction: (its
    URI, what stops it)."""
    half = rtt_ms / 2000

    async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                await asyncio.sleep(half)
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tr, tw = await asyncio.open_connection("127.0.0.1", port)
        with contextlib.suppress(asyncio.CancelledError):  # stopped with a connection still open
            await asyncio.gather(pump(r, tw), pump(tr, w))

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        server.close()
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()

        async def ended() -> None:
            await asyncio.gather(*left, return_exceptions=True)

        loop.run_until_complete(ended())
        loop.close()

    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trades", action="store_true", help="attach each task's trades (one upload per task)")
    ap.add_argument("--rtt", type=float, default=0.0, metavar="MS",
                    help="also export to the server through a proxy that delays each round trip MS ms")
    args = ap.parse_args()
    root = WORK / "bt-root-mlflow"
    run_id = _run(root)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bt-bench-mlflow-") as tmp:
        t0 = time.perf_counter()
        _bt(root, "report", run_id, "--format", "html", "--out", f"{tmp}/report.html")
        rows.append(("the HTML report alone (bt report --format html)", time.perf_counter() - t0, ""))
        python, why = mlflow_server.server_python()
        if python is None:
            raise SystemExit(why)
        proc, uri = mlflow_server.start(python, Path(tmp) / "server")
        try:
            for label in ("first export", "re-export"):
                seconds, said = _timed(root, run_id, uri, args.trades, Path(tmp))
                rows.append((f"tracking server ({uri}), {label}", seconds, said))
            if args.rtt:
                far, stop = delayed(int(uri.rsplit(":", 1)[1]), args.rtt)
                try:
                    for label in ("first export", "re-export"):
                        seconds, said = _timed(root, run_id, far, args.trades, Path(tmp), "bench-far")
                        rows.append((f"the same, {args.rtt:g} ms away, {label}", seconds, said))
                finally:
                    stop()
        finally:
            mlflow_server.stop(proc)
        local = f"sqlite:///{tmp}/local.db"
        for label in ("first export", "re-export"):
            seconds, said = _timed(root, run_id, local, args.trades, Path(tmp))
            rows.append((f"local SQLite URI, {label}", seconds, said))
    print(f"bt export mlflow {run_id} --all{' --trades' if args.trades else ''}: 1 000 tasks "
          f"({os.cpu_count()} cores)")
    for label, seconds, said in rows:
        print(f"  {label:<58} {seconds:6.1f} s   {said}")


if __name__ == "__main__":
    main()
