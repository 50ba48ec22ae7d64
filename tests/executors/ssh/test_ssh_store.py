"""Bars on an object store and SSH hosts: hosts that reach the store (a real S3 API on the test
bridge) fetch their partitions themselves, with their own credentials; hosts that cannot get them
shipped by the coordinator. Either way the results are the bytes of a local run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import SYMBOLS, synth_daily
from netns_farm import SUBNET_PREFIX, Farm
from sshhelpers import line

from backtest.data import Store
from backtest.store.results import ResultStore

pytestmark = pytest.mark.ssh


def bt(root: Path, *args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backtest", "--data", str(root), *map(str, args)],
                          capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL)


def _results(root: Path) -> dict[str, bytes]:
    store = ResultStore(root)
    return {k: store.read_bytes(k) for k in store.keys()}


def _credentials(farm: Farm) -> None:
    """Each host's user gets its own (moto accepts any) keys in ~/.aws, as a real host would."""
    for host in farm.hosts:
        aws = host.home / ".aws"
        aws.mkdir(exist_ok=True)
        (aws / "credentials").write_text(f"[default]\naws_access_key_id = host-{host.user}\n"
                                         "aws_secret_access_key = its-own-secret\n")
        (aws / "config").write_text("[default]\nregion = us-east-1\n")
        subprocess.run(["chown", "-R", f"{host.user}:", str(aws)], check=True)


def _import_into(server: Any, root: Path) -> str:
    """Import the test symbols into a store on ``server``; the store's URI."""
    uri = f"s3://{server.bucket()}/team"
    os.environ.update(server.env())
    try:
        store = Store(root, uri=uri)
        for i, sym in enumerate(SYMBOLS):
            store.import_arrays(sym, *synth_daily(i))
    finally:
        for k in server.env():
            os.environ.pop(k, None)
    return uri


def test_hosts_fetch_from_the_store_or_get_the_bars_shipped(ready_farm: Farm, farm_python: str, s3server,  # noqa: ANN001
                                                              market: Path, sma_path: Path, tmp_path: Path) -> None:
    from s3server import S3Server

    farm = ready_farm
    _credentials(farm)
    hosts = farm.hosts_file([line(farm, h, farm_python) for h in farm.hosts])
    args = ["run", sma_path, "--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=30", "--json"]
    local = tmp_path / "local"
    shutil.copytree(market, local)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BT_S3", "BT_STORE"))}
    base_env.update(BT_KNOWN_HOSTS=str(farm.known_hosts), COLUMNS="200")
    done = bt(local, *args, env=base_env)
    assert done.returncode == 0, done.stderr
    expected = _results(local)

    # 1. a server on the bridge: every host reaches it and fetches what its shards read
    bridge = S3Server(f"{SUBNET_PREFIX}.{farm.octet}.1")
    try:
        env = {**base_env, **bridge.env()}
        uri = _import_into(bridge, tmp_path / "import")
        root = tmp_path / "direct"
        done = bt(root, "--store", uri, *args, "--hosts", hosts, env=env)
        assert done.returncode == 0, done.stderr + done.stdout
        assert _results(root) == expected
        assert not list((root / "cache" / "bars").glob("*.parquet"))  # the coordinator fetched nothing
        fetched = [p for h in farm.hosts for p in h.home.rglob("objects/bars/*.parquet")]
        assert fetched
        check = bt(root, "--store", uri, "hosts", "check", hosts, env=env)
        assert check.returncode == 0, check.stderr + check.stdout
        assert check.stdout.count("fetched by the host") == len(farm.hosts), check.stdout
    finally:
        bridge.stop()

    # 2. a server on the coordinator's loopback, which no host reaches: the coordinator fetches and ships
    env = {**base_env, **s3server.env()}
    uri = _import_into(s3server, tmp_path / "import2")
    root = tmp_path / "shipped"
    done = bt(root, "--store", uri, *args, "--hosts", hosts, env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1])["computed"] == len(expected)
    assert _results(root) == expected
    assert list((root / "cache" / "bars").glob("*.parquet"))
    check = bt(root, "--store", uri, "hosts", "check", hosts, env=env)
    assert check.returncode == 0, check.stderr + check.stdout
    assert len(re.findall(r"shipped by the", check.stdout)) == len(farm.hosts), check.stdout
    for f in [*root.rglob("*"), *(p for h in farm.hosts for p in h.home.rglob("*"))]:
        if f.is_file() and f.stat().st_size < 50_000_000:
            assert b"its-own-secret" not in f.read_bytes() or f.name == "credentials", f
