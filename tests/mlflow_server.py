"""A real MLflow tracking server for the export tests and the benchmark, on 127.0.0.1.

The server needs the full ``mlflow`` package, whose pins do not sit beside bt's (it caps pyarrow
below the version bt is tested with); bt's own extra is the client, ``mlflow-skinny``. So the
server runs from its own virtual environment: ``BT_MLFLOW_SERVER_VENV`` (default
``/var/tmp/bt-mlflow-server``), made with ``pip install mlflow`` the first time (a minute, needs
PyPI) and reused after. ``server_python()`` says why when it cannot be had.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VENV = Path(os.environ.get("BT_MLFLOW_SERVER_VENV", "/var/tmp/bt-mlflow-server"))
SPEC = "mlflow>=2.10"


def server_python() -> tuple[Path | None, str]:
    """(the python of an environment with the ``mlflow`` server, ""), or (None, why not)."""
    python = VENV / "bin" / "python"
    if python.exists() and _has_server(python):
        return python, ""
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", SPEC], check=True, capture_output=True,
                       timeout=1200)
    except (OSError, subprocess.SubprocessError) as exc:
        out = getattr(exc, "stderr", b"") or b""
        tail = out.decode(errors="replace").strip().splitlines()[-1:] if isinstance(out, bytes) else []
        return None, f"cannot make the MLflow server's environment {VENV} ({exc}{': ' + tail[0] if tail else ''})"
    if not _has_server(python):
        return None, f"{VENV} has no working mlflow server after pip install {SPEC}"
    return python, ""


def _has_server(python: Path) -> bool:
    probe = "import mlflow.server, sqlalchemy, alembic"
    return subprocess.run([str(python), "-c", probe], capture_output=True, timeout=300).returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(python: Path, folder: Path, timeout: float = 120.0) -> tuple[subprocess.Popen[bytes], str]:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend store and its artifacts in ``folder``;
    (the process, its URI) once it answers /health. Stop it with ``stop``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (folder / "server.log").open("wb")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [str(python), "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts")],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server ended ({proc.returncode}): {(folder / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s: {(folder / 'server.log').read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and its workers (its own process group, started by ``start``)."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)


if __name__ == "__main__":  # make the server's environment ahead of the tests (CI)
    found, why = server_python()
    print(f"MLflow server environment: {found}" if found else f"no MLflow server environment: {why}")
