"""Result files: deterministic encoding, integrity, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backtest.errors import ResultError
from backtest.store.results import (
    MAGIC,
    Encoder,
    ResultStore,
    decode,
    decode_metrics,
    encode,
    result_file,
    stored_trades,
)
from backtest.worker.protocol import FrameWriter, ProtocolError, read_frame
from backtest.worker.protocol import encode as frame

ENV = {"python": "3.11", "numpy": "2", "numba": "0.6", "bt": "0.1", "engine": "1", "machine": "x86_64"}


def engine_trades() -> np.ndarray:
    """Real trades from the engine: SMA crosses on a synthetic series, with costs."""
    from helpers import synth_daily

    from backtest.engine import Bars, SimSettings, run_grid
    from backtest.strategy import load_strategy

    ts, o, h, lo, c, v = synth_daily(0)
    bars = Bars("AAA", ts, o, h, lo, c, v)
    cls = load_strategy(Path(__file__).resolve().parents[2] / "strategies" / "sma_cross.py")
    out = run_grid(cls, bars, [{"fast": 5, "slow": 20, "short": True}], SimSettings(commission=0.001, fee=1.0))[0]
    assert len(out.trades) > 10
    return out.trades


def sample(key: str = "ab" + "0" * 62, trades: np.ndarray | None = None) -> bytes:
    trades = engine_trades() if trades is None else trades
    return encode(key, "AAA", {"fast": 5}, {"sharpe": 1.25, "trades": 2.0, "sortino": float("nan")}, trades, ENV)


def test_encode_is_deterministic_and_round_trips():
    a, b = sample(), sample()
    assert a == b
    rec = decode(a)
    assert rec.symbol == "AAA" and rec.params == {"fast": 5}
    assert rec.metrics["sharpe"] == 1.25 and np.isnan(rec.metrics["sortino"])
    header, metrics = decode_metrics(a)
    assert header["n_trades"] == len(rec.trades) and metrics["trades"] == 2.0
    assert encode(rec.key, rec.symbol, rec.params, rec.metrics, rec.trades, rec.env) == a  # read, written again


def test_engine_trades_are_stored_as_a_field_by_field_copy_would_store_them():
    """``stored_trades`` copies the engine's records with a kernel; numpy's field-by-field copy is
    the reference (contiguous records and a strided view of them)."""
    from backtest.store.results import STORED_TRADE_DTYPE

    trades = engine_trades()
    for tr in (trades, trades[::3]):
        want = np.empty(len(tr), STORED_TRADE_DTYPE)
        for name in STORED_TRADE_DTYPE.names:
            want[name] = tr[name]
        got = stored_trades(tr)
        assert got.dtype == STORED_TRADE_DTYPE and got.tobytes() == want.tobytes()
    too_long = trades.copy()
    too_long["bars"][1] = 2**31
    with pytest.raises(ResultError, match="more than 2"):
        stored_trades(too_long)


def _reference_encode(key, symbol, params, metrics, trades, env) -> bytes:
    """The file layout as the module docstring states it, made the plain way."""
    import hashlib
    import struct

    from backtest.hashing import canonical_json

    stored = stored_trades(trades)
    head = canonical_json({"key": key, "symbol": symbol, "params": params, "metric_names": list(metrics),
                           "n_trades": len(stored), "env": env,
                           "trade_dtype": [[n, stored.dtype[n].str] for n in stored.dtype.names]}).encode()
    payload = b"".join((MAGIC, struct.pack(">I", len(head)), head,
                        np.array(list(metrics.values()), "<f8").tobytes(), stored.tobytes()))
    return payload + hashlib.sha256(payload).digest()


def test_the_shard_encoder_gives_the_canonical_bytes():
    """``Encoder`` joins pre-encoded header parts; the bytes must be those of the canonical header,
    whatever the params (unicode, nesting, booleans, floats) and however the metrics change."""
    trades = engine_trades()
    enc = Encoder("ÄÖ/x", ENV)
    cases = [
        ({"fast": 5, "slow": 20.5, "short": True, "name": "é\"q"}, {"sharpe": 1.25, "trades": 2.0}, trades),
        ({"b": [1, 2], "a": {"z": None}}, {"sortino": float("nan"), "sharpe": float("inf")}, trades[:0]),
        ({}, {"total_return": -0.5}, trades[:3]),
    ]
    for i, (params, metrics, tr) in enumerate(cases):
        key = f"{i:02d}" + "f" * 62
        got = enc(key, params, metrics, tr)
        assert got == _reference_encode(key, "ÄÖ/x", params, metrics, tr, ENV)
        assert got == encode(key, "ÄÖ/x", params, metrics, tr, ENV)
        assert decode(got).params == params


def test_trades_are_stored_compactly_and_read_back_bit_for_bit():
    from backtest.store.results import READ_TRADE_DTYPE, STORED_TRADE_DTYPE

    trades = engine_trades()
    data = sample(trades=trades)
    assert STORED_TRADE_DTYPE.itemsize == 62 and trades.dtype.itemsize == 106
    assert len(data) < len(sample(trades=trades[:0])) + 63 * len(trades)
    back = decode(data).trades
    assert back.dtype == READ_TRADE_DTYPE
    for name in READ_TRADE_DTYPE.names or ():  # `return` is derived, and equal to the kernel's bits
        assert back[name].tobytes() == trades[name].astype(READ_TRADE_DTYPE[name]).tobytes(), name


def test_files_with_the_earlier_trade_layout_still_read(tmp_path):
    """Files written before trades were stored compactly (engine 1) carry the full records."""
    import hashlib
    import json
    import struct

    from backtest.hashing import canonical_json
    from backtest.store.results import MAGIC

    trades = engine_trades()
    header = {"key": "ab" + "0" * 62, "symbol": "AAA", "params": {}, "metric_names": ["sharpe"],
              "n_trades": len(trades), "trade_dtype": [[n, trades.dtype[n].str] for n in trades.dtype.names or ()],
              "env": ENV}
    head = canonical_json(header).encode()
    payload = MAGIC + struct.pack(">I", len(head)) + head + np.array([0.5]).tobytes() + trades.tobytes()
    rec = decode(payload + hashlib.sha256(payload).digest())
    assert rec.trades.dtype == trades.dtype and rec.trades.tobytes() == trades.tobytes()
    assert json.loads(head)["n_trades"] == len(rec.trades)


def test_damage_is_detected(tmp_path):
    data = bytearray(sample())
    data[40] ^= 1
    with pytest.raises(ResultError, match="damaged"):
        decode(bytes(data))
    with pytest.raises(ResultError, match="not a bt result"):
        decode(b"garbage")


def test_store_write_read_existing(tmp_path):
    store = ResultStore(tmp_path)
    key = "ab" + "1" * 62
    assert store.existing([key]) == set()
    store.write(key, sample(key))
    assert store.existing([key, "cd" + "2" * 62]) == {key}
    assert store.read(key).key == key and store.read_bytes(key) == sample(key)
    assert store.keys() == [key]
    assert not [p for p in (tmp_path / "results").rglob(".tmp-*")]
    # what a writer killed mid-write leaves behind is not a result
    (store.packs_dir / ".tmp-123-456-7.pack").write_bytes(b"BTPACK1\n torn")
    assert ResultStore(tmp_path).keys() == [key]
    with pytest.raises(ResultError, match="no stored result"):
        store.read("ff" * 32)


def test_store_keeps_one_pack_of_identical_bytes_and_serves_the_newest_of_different_ones(tmp_path):
    store = ResultStore(tmp_path)
    key = "ab" + "3" * 62
    good = sample(key)
    store.write(key, good)
    packs = sorted(store.packs_dir.iterdir())
    assert store.write(key, good) is None  # the same bytes: no second pack
    assert sorted(store.packs_dir.iterdir()) == packs
    other = encode(key, "AAA", {"fast": 5}, {"sharpe": 0.75, "trades": 2.0, "sortino": float("nan")},
                   engine_trades(), ENV)
    assert store.write(key, other) == "sharpe 1.25 → 0.75"  # the same key, other bits: said
    assert ResultStore(tmp_path).read_bytes(key) == other


def test_frames_round_trip_and_torn_frames_are_errors(tmp_path):
    import io

    buf = io.BytesIO()
    w = FrameWriter(buf)
    w.send({"t": "result", "key": "k"}, b"\x00\x01")
    w.send({"t": "hb"})
    buf.seek(0)
    assert read_frame(buf) == ({"t": "result", "key": "k"}, b"\x00\x01")
    assert read_frame(buf) == ({"t": "hb"}, b"")
    assert read_frame(buf) is None
    torn = io.BytesIO(frame({"t": "hb"}, b"xyz")[:-1])
    with pytest.raises(ProtocolError, match="middle of a frame"):
        read_frame(torn)
    with pytest.raises(ProtocolError):
        read_frame(io.BytesIO(b"\xff\xff\xff\xff\x00\x00\x00\x00"))


def test_parameter_sets_are_written_as_canonical_json_writes_them() -> None:
    """Result headers hold a task's parameters as canonical JSON, made by a faster writer for flat
    sets: its text must be canonical JSON's, byte for byte, whatever the values."""
    import math
    import random

    from backtest.hashing import canonical_json, canonical_params

    rng = random.Random(7)
    values = [0, -1, 10**20, 2.5, -0.0, 1e-310, 1e300, 0.1 + 0.2, math.pi, "a", "é\n\"", "", True, False, None,
              [1, 2], {"x": 1}, (3, 4)]
    names = ["fast", "slow", "a b", "é", "Z", "_x", "stop_loss"]
    for _ in range(3000):
        params = {n: rng.choice(values) for n in rng.sample(names, rng.randint(0, len(names)))}
        assert canonical_params(params) == canonical_json(params), params
    for bad in (float("nan"), float("inf"), object()):
        with pytest.raises((ValueError, TypeError)):
            canonical_params({"x": 1, "y": bad})


def test_an_engine_output_encodes_to_the_bytes_of_its_metrics_dict() -> None:
    """A grid's outputs keep the kernel's metric array and the worker stores its bytes without
    making the metrics dict: the parts must be those the dict gives, byte for byte, for one-symbol
    and benchmark-compared outputs alike; the dict, once made, is the output's metrics."""
    from helpers import synth_daily

    from backtest.engine import Bars, SimSettings, run_grid
    from backtest.engine.records import METRIC_NAMES
    from backtest.strategy import load_strategy

    ts, o, h, lo, c, v = synth_daily(0)
    bars = Bars("AAA", ts, o, h, lo, c, v)
    bench = Bars("BBB", *synth_daily(1))
    cls = load_strategy(Path(__file__).resolve().parents[2] / "strategies" / "sma_cross.py")
    grid = [{"fast": f, "slow": s, "short": True} for f in (3, 5, 8) for s in (20, 40)]
    for kw in ({}, {"benchmark": bench}):
        outs = run_grid(cls, bars, grid, SimSettings(commission=0.001, fee=1.0), **kw)
        for i, (p, out) in enumerate(zip(grid, outs, strict=True)):
            fast = Encoder("AAA", ENV).output_parts(f"{i:064x}", p, out)
            assert out.values is None or len(out.values) == len(METRIC_NAMES)
            assert fast == Encoder("AAA", ENV).parts(f"{i:064x}", p, out.metrics, out.trades)
            assert result_file(fast) == Encoder("AAA", ENV)(f"{i:064x}", p, out.metrics, out.trades)  # hosts' files
            assert out.values is None and list(out.metrics)[:len(METRIC_NAMES)] == list(METRIC_NAMES)
            out.metrics["sharpe"] = 1.5  # the dict is the metrics from now on
            assert out.metric_block()[1] == Encoder("AAA", ENV).parts("k", p, out.metrics, out.trades)[4]
