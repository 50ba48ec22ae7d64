"""The data store on a real S3 API (moto's server): every `bt data` command, runs that read from
it (the same keys and result bytes as a local store), concurrent imports and the failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import SYMBOLS, bt_in, synth_daily

from backtest.data import Store
from backtest.data.objstore import Objects, ObjectStore, display_uri, object_key
from backtest.errors import DataError
from backtest.store.results import ResultStore


def _store(root: Path, uri: str) -> Store:
    store = Store(root, uri=uri)
    assert isinstance(store, ObjectStore)
    return store


def _fill(root: Path, uri: str) -> Store:
    store = _store(root, uri)
    for i, sym in enumerate(SYMBOLS):
        store.import_arrays(sym, *synth_daily(i))
    return store


def _one_line(code: int, out: str, err: str) -> str:
    assert code != 0, out + err
    assert "Traceback" not in out + err
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_data_commands_on_s3(s3env: str, tmp_path: Path, market: Path) -> None:
    root = tmp_path / "bt"
    csv = tmp_path / "ABC.csv"
    csv.write_text("date,open,high,low,close,volume\n2020-01-02,10,11,9,10.5,100\n2020-01-03,10.5,12,10,11,200\n"
                   "2021-01-04,11,12,10,11.5,300\n")
    code, out, err = bt_in(root, "--store", s3env, "data", "import", csv)
    assert code == 0, err
    code, out, err = bt_in(root, "--store", s3env, "data", "import", csv)  # the same again: nothing written
    assert code == 0 and "0 of 2" in out, out
    code, out, err = bt_in(root, "--store", s3env, "data", "ls")
    assert code == 0 and "ABC" in out and s3env in out.replace("\n", ""), out
    code, out, err = bt_in(root, "--store", s3env, "data", "show", "ABC")
    assert code == 0 and "2021-01-04" in out, err
    code, out, err = bt_in(root, "--store", s3env, "data", "verify")
    assert code == 0 and "all 2 partition files match" in out, out + err
    # the same bars as a local store: the same content hashes
    local = Store(tmp_path / "local", uri=None)
    local.import_files([csv])
    assert [p.sha256 for p in local.partitions("ABC")] == [p.sha256 for p in _store(root, s3env).partitions("ABC")]
    # another data root sees the same store
    code, out, err = bt_in(tmp_path / "other", "--store", s3env, "data", "ls", "--json")
    assert code == 0 and '"ABC"' in out
    code, out, err = bt_in(root, "--store", s3env, "data", "rm", "ABC", "--yes")
    assert code == 0, err
    assert _store(tmp_path / "other", s3env).symbols() == []
    bucket, prefix = s3env.removeprefix("s3://").split("/", 1)
    objects = Objects(s3env)
    assert not [n for n in objects.fs.get_file_info(_selector(f"{bucket}/{prefix}/bars"))
                if n.path.endswith(".parquet")]


def _selector(path: str):  # noqa: ANN202
    import pyarrow.fs as pafs

    return pafs.FileSelector(path, recursive=True, allow_not_found=True)


def test_a_run_reads_s3_with_the_keys_and_bytes_of_a_local_store(s3env: str, tmp_path: Path, market: Path,
                                                                  sma_path: Path) -> None:
    import shutil

    local = tmp_path / "local"
    shutil.copytree(market, local)
    remote = tmp_path / "remote"
    _fill(remote, s3env)
    args = ["run", sma_path, "--from", "2020", "--to", "2021", "--param", "fast=5,10", "--param", "slow=30",
            "--workers", "2", "--json"]
    code, out, err = bt_in(local, *args)
    assert code == 0, err
    code, out2, err = bt_in(remote, "--store", s3env, *args)
    assert code == 0, err
    a, b = ResultStore(local), ResultStore(remote)
    keys = sorted(a.keys())
    assert keys and keys == sorted(b.keys())
    assert all(a.read_bytes(k) == b.read_bytes(k) for k in keys)
    fetched = sorted(p.name for p in (remote / "cache" / "bars").glob("*.parquet"))
    assert fetched and all(len(n) == len("x" * 64 + ".parquet") for n in fetched)
    code, out, err = bt_in(remote, "--store", s3env, "verify", "latest")
    assert code == 0, out + err


def test_concurrent_imports_keep_both(s3env: str, tmp_path: Path) -> None:
    script = tmp_path / "imp.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from helpers import synth_daily
        from backtest.data import Store
        store = Store(Path(sys.argv[1]), uri={s3env!r})
        for k in range(3):
            store.import_arrays(sys.argv[2] + str(k), *synth_daily(int(sys.argv[3]) + k))
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"r{i}"), name, str(10 * i)], env=env,
                              stderr=subprocess.PIPE, text=True) for i, name in enumerate(["AA", "BB"])]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert _store(tmp_path / "check", s3env).symbols() == ["AA0", "AA1", "AA2", "BB0", "BB1", "BB2"]


def test_a_stale_commit_is_refused_in_one_line(s3env: str, tmp_path: Path) -> None:
    store = _fill(tmp_path / "a", s3env)
    objects = store.objects
    version, _, _ = objects.current()
    other = _store(tmp_path / "b", s3env)
    other.import_arrays("ZZZ", *synth_daily(9))  # someone else commits version + 1
    assert not store._propose(version, {})  # a proposal for the same version loses
    assert other.symbols() == sorted([*SYMBOLS, "ZZZ"])
    assert "changed by someone else" in str(store._conflict("this import"))


def test_a_damaged_object_is_found(s3env: str, s3server, tmp_path: Path, sma_path: Path) -> None:  # noqa: ANN001
    store = _fill(tmp_path / "a", s3env)
    p = store.partitions(SYMBOLS[0])[1]
    bucket, prefix = s3env.removeprefix("s3://").split("/", 1)
    good = Objects(s3env).get(object_key(p))
    s3server.client().put_object(Bucket=bucket, Key=f"{prefix}/{object_key(p)}", Body=good[:-40] + b"x" * 40)
    code, out, err = bt_in(tmp_path / "b", "--store", s3env, "data", "verify")
    assert code == 1 and object_key(p) in err, out + err
    code, out, err = bt_in(tmp_path / "c", "--store", s3env, "run", sma_path, "--symbols", SYMBOLS[0],
                           "--from", "2020", "--to", "2021", "--workers", "1")
    line = _one_line(code, out, err)
    assert "damaged" in line and f"{SYMBOLS[0]} bars of {p.year}" in line, line


def test_store_failures_are_one_line(s3env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3env.removeprefix("s3://").split("/")[0]
    line = _one_line(*bt_in(tmp_path, "--store", f"s3://no-such-{bucket}/x", "data", "ls"))
    assert "bucket" in line and "does not exist" in line
    monkeypatch.setenv("BT_S3_ENDPOINT", "http://127.0.0.1:9")
    line = _one_line(*bt_in(tmp_path, "--store", s3env, "data", "ls"))
    assert "cannot be reached" in line and "BT_S3_ENDPOINT" in line
    line = _one_line(*bt_in(tmp_path, "--store", "nope://x/y", "data", "ls"))
    assert "--store" in line


def _nothing_under(root: Path, *secrets: str) -> None:
    """No file under ``root`` holds any of ``secrets``."""
    files = [f for f in root.rglob("*") if f.is_file()]
    assert files
    for f in files:
        data = f.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f


def test_no_secret_is_shown_or_kept(s3env: str, s3server, tmp_path: Path, sma_path: Path,  # noqa: ANN001
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    uri = s3env.replace("s3://", "s3://testing:S3KR1T-VALUE@")  # credentials in the URI, as pyarrow reads them
    assert "S3KR1T" not in display_uri(uri) and "testing" not in display_uri(uri)
    assert "S3KR1T" not in display_uri(uri + "?secret_key=S3KR1T&region=x")
    root = tmp_path / "bt"
    _fill(root, uri)
    code, out, err = bt_in(root, "--store", uri, "data", "ls")
    assert code == 0 and "S3KR1T" not in out + err
    code, out, err = bt_in(root, "--store", uri, "run", sma_path, "--from", "2020", "--workers", "1")
    assert code == 0 and "S3KR1T" not in out + err, err
    _nothing_under(root, "S3KR1T")
    line = _one_line(*bt_in(root, "--store", uri + "?endpoint_override=http://127.0.0.1:9", "data", "ls"))
    assert "S3KR1T" not in line


def test_a_server_gone_during_a_run(tmp_path: Path, sma_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data a run needs is fetched before its workers start: a server that goes away during
    the run changes nothing; one gone before is one line, and what earlier runs stored is kept."""
    from s3server import S3Server

    server = S3Server("127.0.0.1")
    try:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        uri = f"s3://{server.bucket()}/team"
        root = tmp_path / "bt"
        _fill(root, uri)
        code, out, err = bt_in(root, "--store", uri, "run", sma_path, "--symbols", SYMBOLS[0], "--from", "2020",
                               "--workers", "1")
        assert code == 0, err
        kept = sorted(ResultStore(root).keys())
    finally:
        server.stop()
    line = _one_line(*bt_in(root, "--store", uri, "run", sma_path, "--from", "2020", "--workers", "1"))
    assert "cannot be reached" in line
    assert sorted(ResultStore(root).keys()) == kept and kept


def test_manifest_versions_name_objects_by_content(s3env: str, tmp_path: Path) -> None:
    store = _fill(tmp_path / "a", s3env)
    versions = store.objects.versions()
    assert [v for v, _ in versions] == list(range(1, len(SYMBOLS) + 1))
    p = store.partitions(SYMBOLS[0])[0]
    assert p.path == f"cache/bars/{p.sha256}.parquet"
    assert store.objects.size(object_key(p))
    with pytest.raises(DataError, match="unknown symbol"):
        store.partitions("NOPE")


# ---- a server that checks credentials and permissions (moto's IAM authentication on) -----------------

def _as(server, who: str, monkeypatch: pytest.MonkeyPatch, **changes: str) -> None:  # noqa: ANN001
    """This process's environment: the server's endpoint with the key pair ``who``."""
    for k, v in {**server.env(who), **changes}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("BT_STORE", raising=False)


def _stored(server, bucket: str) -> dict[str, str]:  # noqa: ANN001
    """Every object in ``bucket`` and its ETag (listed with the writer's keys)."""
    pages = server.client("writer").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def test_refused_credentials_are_one_line(s3auth, tmp_path: Path, sma_path: Path,  # noqa: ANN001
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3auth.bucket()
    uri = f"s3://{bucket}/team"
    _as(s3auth, "writer", monkeypatch)
    root = tmp_path / "bt"
    _fill(root, uri)
    stored = _stored(s3auth, bucket)
    wrong = s3auth.keys["wrong"]
    bad_secret = "not-the-writers-secret-" + wrong.secret_key[::-1]
    # a key the server does not know (bt run too: it fails before its workers get anything); the writer's
    # key with another secret (a signature that does not match)
    run = ["run", sma_path, "--from", "2020", "--to", "2021", "--workers", "1"]
    for who, changes, code_name, commands in [
            ("wrong", {}, "INVALID_ACCESS_KEY_ID", [["data", "ls"], run]),
            ("writer", {"AWS_SECRET_ACCESS_KEY": bad_secret}, "SIGNATURE_DOES_NOT_MATCH", [["data", "ls"]])]:
        _as(s3auth, who, monkeypatch, **changes)
        for args in commands:
            code, out, err = bt_in(root, "--store", uri, *args)
            line = _one_line(code, out, err)
            assert code == 2, line
            assert "refused the credentials" in line and code_name in line and "AWS_ACCESS_KEY_ID" in line, line
            assert display_uri(uri) in line and wrong.secret_key not in line and bad_secret not in line
    assert not list(ResultStore(root).keys())  # nothing computed
    assert _stored(s3auth, bucket) == stored
    _nothing_under(root, wrong.secret_key, bad_secret, s3auth.keys["writer"].secret_key)


def test_a_reader_reads_and_cannot_write(s3auth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    bucket = s3auth.bucket()
    uri = f"s3://{bucket}/team"
    csv = tmp_path / "ABC.csv"
    csv.write_text("date,open,high,low,close,volume\n2020-01-02,10,11,9,10.5,100\n2020-01-03,10.5,12,10,11,200\n")
    _as(s3auth, "writer", monkeypatch)
    code, out, err = bt_in(tmp_path / "w", "--store", uri, "data", "import", csv)
    assert code == 0, err
    stored = _stored(s3auth, bucket)
    assert stored
    root = tmp_path / "r"
    _as(s3auth, "reader", monkeypatch)
    code, out, err = bt_in(root, "--store", uri, "data", "ls")
    assert code == 0 and "ABC" in out, out + err
    code, out, err = bt_in(root, "--store", uri, "data", "show", "ABC")
    assert code == 0 and "2020-01-03" in out, out + err
    csv.write_text(csv.read_text() + "2021-01-04,11,12,10,11.5,300\n")  # a new year: a new partition to write
    code, out, err = bt_in(root, "--store", uri, "data", "import", csv)
    line = _one_line(code, out, err)
    assert code == 2 and "denied permission while writing bars/" in line and "s3:PutObject" in line, line
    code, out, err = bt_in(root, "--store", uri, "data", "rm", "ABC", "--yes")
    line = _one_line(code, out, err)
    assert code == 2 and "denied permission while writing bars/manifest/" in line, line
    assert _stored(s3auth, bucket) == stored  # nothing written, nothing deleted
    # a user whose policy allows nothing: denied at the first request
    _as(s3auth, "nobody", monkeypatch)
    code, out, err = bt_in(tmp_path / "n", "--store", uri, "data", "ls")
    line = _one_line(code, out, err)
    assert code == 2 and "denied permission while opening the bucket" in line and "s3:ListBucket" in line, line
    for r in (tmp_path / "w", root):
        _nothing_under(r, *(k.secret_key for k in s3auth.keys.values()))


def _hourly(seed: int, years: int = 3) -> tuple[np.ndarray, ...]:
    """Hourly bars around the clock from 2020 on: ~8 800 rows (~420 KB as a cached copy) a year."""
    rng = np.random.default_rng(seed)
    n = 24 * 366 * years
    ts = np.datetime64("2020-01-01", "ns").astype(np.int64) + np.arange(n, dtype=np.int64) * 3_600_000_000_000
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.003, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    return ts, open_, np.maximum(open_, close) * 1.001, np.minimum(open_, close) * 0.999, close, np.full(n, 100.0)


def test_a_run_keeps_what_it_fetched_whatever_the_cache_bound(s3env: str, tmp_path: Path, sma_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's partitions (9 of ~0.7 MB, Parquet and copy) are far over a 1 MB bars cache: the
    run must still read every one of them (nothing it fetched is evicted while it runs), and after
    it the cache goes back under its bound at the next copy kept."""
    store = _store(tmp_path / "up", s3env)
    for i, sym in enumerate(SYMBOLS):
        store.import_arrays(sym, *_hourly(i))
    monkeypatch.setenv("BT_BARS_CACHE_MB", "1")
    root = tmp_path / "root"
    args = ["--store", s3env, "run", sma_path, "--from", "2020", "--to", "2022", "--param", "fast=5,10",
            "--param", "slow=30", "--workers", "2", "--json"]
    code, out, err = bt_in(root, *args)
    assert code == 0, out + err
    got = json.loads(out.strip().splitlines()[-1])
    assert got["failed"] == 0 and got["computed"] == 6, got
    cache = root / "cache" / "bars"
    held = sum(p.stat().st_size for p in cache.iterdir() if p.suffix in (".parquet", ".bars"))
    assert held > 2 << 20  # the run kept its partitions while it ran, over the bound
    again = [a if a != "fast=5,10" else "fast=5,7" for a in args]  # a second run reading them again
    code, out, err = bt_in(root, *again)
    assert code == 0, out + err
    assert json.loads(out.strip().splitlines()[-1])["failed"] == 0
    # the runs were in this process, whose pins hold until it ends or drops them; then the next
    # copy kept brings the folder back under its bound
    from backtest.data import bars_cache

    assert list((cache / "pins").iterdir())
    bars_cache.release_pins()
    bars_cache.keep(cache, "0" * 64, *_columns_of_rows(10), 1 << 20)
    held = sum(p.stat().st_size for p in cache.iterdir() if p.suffix in (".parquet", ".bars"))
    assert held <= 1 << 20 and not list((cache / "pins").iterdir())


def _columns_of_rows(n: int):  # noqa: ANN202
    from backtest.data.partition import Columns

    x = np.ones(n)
    return Columns(np.arange(n, dtype=np.int64), x, x, x, x, x), 0, n


def test_the_s3_filesystem_keeps_every_option_of_its_uri(tmp_path: Path) -> None:
    """The S3 filesystem is rebuilt with the standard retry strategy (an unreachable endpoint is
    said to be one in ~2 s, not ~6 s); every option the URI gave stays as it was."""
    import pyarrow.fs as pafs

    from backtest.data.objstore import _patient_enough

    uri = "s3://AKEY:SKEY@bkt/x?endpoint_override=127.0.0.1:9&scheme=http&region=eu-west-3&allow_delayed_open=true"
    made, _ = pafs.FileSystem.from_uri(uri)
    rebuilt = _patient_enough(made)
    assert rebuilt is not made and isinstance(rebuilt, pafs.S3FileSystem)
    assert rebuilt.__reduce__()[1][0] == made.__reduce__()[1][0]
    assert rebuilt.region == "eu-west-3"
