"""Bars on an object store and SSH hosts: hosts that reach the store (a real S3 API on the test
bridge) fetch their partitions themselves, with their own credentials; hosts that cannot get them
shipped by the coordinator. Either way the results are the bytes of a local run. A server that
stops mid-run fails only the shards whose partitions no host holds yet."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import SYMBOLS, synth_daily, write_strategy
from netns_farm import SUBNET_PREFIX, Farm
from sshhelpers import line, start_farm

from backtest.catalog import Catalog
from backtest.data import Store
from backtest.store.results import ResultStore

pytestmark = pytest.mark.ssh


def bt(root: Path, *args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backtest", "--data", str(root), *map(str, args)],
                          capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL)


def _results(root: Path) -> dict[str, bytes]:
    store = ResultStore(root)
    return {k: store.read_bytes(k) for k in store.keys()}


@pytest.fixture(scope="module")
def store_farm(prebuilt_env: tuple[Path, Path]) -> Iterator[Farm]:
    """Three hosts with bt's environment ready and keys of their own, shared by this module's tests
    (each test imports bars of its own, which no host holds yet)."""
    from farmenv import aws_credentials, provision

    with start_farm(3) as farm:
        for host in farm.hosts:
            provision(host, *prebuilt_env)
        aws_credentials(farm)
        yield farm


def _import_into(server: Any, root: Path, bars: Path | None = None) -> str:
    """Import the test symbols (or the file ``bars``) into a store on ``server``; the store's URI."""
    uri = f"s3://{server.bucket()}/team"
    os.environ.update(server.env())
    try:
        store = Store(root, uri=uri)
        if bars is not None:
            store.import_files([bars])
        for i, sym in enumerate(SYMBOLS if bars is None else ()):
            store.import_arrays(sym, *synth_daily(i))
    finally:
        for k in server.env():
            os.environ.pop(k, None)
    return uri


def _clean_env(farm: Farm) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BT_S3", "BT_STORE"))}
    env.update(BT_KNOWN_HOSTS=str(farm.known_hosts), COLUMNS="200")
    return env


def test_hosts_fetch_from_the_store_or_get_the_bars_shipped(store_farm: Farm, farm_python: str, s3server,  # noqa: ANN001
                                                              market: Path, sma_path: Path, tmp_path: Path) -> None:
    from s3server import S3Server

    farm = store_farm
    hosts = farm.hosts_file([line(farm, h, farm_python) for h in farm.hosts])
    args = ["run", sma_path, "--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=30", "--json"]
    local = tmp_path / "local"
    shutil.copytree(market, local)
    base_env = _clean_env(farm)
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


SLEEPY = """
class Sleepy(Strategy):
    n = 5

    def signals(self, bars):
        import time
        time.sleep(1.0)
        c = bars.close
        return np.where(c > np.convolve(c, np.ones(self.n) / self.n)[: len(c)], 1.0, 0.0)
"""


def _bars_file(path: Path, bars: dict[str, tuple[Any, ...]]) -> Path:
    """One Parquet file of every symbol's bars: one import, one manifest version."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.concat_tables(
        pa.table({"symbol": [sym] * len(ts), "ts": pa.array(ts, pa.timestamp("ns", tz="UTC")), "open": o, "high": h,
                  "low": lo, "close": c, "volume": v})
        for sym, (ts, o, h, lo, c, v) in bars.items()), path)
    return path


def test_the_store_stopping_mid_run_fails_only_the_shards_no_host_holds_yet(store_farm: Farm, farm_python: str,
                                                                             tmp_path: Path) -> None:
    """The server stops once the hosts hold the partitions of the shards handed out first: those
    shards complete, each of the others fails with one line naming the store (after 3 attempts of
    ~6 s: pyarrow retries a refused connection that long), the run exits 1 and keeps what it
    computed. With the server back, holding the same objects, the next run computes just the rest,
    and the results are a local run's bytes."""
    from s3server import S3Server

    farm = store_farm
    hosts = farm.hosts_file([line(farm, h, farm_python) for h in farm.hosts])
    # 12 symbols, a shard each, on three one-core hosts: a worker is handed 3 shards at the start (the
    # one it runs, 2 ahead), whose partitions its host fetches one shard after the other; the last 3
    # are handed out as the first ones end
    bars = _bars_file(tmp_path / "bars.parquet", {f"G{i:02d}": synth_daily(40 + i) for i in range(12)})
    args = ["run", write_strategy(tmp_path, SLEEPY, "sleepy.py"), "--from", "2019", "--to", "2021", "--json"]
    env = _clean_env(farm)
    root, err = tmp_path / "farm", tmp_path / "stderr.txt"
    local = Store(tmp_path / "local", uri=None)  # the reference: the same bars, the same content hashes
    local.import_files([bars])
    partitions = {sym: {p.sha256 for p in local.partitions(sym)} for sym in local.symbols()}
    folders = [h.home / ".cache" / "bt" / "objects" / "bars" for h in farm.hosts]

    def held() -> set[str]:
        """The symbols whose partitions (all of them: the run reads every year) a host holds."""
        files = {p.stem for f in folders if f.is_dir() for p in f.glob("*.parquet")}
        return {sym for sym, shas in partitions.items() if shas <= files}

    server = S3Server(f"{SUBNET_PREFIX}.{farm.octet}.1")
    try:
        uri = _import_into(server, tmp_path / "import", bars)
        bucket = uri.split("/")[2]
        client = server.client()
        objects = {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                   for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
        with open(err, "w") as stderr:
            run = subprocess.Popen([sys.executable, "-m", "backtest", "--data", str(root), "--store", uri,
                                    *map(str, args), "--hosts", str(hosts)], stdout=subprocess.PIPE, stderr=stderr,
                                   text=True, env={**env, **server.env()}, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while len(held()) < 9:  # the partitions of the shards handed out first
                assert run.poll() is None and time.monotonic() < deadline, err.read_text()
                time.sleep(0.05)
            fetched = held()
            server.stop()
            done = bt(local.root, *args, "--workers", "2", env=env)  # while the failing shards wait
            assert done.returncode == 0, done.stderr
            expected = _results(local.root)
            out, _ = run.communicate(timeout=150)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    finally:
        server.stop()

    stderr_text = err.read_text()
    assert run.returncode == 1, out + stderr_text
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "failed" and summary["computed"] + summary["failed"] == 12, summary
    assert summary["computed"] >= len(fetched) and summary["failed"] >= 1, summary
    assert "Traceback" not in stderr_text
    failures = Catalog(root / "catalog.duckdb").failures(summary["run_id"])
    assert len(failures) == summary["failed"]
    store_name = f"the data store s3://{bucket}/team"
    for f in failures:  # the reason: one line; each attempt's: one line naming the store
        assert "\n" not in f["error"] and store_name in f["error"] and "cannot be reached" in f["error"], f
        attempts = f["details"].splitlines()
        assert len(attempts) == f["attempts"] == 3 and all(store_name in a for a in attempts), f
        assert "Traceback" not in f["details"]
    kept = _results(root)
    assert len(kept) == summary["computed"] and all(expected[k] == v for k, v in kept.items())

    # the server back at the same address (a new port), the bucket as it was
    server = S3Server(f"{SUBNET_PREFIX}.{farm.octet}.1")
    try:
        client = server.client()
        server.bucket(bucket)
        for key, body in objects.items():
            client.put_object(Bucket=bucket, Key=key, Body=body)
        again = bt(root, "--store", uri, *args, "--hosts", hosts, env={**env, **server.env()})
    finally:
        server.stop()
    assert again.returncode == 0, again.stderr + again.stdout
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert (summary["computed"], summary["cached"]) == (len(failures), len(kept)), summary
    assert _results(root) == expected
    assert not list((root / "cache" / "bars").glob("*.parquet"))  # every partition came from the hosts' fetches
