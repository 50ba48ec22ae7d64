"""Refused credentials and denied permissions, for the data store and the shared result cache:
one line each (exit 2 where the command needs the store; a warning where a run can go on without
the cache), no traceback, no secret shown, nothing computed lost.

Refused credentials come from moto's server with its IAM authentication on; a denied permission
from ``ReadOnlyS3`` (moto, signed in, refuses every listing: ``s3server``'s docstring says why)."""

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


@pytest.fixture(scope="module")
def authserver():
    """moto's S3 server with its IAM authentication on, and a bucket the writer made."""
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    from s3server import S3Server

    server = S3Server("127.0.0.1", auth=True)
    server.name = server.bucket()
    yield server
    server.stop()


@pytest.fixture
def denying(monkeypatch: pytest.MonkeyPatch):
    from s3server import ReadOnlyS3

    server = ReadOnlyS3("127.0.0.1")
    for k, v in {"AWS_ACCESS_KEY_ID": "reader", "AWS_SECRET_ACCESS_KEY": "reader-secret", "AWS_REGION": "us-east-1",
                 "AWS_DEFAULT_REGION": "us-east-1", "BT_S3_ENDPOINT": server.endpoint,
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    yield server
    server.stop()


def test_refused_credentials(authserver, market: Path, tmp_path: Path, sma_path: Path,  # noqa: ANN001
                             monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in authserver.env("wrong").items():
        monkeypatch.setenv(k, v)
    secret = authserver.keys["wrong"].secret_key
    store = f"s3://{authserver.name}/team"
    # the first request looks at the bucket (HEAD): S3's 403 there has no body to say why
    line = _one_line(*bt_in(tmp_path / "r", "--store", store, "data", "ls"))
    assert "refused access" in line and "AWS_ACCESS_KEY_ID" in line and secret not in line, line
    # the shared cache refusing them never fails a run: one warning, everything computed and kept
    root = tmp_path / "bt"
    shutil.copytree(market, root)
    code, out, err = bt_in(root, "run", sma_path, *GRID, "--remote-cache", f"s3://{authserver.name}/cache", "--json")
    assert code == 0 and "Traceback" not in err, out + err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["computed"] == 12 and len(ResultStore(root).keys()) == 12
    [warning] = got["remote_cache"]["warnings"]
    assert "remote cache" in warning and "refused access" in warning and secret not in out + err
    line = _one_line(*bt_in(root, "cache", "push", "latest", "--remote-cache", f"s3://{authserver.name}/cache"))
    assert "remote cache" in line and "refused access" in line, line
    # the same server takes the writer's keys (what is refused is the keys, not the request)
    for k, v in authserver.env("writer").items():
        monkeypatch.setenv(k, v)
    assert authserver.client("writer").head_bucket(Bucket=authserver.name)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_denied_permission(denying, market: Path, tmp_path: Path, sma_path: Path) -> None:  # noqa: ANN001
    """Keys that may read but not write: an import is refused in one line; a run with the shared
    cache computes, keeps its results and warns once that it could not upload them."""
    csv = tmp_path / "ABC.csv"
    csv.write_text("date,open,high,low,close,volume\n2020-01-02,10,11,9,10.5,100\n")
    line = _one_line(*bt_in(tmp_path / "r", "--store", "s3://team-bars/x", "data", "import", csv))
    assert "denied permission" in line and "PutObject" in line and "reader-secret" not in line, line
    assert denying.writes >= 1  # it was the write that was refused
    code, out, err = bt_in(tmp_path / "r", "--store", "s3://team-bars/x", "data", "ls")
    assert code == 0 and "Traceback" not in err, out + err  # reading is allowed
    root = tmp_path / "bt"
    shutil.copytree(market, root)
    code, out, err = bt_in(root, "run", sma_path, *GRID, "--remote-cache", "s3://team-bt/cache", "--json")
    assert code == 0 and "Traceback" not in err, out + err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["computed"] == 12 and len(ResultStore(root).keys()) == 12
    [warning] = got["remote_cache"]["warnings"]
    assert "remote cache" in warning and "denied permission" in warning and "computed here" in warning, warning
    line = _one_line(*bt_in(root, "cache", "push", "latest", "--remote-cache", "s3://team-bt/cache"))
    assert "remote cache" in line and "denied permission" in line, line
    # read-only users say so, and nothing is tried
    writes = denying.writes
    code, out, err = bt_in(root, "run", sma_path, *GRID[:-1], "slow=20,40,60", "--remote-cache", "s3://team-bt/cache",
                           "--remote-cache-read-only", "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["remote_cache"]["warnings"] == []
    assert denying.writes == writes
