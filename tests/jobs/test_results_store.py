"""Result files: deterministic encoding, integrity, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from backtest.errors import ResultError
from backtest.protocol import FrameWriter, ProtocolError, read_frame
from backtest.protocol import encode as frame
from backtest.results import ResultStore, decode, decode_metrics, encode

DT = np.dtype([("entry_time", "<i8"), ("pnl", "<f8")])
ENV = {"python": "3.11", "numpy": "2", "numba": "0.6", "bt": "0.1", "engine": "1", "machine": "x86_64"}


def sample(key: str = "ab" + "0" * 62) -> bytes:
    trades = np.array([(1, 2.5), (3, -1.0)], dtype=DT)
    return encode(key, "AAA", {"fast": 5}, {"sharpe": 1.25, "trades": 2.0, "sortino": float("nan")}, trades, ENV)


def test_encode_is_deterministic_and_round_trips():
    a, b = sample(), sample()
    assert a == b
    rec = decode(a)
    assert rec.symbol == "AAA" and rec.params == {"fast": 5}
    assert rec.metrics["sharpe"] == 1.25 and np.isnan(rec.metrics["sortino"])
    assert rec.trades.tolist() == [(1, 2.5), (3, -1.0)]
    header, metrics = decode_metrics(a)
    assert header["n_trades"] == 2 and metrics["trades"] == 2.0


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
    assert store.read(key).key == key
    assert store.keys() == [key]
    assert not [p for p in (tmp_path / "results").rglob(".tmp-*")]
    with pytest.raises(ResultError, match="no stored result"):
        store.read("ff" * 32)


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
