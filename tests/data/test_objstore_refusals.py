"""The shared result cache under refused credentials and denied permissions, against moto's
server with its IAM authentication on (``s3auth``: keys ``writer``, ``reader``, ``wrong``): a
run never fails for it (one warning, everything computed and kept), an explicit ``bt cache push``
is one line, exit 2, and no secret is shown. (The data store's own refusals: test_objstore.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import bt_in

from backtest.store.results import ResultStore

GRID = ["--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=20,40"]


def _one_line(code: int, out: str, err: str) -> str:
    assert code == 2, out + err
    assert "Traceback" not in out + err
    lines = [x for x in err.strip().splitlines() if x.strip() and not x.startswith("pushing run")]  # progress
    assert len(lines) == 1, err
    return lines[0]


def _as(server, who: str, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: ANN001
    for k, v in server.env(who).items():
        monkeypatch.setenv(k, v)
    return server.keys[who].secret_key


@pytest.fixture
def cache(s3auth) -> str:  # noqa: ANN001
    return f"s3://{s3auth.bucket()}/cache"


def _run(root: Path, sma_path: Path, *extra: str) -> tuple[dict, str]:
    code, out, err = bt_in(root, "run", sma_path, *extra, "--json")
    assert code == 0 and "Traceback" not in err, out + err
    return json.loads(out.strip().splitlines()[-1]), out + err


def test_refused_credentials(s3auth, cache: str, market: Path, tmp_path: Path, sma_path: Path,  # noqa: ANN001
                             monkeypatch: pytest.MonkeyPatch) -> None:
    secret = _as(s3auth, "wrong", monkeypatch)
    root = tmp_path / "bt"
    shutil.copytree(market, root)
    got, said = _run(root, sma_path, *GRID, "--remote-cache", cache)
    assert got["computed"] == 12 and len(ResultStore(root).keys()) == 12
    [warning] = got["remote_cache"]["warnings"]
    assert "remote cache" in warning and "refused the credentials" in warning and "computed here" in warning
    assert secret not in said
    line = _one_line(*bt_in(root, "cache", "push", "latest", "--remote-cache", cache))
    assert "remote cache" in line and "refused the credentials" in line and secret not in line, line


def test_denied_permission(s3auth, cache: str, market: Path, tmp_path: Path, sma_path: Path,  # noqa: ANN001
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys that may read but not write: a run fetches, computes the rest, keeps it and warns once
    that it could not upload; read-only, it tries no write."""
    root = tmp_path / "bt"
    shutil.copytree(market, root)
    _as(s3auth, "writer", monkeypatch)
    writer = tmp_path / "writer"
    shutil.copytree(market, writer)
    first, _ = _run(writer, sma_path, *GRID, "--remote-cache", cache)
    assert first["remote_cache"]["uploaded"] >= 1
    _as(s3auth, "reader", monkeypatch)
    got, _ = _run(root, sma_path, *GRID[:-1], "slow=20,40,60", "--remote-cache", cache)
    assert got["remote_cache"]["fetched"] == 12 and got["computed"] == 6
    assert len(ResultStore(root).keys()) == 18
    [warning] = got["remote_cache"]["warnings"]
    assert "remote cache" in warning and "denied permission" in warning and "PutObject" in warning, warning
    line = _one_line(*bt_in(root, "cache", "push", "latest", "--remote-cache", cache))
    assert "remote cache" in line and "denied permission" in line, line
    got, _ = _run(root, sma_path, *GRID[:-1], "slow=20,40,80", "--remote-cache", cache, "--remote-cache-read-only")
    assert got["computed"] == 6 and got["remote_cache"]["warnings"] == [] and got["remote_cache"]["uploaded"] == 0
