"""Shared fixtures: a small real data store written by the tests, and strategy files.

Helpers the tests import live in ``helpers.py`` (a module named ``conftest`` would clash with the
other test folders' conftest files)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import FAULTY, SYMBOLS, synth_daily, write_strategy


def pytest_configure(config: pytest.Config) -> None:
    """A user's own data store and shared result cache stay out of the tests (a test that wants
    one sets it)."""
    for name in ("BT_STORE", "BT_REMOTE_CACHE", "BT_REMOTE_CACHE_READ_ONLY"):
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with 3 symbols of daily bars, 2019 to 2021."""
    from backtest.data import Store

    root = tmp_path_factory.mktemp("market")
    store = Store(root)
    for i, sym in enumerate(SYMBOLS):
        store.import_arrays(sym, *synth_daily(i))
    return root


@pytest.fixture
def root(market: Path, tmp_path: Path) -> Path:
    """A fresh bt root (own results and catalog) holding a copy of ``market``'s bars."""
    dest = tmp_path / "bt"
    shutil.copytree(market, dest)
    return dest


@pytest.fixture
def faulty(tmp_path: Path) -> Path:
    return write_strategy(tmp_path, FAULTY, "faulty.py")


@pytest.fixture
def sma_path() -> Path:
    return Path(__file__).resolve().parents[1] / "strategies" / "sma_cross.py"


@pytest.fixture(scope="session")
def s3server():
    """A real S3 API (moto's standalone server) on 127.0.0.1 and a free port, for the session."""
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    from s3server import S3Server

    server = S3Server("127.0.0.1")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3auth():
    """moto's server as s3server, with its IAM authentication on: every request's signature and
    permission are checked, for the key pairs ``writer``, ``reader``, ``nobody`` and ``wrong``
    (tests/s3server.py). ``env(who)`` is a client's environment with one of them."""
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    from s3server import S3Server

    server = S3Server("127.0.0.1", auth=True)
    yield server
    server.stop()


@pytest.fixture
def s3env(s3server, monkeypatch: pytest.MonkeyPatch):
    """This test's environment for the S3 server (its keys, endpoint and region) and a fresh bucket:
    the store's URI is ``s3://<bucket>/team``."""
    for k, v in s3server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("BT_STORE", raising=False)
    return f"s3://{s3server.bucket()}/team"
