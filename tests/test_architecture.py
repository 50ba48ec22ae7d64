"""The package's layers hold: the import contracts in pyproject.toml ([tool.importlinter]),
checked by import-linter over the real import graph (lazy imports inside functions included)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    done = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_paramiko_without_its_private_cipher_list_gets_its_own_transport(monkeypatch) -> None:
    """bt orders paramiko's ciphers through a private attribute; without it (a paramiko release
    that renamed it) connections use paramiko's own Transport instead of failing."""
    import paramiko

    from backtest.executors.ssh import connect

    connect._gcm_first_transport.cache_clear()
    try:
        ordered = connect._gcm_first_transport()
        assert ordered is not paramiko.Transport and ordered._preferred_ciphers[0].endswith("-gcm@openssh.com")
        connect._gcm_first_transport.cache_clear()
        monkeypatch.delattr(paramiko.Transport, "_preferred_ciphers")
        assert connect._gcm_first_transport() is paramiko.Transport
    finally:
        connect._gcm_first_transport.cache_clear()
