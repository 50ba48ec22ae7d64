"""The result cache shared on a real S3 API (moto's server): two data roots that share it compute a
task once, a read-only user uploads nothing, damaged packs are never served, a failing cache never
fails a run, and ``bt cache push``/``pull`` move a run's results on purpose."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import bt_in, run_json, write_strategy

from backtest.data.objstore import Objects
from backtest.store.results import ResultStore

GRID = ["--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=20,40"]
TASKS = 12  # 3 symbols x 4 parameter sets


@pytest.fixture
def cache(s3env: str) -> str:
    """A fresh bucket's ``cache`` prefix (the environment reaches the test's S3 server)."""
    return s3env.rsplit("/", 1)[0] + "/cache"


def _flat(text: str) -> str:
    """``text`` with the console's line wrapping undone."""
    return " ".join(text.split())


def _copy(market: Path, dest: Path) -> Path:
    shutil.copytree(market, dest)
    return dest


def _packs(uri: str) -> dict[str, int]:
    return Objects(uri).sizes("packs")


def _bytes(root: Path) -> dict[str, bytes]:
    store = ResultStore(root)
    return {k: store.read_bytes(k) for k in store.keys()}


def test_two_data_roots_compute_each_task_once(cache: str, market: Path, tmp_path: Path, sma_path: Path) -> None:
    a, b = _copy(market, tmp_path / "a"), _copy(market, tmp_path / "b")
    first = run_json(a, sma_path, *GRID, "--remote-cache", cache)
    assert first["computed"] == TASKS
    assert first["remote_cache"]["uploaded"] >= 1 and first["remote_cache"]["warnings"] == []
    assert first["remote_cache"]["uri"] == cache
    assert sum(_packs(cache).values()) == first["remote_cache"]["uploaded_bytes"]
    code, out, _ = bt_in(b, "run", sma_path, *GRID, "--remote-cache", cache, "--dry-run", "--json")
    assert code == 0 and json.loads(out)["in_remote_cache"] == TASKS
    second = run_json(b, sma_path, *GRID, "--remote-cache", cache)
    assert second["computed"] == 0 and second["cached"] == TASKS
    assert second["remote_cache"]["fetched"] == TASKS and second["remote_cache"]["uploaded"] == 0
    assert _bytes(b) == _bytes(a)  # the very bits, checked against their digests as they were read
    code, out, err = bt_in(b, "verify", second["run_id"])
    assert code == 0 and "bit-for-bit identical" in out, out + err
    # one more parameter value: only its tasks are computed, and only they are uploaded
    packs = set(_packs(cache))
    third = run_json(b, sma_path, *GRID[:-1], "slow=20,40,60", "--remote-cache", cache)
    assert third["computed"] == 6 and third["cached"] == TASKS and third["remote_cache"]["fetched"] == 0
    added = set(_packs(cache)) - packs
    assert added and len(added) == third["remote_cache"]["uploaded"]
    new_keys = set(_bytes(b)) - set(_bytes(a))
    held = {k.hex() for name in added for k in _remote_index(cache, name)}
    assert held == new_keys


def _remote_index(uri: str, name: str) -> list[bytes]:
    from backtest.store.packs import INDEX_ROW, read_index

    data = Objects(uri).get(f"packs/{name}")
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bt-test-{name}"
    path.write_bytes(data)
    try:
        index = read_index(str(path)).index
    finally:
        path.unlink()
    return [index[i:i + 32] for i in range(0, len(index), INDEX_ROW)]


def test_read_only_fetches_and_uploads_nothing(cache: str, market: Path, tmp_path: Path, sma_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _copy(market, tmp_path / "a"), _copy(market, tmp_path / "b")
    got = run_json(a, sma_path, *GRID, "--remote-cache", cache, "--remote-cache-read-only")
    assert got["computed"] == TASKS and got["remote_cache"]["uploaded"] == 0 and got["remote_cache"]["read_only"]
    assert _packs(cache) == {}
    code, out, err = bt_in(a, "cache", "push", "latest", "--remote-cache", cache)  # a writer pushes it
    assert code == 0 and f"{TASKS} results" in out, out + err
    monkeypatch.setenv("BT_REMOTE_CACHE", cache)
    monkeypatch.setenv("BT_REMOTE_CACHE_READ_ONLY", "1")
    packs = _packs(cache)
    got = run_json(b, sma_path, "--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=20,40,60")
    assert got["remote_cache"]["read_only"] and got["remote_cache"]["fetched"] == TASKS
    assert got["computed"] == 6 and got["remote_cache"]["uploaded"] == 0
    assert _packs(cache) == packs
    code, out, err = bt_in(b, "cache", "push", "latest")
    assert code != 0 and "read-only" in err and "Traceback" not in err, out + err


def test_a_damaged_pack_is_never_served(cache: str, market: Path, tmp_path: Path, sma_path: Path) -> None:
    a, b = _copy(market, tmp_path / "a"), _copy(market, tmp_path / "b")
    run_json(a, sma_path, *GRID, "--remote-cache", cache)
    objects = Objects(cache)
    names = sorted(_packs(cache))
    assert len(names) >= 2
    # one pack damaged inside an entry (its index still checks), one with a damaged index
    entry = bytearray(objects.get(f"packs/{names[0]}"))
    entry[_middle_of_first_entry(bytes(entry))] ^= 0x55
    objects.put(f"packs/{names[0]}", bytes(entry))
    index = bytearray(objects.get(f"packs/{names[1]}"))
    index[-60] ^= 0x55
    objects.put(f"packs/{names[1]}", bytes(index))
    bad = {k.hex() for n in names[:1] for k in _index_of(bytes(entry))} | {k.hex() for k in _index_of(bytes(index))}
    code, out, err = bt_in(b, "run", sma_path, *GRID, "--remote-cache", cache, "--json")
    assert code == 0, out + err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["computed"] >= len(bad) and got["cached"] + got["computed"] == TASKS
    warnings = got["remote_cache"]["warnings"]
    assert any(names[0][:12] in w and "damaged" in w for w in warnings), warnings
    assert any(names[1][:12] in w for w in warnings), warnings
    assert _bytes(b) == _bytes(a)  # what was served and what was computed: the same bits
    store = ResultStore(b)
    assert not list(store.packs_dir.glob(".tmp-*")) and not list(store.packs_dir.glob(f"{names[0]}*"))


def _middle_of_first_entry(data: bytes) -> int:
    """The offset of a byte in the middle of the pack's first entry (by its index row), which the
    pack's own digest does not cover: only the entry's result digest does."""
    from backtest.store.packs import _FOOTER, _SPAN

    _, at, _, _ = _FOOTER.unpack(data[-_FOOTER.size:])
    offset, length = _SPAN.unpack_from(data, at + 32)
    return offset + length // 2


def _index_of(data: bytes) -> list[bytes]:
    from backtest.store.packs import _FOOTER, INDEX_ROW

    n, at, _, _ = _FOOTER.unpack(data[-_FOOTER.size:])
    index = data[at:at + n * INDEX_ROW]
    return [index[i:i + 32] for i in range(0, len(index), INDEX_ROW)]


def test_a_failing_cache_never_fails_a_run(cache: str, market: Path, tmp_path: Path, sma_path: Path) -> None:
    root = _copy(market, tmp_path / "a")
    missing = "s3://no-such-bucket-here/cache"
    code, out, err = bt_in(root, "run", sma_path, *GRID, "--remote-cache", missing)
    assert code == 0 and "12 computed" in _flat(out), out + err
    lines = [x for x in err.splitlines() if "remote cache" in x]
    assert len(lines) == 1 and "does not exist" in lines[0] and "computed here" in lines[0], err
    # unreachable: the same, in one line, and the results are kept
    code, out, err = bt_in(root, "run", sma_path, *GRID[:-1], "slow=20,40,60", "--json",
                           "--remote-cache", cache + "?endpoint_override=http://127.0.0.1:9")
    assert code == 0 and "Traceback" not in err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["computed"] == 6 and len(got["remote_cache"]["warnings"]) == 1
    assert "cannot be reached" in got["remote_cache"]["warnings"][0]
    assert len(ResultStore(root).keys()) == 18
    code, out, err = bt_in(root, "run", sma_path, *GRID, "--remote-cache", "bucket/cache")
    assert code == 2 and "s3://bucket/prefix" in err and len(err.strip().splitlines()) == 1, err


SLOW = """
import time
import numpy as np
from backtest.strategy import Strategy

class Slow(Strategy):
    n = 1
    grid = {"n": [1, 2, 3, 4, 5, 6]}

    def signals(self, bars):
        time.sleep(0.4)
        return np.where(np.arange(len(bars.close)) % (self.n + 1) == 0, 1.0, 0.0)
"""


def test_the_server_stopped_during_a_run(market: Path, tmp_path: Path) -> None:
    """The cache's server goes away after planning: the run completes and keeps every result, and
    says in one line that nothing was uploaded."""
    pytest.importorskip("moto.server")
    from s3server import S3Server

    server = S3Server("127.0.0.1")
    try:
        uri = f"s3://{server.bucket()}/cache"
        root = _copy(market, tmp_path / "a")
        strategy = write_strategy(tmp_path, SLOW, "slow.py")
        env = {**os.environ, **server.env(), "BT_TRACE": "1", "BT_REMOTE_CACHE": uri}
        proc = subprocess.Popen([sys.executable, "-m", "backtest", "--data", str(root), "run", str(strategy),
                                 "--from", "2020", "--to", "2021", "--workers", "2", "--json"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        deadline = time.monotonic() + 120
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "submitting" in line or time.monotonic() > deadline:
                break
        server.stop()
        out, rest = proc.communicate(timeout=180)
        err = "".join(seen) + rest
    finally:
        server.stop()
    assert proc.returncode == 0, out + err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["computed"] == 18 and got["remote_cache"]["uploaded"] == 0
    assert len(got["remote_cache"]["warnings"]) == 1 and "cannot be reached" in got["remote_cache"]["warnings"][0]
    assert len(ResultStore(root).keys()) == 18
    assert "Traceback" not in err


def test_push_and_pull_a_run(cache: str, market: Path, tmp_path: Path, sma_path: Path) -> None:
    from store_layout import as_files

    a, b = _copy(market, tmp_path / "a"), tmp_path / "b"
    first = run_json(a, sma_path, *GRID)
    as_files(a)  # a store made before packs: push packs its files first
    code, out, err = bt_in(a, "cache", "push", first["run_id"][:12], "--remote-cache", cache)
    assert code == 0 and f"pushed run {first['run_id']}: {TASKS} results" in _flat(out), out + err
    code, out, err = bt_in(a, "cache", "push", "latest", "--remote-cache", cache)
    assert code == 0 and "0 uploaded" in out and "1 already there" in _flat(out), out + err
    # a data root that never saw the run (not even its bars' catalog): pulled by id
    _copy(market, b)
    code, out, err = bt_in(b, "cache", "pull", first["run_id"], "--remote-cache", cache)
    assert code == 0 and f"{TASKS} results fetched" in out and "does not record" in _flat(out), out + err
    assert _bytes(b) == _bytes(a)
    again = run_json(b, sma_path, *GRID)  # no cache needed any more: everything is here
    assert again["computed"] == 0 and again["cached"] == TASKS
    code, out, err = bt_in(b, "cache", "pull", "latest", "--remote-cache", cache)
    assert code == 0 and f"0 results fetched, {TASKS} already here" in _flat(out), out + err
    code, out, err = bt_in(b, "cache", "pull", "nosuchrun", "--remote-cache", cache)
    assert code != 0 and "no such run" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = bt_in(b, "cache", "push", "latest")
    assert code == 2 and "--remote-cache" in err, err


def test_a_walk_forward_run_decides_its_folds_from_fetched_results(cache: str, market: Path, tmp_path: Path,
                                                                   sma_path: Path) -> None:
    """In-sample results fetched from the cache choose each fold's set as stored ones do: the
    second data root computes nothing and reports the same folds."""
    a, b = _copy(market, tmp_path / "a"), _copy(market, tmp_path / "b")
    wf = ["--from", "2019-06", "--to", "2021", "--param", "fast=5,10", "--param", "slow=20,40",
          "--walk-forward", "train=1y,test=6m", "--remote-cache", cache]
    first = run_json(a, sma_path, *wf)
    assert first["computed"] == first["tasks"] > TASKS
    second = run_json(b, sma_path, *wf)
    assert second["computed"] == 0 and second["cached"] == first["tasks"] == second["tasks"]
    assert second["remote_cache"]["fetched"] == first["tasks"]
    reports = [bt_in(r, "report", run["run_id"], "--format", "json")[1] for r, run in ((a, first), (b, second))]
    folds = [json.loads(r) for r in reports]
    assert folds[0] == folds[1] and len(folds[0]) == 3 * len({f["fold"] for f in folds[0]})


def test_no_secret_is_shown_or_kept(cache: str, market: Path, tmp_path: Path, sma_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials written into the cache's URI reach the server but no output and no file."""
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    uri = cache.replace("s3://", "s3://testing:S3KR1T-VALUE@")
    root = _copy(market, tmp_path / "a")
    code, out, err = bt_in(root, "run", sma_path, *GRID, "--remote-cache", uri, "--json")
    assert code == 0 and "S3KR1T" not in out + err, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["remote_cache"]["uploaded"] >= 1 and got["remote_cache"]["uri"] == cache
    code, out, err = bt_in(root, "cache", "push", "latest", "--remote-cache", uri)
    assert code == 0 and "S3KR1T" not in out + err, err
    bucket = cache.removeprefix("s3://").split("/", 1)[0]
    code, out, err = bt_in(root, "cache", "push", "latest", "--remote-cache", uri.replace(bucket, "no-such-bucket-here"))
    assert code == 2 and "S3KR1T" not in out + err and "does not exist" in err, err
    for f in root.rglob("*"):
        if f.is_file():
            assert b"S3KR1T" not in f.read_bytes(), f
    assert b"S3KR1T" not in Objects(uri).get(f"runs/{got['run_id']}.json")
