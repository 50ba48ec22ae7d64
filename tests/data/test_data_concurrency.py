"""Real processes: concurrent imports, a reader during imports, and imports killed mid-commit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from datahelpers import make_bars, ns, stored_files

from backtest.data import Store, read_bars
from backtest.errors import DataError

PRELUDE = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import numpy as np
    from backtest.data import Store

    def bars(n, start, seed, scale=1.0):
        rng = np.random.default_rng(seed)
        days = np.arange(np.datetime64(start, "D"), np.datetime64(start, "D") + n * 2 + 7)
        ts = days[np.is_busday(days)][:n].astype("datetime64[ns]").astype(np.int64)
        close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))), 2) * scale
        return ts, close, close + 1, close - 1, close, np.full(n, 100.0)

    store = Store(Path(sys.argv[1]))
""")


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(PRELUDE + textwrap.dedent(body))
    return path


def _run(*procs: subprocess.Popen) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        out.append((p.returncode, err.decode()))
    return out


def _start(script: Path, root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(root), *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)


def test_two_processes_importing_at_once_lose_nothing(tmp_path):
    root = tmp_path / "root"
    script = _script(tmp_path, "imp", """
        who = sys.argv[2]
        for i in range(6):  # six symbols of its own, and one year each of a shared symbol
            store.import_arrays(f"{who}{i}", *bars(60, "2020-01-01", i))
            year = 2010 + i * 2 + (who == "B")
            store.import_arrays("SHARED", *bars(200, f"{year}-01-01", year))  # 200 weekdays: one year
    """)
    results = _run(_start(script, root, "A"), _start(script, root, "B"))
    assert [rc for rc, _ in results] == [0, 0], results
    store = Store(root)
    assert store.symbols() == sorted([f"A{i}" for i in range(6)] + [f"B{i}" for i in range(6)] + ["SHARED"])
    assert [p.year for p in store.partitions("SHARED")] == list(range(2010, 2022))
    assert store.verify() == []


def test_a_reader_during_imports_sees_whole_versions_or_a_clear_error(tmp_path):
    root = tmp_path / "root"
    store = Store(root)
    base = make_bars(800, start="2018-01-01")
    args = (base["ts"], base["open"], base["high"], base["low"], base["close"], base["volume"])
    store.import_arrays("R", *args)
    np.save(tmp_path / "base.npy", np.stack([a.astype(np.float64) for a in args[1:]]))
    np.save(tmp_path / "ts.npy", base["ts"])
    writer = _script(tmp_path, "writer", f"""
        ts = np.load({str(tmp_path / "ts.npy")!r})
        o, h, l, c, v = np.load({str(tmp_path / "base.npy")!r})
        for k in range(24):
            f = 2.0 if k % 2 == 0 else 1.0  # alternate between two versions of every bar
            store.import_arrays("R", ts, o * f, h * f, l * f, c * f, v, replace=True)
    """)
    proc = _start(writer, root)
    seen, refused = set(), 0
    start, end = ns("2018-01-01"), ns("2021-12-31")
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            parts = store.resolve("R", start, end, 0)
            bars = read_bars("R", [(store.path(p), p.sha256) for p in parts], start, end, 0)
        except DataError as exc:
            assert "changed since this run was planned" in str(exc) or "is missing" in str(exc), exc
            refused += 1
            continue
        ratio = bars.close / base["close"]
        assert len(bars) == 800 and np.all(ratio == ratio[0]), "bars mixed two versions"
        seen.add(float(ratio[0]))
    assert _run(proc)[0][0] == 0
    assert seen <= {1.0, 2.0} and seen, (seen, refused)


@pytest.mark.parametrize("stage", ["writing", "renaming", "manifest"])
def test_a_killed_import_leaves_the_store_as_it_was(tmp_path, stage):
    root = tmp_path / "root"
    store = Store(root)
    src = make_bars(700, start="2018-01-01")  # 2018 .. 2020
    store.import_arrays("K", src["ts"], src["open"], src["high"], src["low"], src["close"], src["volume"])
    store.import_arrays("OTHER", src["ts"][:10], src["open"][:10], src["high"][:10], src["low"][:10],
                        src["close"][:10])
    before = {f: (root / "bars" / f).read_bytes() for f in stored_files(store)}
    killer = _script(tmp_path, "killer", """
        import backtest.data.manifest as manifest
        import backtest.data.store as st
        stage = sys.argv[2]
        calls = {"n": 0}
        if stage == "writing":      # while the new files are being written
            real_write = st.write_partition
            def write(*a, **k):
                calls["n"] += 1
                if calls["n"] == 2:
                    os._exit(9)
                return real_write(*a, **k)
            st.write_partition = write
        elif stage == "renaming":   # after one file was renamed into place, before the rest
            real_replace = os.replace
            def replace(a, b):
                if str(b).endswith(".parquet"):
                    calls["n"] += 1
                    if calls["n"] == 2:
                        os._exit(9)
                return real_replace(a, b)
            manifest.os.replace = replace
        else:                       # every file in place, the manifest not yet
            manifest.dump = lambda m: os._exit(9)
        ts, o, h, l, c, v = bars(900, "2018-01-01", 5, scale=3.0)  # changes 2018-2020, adds 2021
        store.import_arrays("K", ts, o, h, l, c, v, replace=True)
    """)
    [(rc, err)] = _run(_start(killer, root, stage))
    assert rc == 9, err
    assert (root / "bars" / ".journal.json").exists() == (stage != "writing")
    after_store = Store(root)
    assert [p.year for p in after_store.partitions("K")] == [2018, 2019, 2020]  # recovers on first look
    assert not (root / "bars" / ".journal.json").exists()
    assert not (root / "bars" / ".staging").exists()
    assert {f: (root / "bars" / f).read_bytes() for f in stored_files(after_store)} == before
    assert after_store.verify() == []
    np.testing.assert_array_equal(after_store.read("K").close, src["close"])
    # and the store works on: the same import now succeeds
    ts, o, h, lo, c, v = (src[k] for k in ("ts", "open", "high", "low", "close", "volume"))
    r = after_store.import_arrays("K", ts, o * 3, h * 3, lo * 3, c * 3, v, replace=True)
    assert [p.year for p in r.written] == [2018, 2019, 2020]
