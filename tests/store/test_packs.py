"""Pack files: a task's result comes back from its pack as the exact bytes of its result file,
checked; a pack that is damaged, torn or foreign is never served."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from backtest.engine.records import TRADE_DTYPE
from backtest.errors import ResultError
from backtest.executors.local import _RawKeys
from backtest.store import packs
from backtest.store.packs import PackWriter, read_index, split
from backtest.store.results import Encoder, ResultStore, encode

ENV = {"python": "3.11", "numpy": "2", "numba": "0.6", "bt": "0.1", "engine": "5", "machine": "x86_64"}


def trades(n: int, portfolio: bool = False) -> np.ndarray:
    t = np.zeros(n, dtype=TRADE_DTYPE)
    t["entry_time"] = np.arange(n) * 10
    t["exit_time"] = np.arange(n) * 10 + 5
    t["side"] = 1
    t["size"] = 2.5
    t["entry_price"] = 100.0 + np.arange(n)
    t["exit_price"] = 101.0 + np.arange(n)
    t["pnl"] = 2.5
    t["bars"] = 5
    t["closed"] = True
    if not portfolio:
        return t
    out = np.zeros(n, dtype=[(name, t.dtype[name]) for name in t.dtype.names or ()] + [("symbol_index", "<i4")])
    for name in t.dtype.names or ():
        out[name] = t[name]
    out["symbol_index"] = np.arange(n) % 2
    return out


def results(n: int = 20) -> dict[str, bytes]:
    """Result files of ``n`` tasks: one symbol's and a portfolio's, with and without trades,
    parameters with text, NaN and infinity among the metrics."""
    enc = Encoder("AAA", ENV)
    out = {}
    for i in range(n):
        key = f"{i:02x}" + "ab" * 31
        metrics = {"sharpe": 0.1 * i, "sortino": float("nan"), "omega": float("inf")}
        params = {"fast": i, "label": f"é-{i}", "short": bool(i % 2)}
        if i % 3 == 2:  # a portfolio's result: its members in the header, a symbol index per trade
            out[key] = encode(key, "UNIV", params, metrics, trades(i % 4, True), ENV, ("AAA", "BBB"))
        else:
            out[key] = enc(key, params, metrics, trades(i % 4))
    return out


def packed(files: dict[str, bytes]) -> PackWriter:
    pack = PackWriter()
    for data in files.values():
        assert pack.add_file(data)
    return pack


def stored(root: Path) -> tuple[ResultStore, dict[str, bytes]]:
    """A store holding one pack of ``results()``, and those results."""
    store, files = ResultStore(root), results()
    store.write_pack(packed(files))
    return store, files


def test_a_pack_gives_back_every_result_file_byte_for_byte(tmp_path: Path) -> None:
    files = results()
    name, _ = packed(files).write(tmp_path)
    read = read_index(str(tmp_path / f"{name}.pack"))
    assert sorted(read.keys()) == sorted(files) and len(read.variants) == 2
    for key, data in files.items():
        assert read.entry(read.find(bytes.fromhex(key))) == data
    assert read.find(bytes.fromhex("ff" * 32)) == -1
    # named by what it holds: the same results make the same name, another result another one
    again = packed(files)
    assert again.encode()[0] == name
    again.add_file(encode("ee" * 32, "AAA", {}, {"sharpe": 1.0}, trades(1), ENV))
    assert again.encode()[0] != name


def test_a_large_pack_s_index_is_the_one_made_row_by_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # keys that sort differently as bytes than as their first or last bytes, some ending in zeros
    enc = Encoder("AAA", ENV)
    files = {}
    for i in range(150):
        key = bytes([i % 7, 255 - i, *([0] * 29), i % 2]).hex()
        files[key] = enc(key, {"fast": i}, {"sharpe": 0.1 * i}, trades(i % 3))
    pack = packed(files)
    name, pieces = pack.encode()
    monkeypatch.setattr(packs, "VECTOR_INDEX", 10**9)  # every row made in Python
    assert pack.encode() == (name, pieces)
    read = read_index(str(tmp_path / f"{pack.write(tmp_path)[0]}.pack"))
    assert read.keys() == sorted(files)
    assert all(read.entry(read.find(bytes.fromhex(k))) == files[k] for k in files)


def test_a_header_that_is_not_canonical_is_not_packed() -> None:
    data = results(1)["00" + "ab" * 31]
    loose = data.replace(b'"fast":0', b'"fast": 0')  # a space: another header, still valid JSON
    assert split(data) is not None and split(loose) is None
    assert not PackWriter().add_file(loose)


@pytest.mark.parametrize("cut", ["torn", "index", "footer", "garbage"])
def test_a_damaged_or_torn_pack_is_set_aside_whole(tmp_path: Path, cut: str) -> None:
    store, files = stored(tmp_path)
    path = next(store.packs_dir.glob("*.pack"))
    data = bytearray(path.read_bytes())
    if cut == "torn":
        data = data[: len(data) // 2]
    elif cut == "index":
        data[-60] ^= 0x40
    elif cut == "footer":
        data[-3] ^= 0x01
    else:
        data = bytearray(os.urandom(len(data)))
    path.write_bytes(bytes(data))
    fresh = ResultStore(tmp_path)
    assert fresh.existing(files) == set() and fresh.keys() == []
    assert path.with_name(path.name + ".damaged").exists() and not path.exists()
    with pytest.raises(ResultError, match="no stored result"):
        fresh.read_bytes(next(iter(files)))


def test_a_damaged_entry_is_set_aside_and_the_rest_served(tmp_path: Path) -> None:
    store, files = stored(tmp_path)
    victim = sorted(files)[3]
    path = next(store.packs_dir.glob("*.pack"))
    read = read_index(str(path))
    offset, length = read.span(read.find(bytes.fromhex(victim)))
    raw = bytearray(path.read_bytes())
    raw[offset + length - 40] ^= 0x01  # a bit of its metrics or trades
    path.write_bytes(bytes(raw))
    with pytest.raises(ResultError, match=f"result {victim[:12]} is damaged in its pack"):
        store.read(victim)
    assert victim not in store.existing(files) and len(store.existing(files)) == len(files) - 1
    assert all(store.read_bytes(k) == files[k] for k in files if k != victim)
    # delete() writes the pack again without the damaged entry (and the keys it is asked to drop)
    gone = sorted(files)[:2]
    store.delete(gone)
    left = ResultStore(tmp_path)
    assert sorted(left.keys()) == sorted(k for k in files if k != victim and k not in gone)
    assert not list(left.packs_dir.glob("*.bad")) and len(list(left.packs_dir.glob("*.pack"))) == 1
    left.delete(left.keys())
    assert list(left.packs_dir.iterdir()) == []


def test_a_staged_pack_with_a_key_of_another_shard_is_refused(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    staging = tmp_path / "staging"
    files = results(4)
    pack = packed(files)
    name, _ = pack.write(staging)
    # checked against the shard's pending hex keys, as the local executor does
    pending = {k: k for k in sorted(files)[:3]}
    with pytest.raises(ResultError, match="tasks its shard did not have"):
        store.accept_pack(staging, name, _RawKeys(pending))
    assert store.keys() == [] and not (staging / f"{name}.pack").exists()
    name, _ = pack.write(staging)
    store.accept_pack(staging, name, _RawKeys({k: k for k in [*files, "ff" * 32]}))
    assert sorted(store.keys()) == sorted(files)
    assert "ff" * 32 not in _RawKeys(pending) and bytes.fromhex("ff" * 32) not in _RawKeys(pending)


def test_the_newest_pack_serves_a_key_and_a_snapshot_keeps_the_old_one(tmp_path: Path) -> None:
    key = "0a" * 32
    old = encode(key, "AAA", {"n": 1}, {"sharpe": 1.0}, trades(2), ENV)
    new = encode(key, "AAA", {"n": 1}, {"sharpe": 2.0}, trades(2), ENV)
    store = ResultStore(tmp_path)
    store.write(key, old)
    before = ResultStore(tmp_path, snapshot=True)
    assert before.read_bytes(key) == old
    os.utime(next(store.packs_dir.glob("*.pack")), (1, 1))  # older on disk, whatever the clock's resolution
    assert store.write(key, new) == "sharpe 1 → 2"
    assert store.read_bytes(key) == new and ResultStore(tmp_path).read_bytes(key) == new
    assert before.stored_bytes(key) == old


def test_many_lookups_find_the_same_entries_as_a_few(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import backtest.store.results as results_module

    files = results(30)
    store = ResultStore(tmp_path)
    for i, chunk in enumerate((list(files.items())[:12], list(files.items())[10:])):  # two packs, overlapping
        pack = packed(dict(chunk))
        store.write_pack(pack, compare=False)
        os.utime(store.packs_dir / f"{pack.encode()[0]}.pack", (100 + i, 100 + i))
    damaged = sorted(files)[20]
    store.set_aside(damaged)
    monkeypatch.setattr(results_module, "FIND_MAP", 5)
    mapped = ResultStore(tmp_path)
    assert all(mapped.read_bytes(k) == files[k] for k in files if k != damaged)  # past FIND_MAP: the map
    assert mapped._map is not None and mapped._find(damaged) is None


def test_many_keys_are_found_in_packs_as_a_few_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MANY_KEYS keys, packs are searched with NumPy: the same answer, an entry set aside
    as damaged and keys that merely share a stored key's first 8 bytes included."""
    import backtest.store.results as results_module

    files = results(30)
    store = ResultStore(tmp_path)
    for chunk in (list(files.items())[:12], list(files.items())[10:]):  # two packs, overlapping
        store.write_pack(packed(dict(chunk)), compare=False)
    damaged = sorted(files)[20]
    ResultStore(tmp_path).set_aside(damaged)
    near = [k[:16] + "0" * 48 for k in sorted(files)[:5]]  # a stored key's first 8 bytes, not its key
    asked = [*files, *near, "ee" * 32]
    few = ResultStore(tmp_path).existing(asked)
    monkeypatch.setattr(results_module, "MANY_KEYS", 0)
    many = ResultStore(tmp_path).existing(asked)
    assert many == few == set(files) - {damaged}


def test_raw_keys_are_found_in_packs_as_hex_keys_are(tmp_path: Path) -> None:
    """``intact_raw`` (a large job's keys as raw bytes) answers as ``intact``, key by key in order:
    two overlapping packs, an entry set aside as damaged, keys not stored, and keys that merely
    share a stored key's first 8 bytes (what the search sorts by)."""
    files = results(30)
    store = ResultStore(tmp_path)
    for chunk in (list(files.items())[:12], list(files.items())[10:]):
        store.write_pack(packed(dict(chunk)), compare=False)
    damaged = sorted(files)[20]
    ResultStore(tmp_path).set_aside(damaged)
    near = [k[:16] + "0" * 48 for k in sorted(files)[:5]]
    for asked in ([*files, "ee" * 32, "01" * 32], [*near, *files, "ee" * 32]):
        mask, bad = ResultStore(tmp_path).intact_raw(bytes.fromhex("".join(asked)))
        assert mask.dtype == bool and len(mask) == len(asked) and bad == {}
        assert {k for k, m in zip(asked, mask, strict=True) if m} == ResultStore(tmp_path).intact(asked)[0]
        assert {k for k, m in zip(asked, mask, strict=True) if m} == set(files) - {damaged}
    assert not ResultStore(tmp_path / "empty").intact_raw(bytes.fromhex("ab" * 32))[0].any()
    # a store of single files (made before packs): each judged by its head, a torn one set aside
    from store_layout import as_files

    kept = as_files(tmp_path)
    torn = ResultStore(tmp_path).path(kept[3])
    torn.write_bytes(torn.read_bytes()[:-1])
    asked = [*files, "ee" * 32]
    mask, bad = ResultStore(tmp_path).intact_raw(bytes.fromhex("".join(asked)))
    assert {k for k, m in zip(asked, mask, strict=True) if m} == set(kept) - {kept[3]} and set(bad) == {kept[3]}


def test_a_pack_being_written_is_not_read_nor_set_aside(tmp_path: Path) -> None:
    """A writer's temporary file ends in ``.pack`` too: a reader listing the folder meanwhile
    must leave it alone (setting it aside would take it from under the writer's rename)."""
    store, files = stored(tmp_path)
    half = store.packs_dir / ".tmp-123-456-7.pack"
    half.write_bytes(next(store.packs_dir.glob("*.pack")).read_bytes()[:100])
    fresh = ResultStore(tmp_path)
    assert sorted(fresh.keys()) == sorted(files) and half.exists()
    assert fresh.damaged_files() == [] and fresh.delete([]) == 0 and half.exists()


def test_a_stored_result_s_digest_is_its_file_s_last_32_bytes(tmp_path: Path) -> None:
    from store_layout import as_files

    store, files = stored(tmp_path)
    assert all(store.digest(k) == data[-32:] for k, data in files.items())
    as_files(tmp_path)
    assert all(ResultStore(tmp_path).digest(k) == data[-32:] for k, data in files.items())
    assert store.digest("ff" * 32) is None
