"""The worker's framed protocol over a byte stream (stdin/stdout locally, an SSH channel remotely).

A frame is ``>II`` (header length, body length), a JSON header (an object with a ``t`` type
field) and an opaque binary body (a result file's bytes, or empty). JSON, not pickle: a
coordinator must never unpickle what a remote host sends.

coordinator → worker: ``strategy`` {hash, source, filename, name}; ``shard`` {shard: spec}; ``ping`` (liveness, every few
seconds); ``stop``.
worker → coordinator: ``hello`` {pid, cores, env}; ``hb``; ``result`` {shard, key} + body (the
result file); ``results`` {shard, keys, n_trades, metrics} + body (from a worker started with
``--results``, which stored those files itself: ``keys`` their keys joined in one string, 64 hex
digits each (one JSON string, not thousands); the body their metrics as float64 in native byte
order, one row per key, one column per metric name); ``task_error`` {shard, key, error, details}; ``log``
{shard, text}; ``shard_done`` {shard, seconds}; ``shard_error`` {shard, error, details} (the
whole shard could not run, e.g. its data is missing).
"""

from __future__ import annotations

import json
import struct
import threading
from typing import IO, Any

_HEAD = struct.Struct(">II")
MAX_HEADER = 64 * 1024 * 1024
MAX_BODY = 1024 * 1024 * 1024


class ProtocolError(Exception):
    """The stream ended mid-frame or carried something that is not a frame."""


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    return encode_json(json.dumps(header, separators=(",", ":"), allow_nan=False), body)


def encode_json(header: str, body: bytes = b"") -> bytes:
    """A frame of a header already written as JSON text."""
    head = header.encode("utf-8")
    return _HEAD.pack(len(head), len(body)) + head + body


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    chunks = []
    left = n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def read_frame(stream: IO[bytes]) -> tuple[dict[str, Any], bytes] | None:
    """Read one frame; None at a clean end of stream; ProtocolError on a torn or bad frame."""
    first = stream.read(_HEAD.size)
    if not first:
        return None
    try:
        if len(first) < _HEAD.size:
            first += _read_exact(stream, _HEAD.size - len(first))
        hlen, blen = _HEAD.unpack(first)
        if hlen > MAX_HEADER or blen > MAX_BODY:
            raise ProtocolError(f"frame too large ({hlen}, {blen}): the stream is not a bt worker")
        header = json.loads(_read_exact(stream, hlen))
        body = _read_exact(stream, blen) if blen else b""
    except EOFError as exc:
        raise ProtocolError("stream ended in the middle of a frame") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"bad frame header: {exc}") from exc
    if not isinstance(header, dict) or "t" not in header:
        raise ProtocolError("frame header has no type")
    return header, body


class FrameWriter:
    """Thread-safe frame writer (the heartbeat thread and the main loop share one stream)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        data = encode(header, body)
        with self._lock:
            self._stream.write(data)
            self._stream.flush()
