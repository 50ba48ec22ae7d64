"""The content-addressed results store: one file per task, named by the task key.

A result file is made by the worker (on any host) and written whole by the coordinator::

    b"BTRES1" | u32 header length | canonical JSON header | float64 metrics | trades | sha256

The header holds the key, symbol, params, metric names, trade count and dtype, the codec of the
trades block and the environment versions (python, numpy, numba, bt) — nothing host- or
time-specific, so the same task gives the same bytes anywhere. The trailing sha256 covers all
that precedes it: a torn or damaged file is detected on read. Trades are stored raw, 62 bytes a
trade (``STORED_TRADE_DTYPE``: what can be derived exactly is derived on reading); equity curves
are not stored: they are re-derived on demand by re-running the task, which is deterministic (see
``bt verify``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backtest.errors import ResultError
from backtest.hashing import canonical_json
from backtest.store.fsutil import atomic_write

if TYPE_CHECKING:  # numpy is imported where trades are handled: storing and indexing need none
    import numpy as np

MAGIC = b"BTRES1"
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class ResultRecord:
    key: str
    symbol: str
    params: dict[str, Any]
    metrics: dict[str, float]
    trades: np.ndarray
    env: dict[str, str]
    #: a portfolio task's symbols: ``trades["symbol_index"]`` indexes them (() for one symbol)
    symbols: tuple[str, ...] = ()

    def trade_symbols(self) -> list[str]:
        """The symbol of each trade."""
        if not self.symbols or self.trades.dtype.names is None or "symbol_index" not in self.trades.dtype.names:
            return [self.symbol] * int(self.trades.shape[0])
        return [self.symbols[int(i)] for i in self.trades["symbol_index"]]


def environment() -> dict[str, str]:
    """The versions that decide a result's bits (the host name is recorded in the catalog instead)."""
    import platform

    import numba
    import numpy as np

    from backtest.version import ENGINE_VERSION, __version__

    return {
        # major.minor, as SSH hosts are matched: a patch release does not change a result's bits
        "python": ".".join(platform.python_version_tuple()[:2]),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "bt": __version__,
        "engine": ENGINE_VERSION,
        "machine": platform.machine(),
    }


def encode(
    key: str,
    symbol: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    trades: np.ndarray,
    env: dict[str, str],
    symbols: tuple[str, ...] = (),
) -> bytes:
    """The result file of one task (module docstring: the layout)."""
    return Encoder(symbol, env)(key, params, metrics, trades, symbols)


class Encoder:
    """``encode`` for the tasks of one symbol computed in one environment, as a worker makes them
    shard after shard: the header's parts that are the same for every task are encoded once. The
    header is canonical JSON (sorted keys, no spaces), i.e. its values' encodings joined in key
    order, which is how it is put together here; ``canonical_json(header)`` gives the same bytes."""

    def __init__(self, symbol: str, env: dict[str, str]) -> None:
        self._env = canonical_json(env)
        self._symbol = canonical_json(symbol)
        self._names: tuple[str, ...] = ()
        self._names_json = "[]"
        self._values = struct.Struct("<")

    def __call__(self, key: str, params: dict[str, Any], metrics: dict[str, float], trades: np.ndarray,
                 symbols: tuple[str, ...] = ()) -> bytes:
        names = tuple(metrics)
        if names != self._names:
            self._names, self._names_json = names, canonical_json(list(names))
            self._values = struct.Struct(f"<{len(names)}d")
        stored = stored_trades(trades)
        members = f'"symbols":{canonical_json(list(symbols))},' if symbols else ""
        # the header's keys in sorted order: env, key, metric_names, n_trades, params, symbol,
        # symbols (a portfolio's only), trade_dtype
        head = (
            f'{{"env":{self._env},"key":{canonical_json(key)},"metric_names":{self._names_json},'
            f'"n_trades":{int(stored.shape[0])},"params":{canonical_json(params)},"symbol":{self._symbol},'
            f'{members}"trade_dtype":{_dtype_json(stored.dtype)}}}'
        ).encode()
        payload = b"".join((MAGIC, _U32.pack(len(head)), head, self._values.pack(*metrics.values()),
                            stored.tobytes()))
        return payload + hashlib.sha256(payload).digest()


#: How a result file stores trades (``STORED_TRADE_DTYPE``): the engine's ``TRADE_DTYPE`` less
#: what reading derives exactly (``return`` = pnl / (size · entry_price), the kernel's own
#: expression) and less the bar indices (positions in the slice the task ran on, meaningless
#: outside it; ``bars`` keeps the holding period; ``mae``/``mfe``, derived from the bars the key
#: names, are computed again when shown) — 62 bytes a trade instead of 106.
_STORED_FIELDS = [
    ("entry_time", "<i8"), ("exit_time", "<i8"), ("side", "i1"), ("size", "<f8"), ("entry_price", "<f8"),
    ("exit_price", "<f8"), ("pnl", "<f8"), ("fees", "<f8"), ("bars", "<i4"), ("closed", "?"),
]
#: What reading a result file gives (``READ_TRADE_DTYPE``): the stored fields with ``return``
#: back (and ``bars`` as int64, as in ``TRADE_DTYPE``).
_READ_FIELDS = [
    ("entry_time", "<i8"), ("exit_time", "<i8"), ("side", "i1"), ("size", "<f8"), ("entry_price", "<f8"),
    ("exit_price", "<f8"), ("pnl", "<f8"), ("return", "<f8"), ("fees", "<f8"), ("bars", "<i8"), ("closed", "?"),
    ("mae", "<f8"), ("mfe", "<f8"),
]


#: A portfolio task's trades also keep the index of their symbol in the header's ``symbols``.
_SYMBOL_FIELD = ("symbol_index", "<i4")


@functools.cache
def _trade_dtypes(portfolio: bool = False) -> tuple[np.dtype, np.dtype]:
    """(stored, read) trade dtypes, for one symbol's tasks or (``portfolio``) a universe's."""
    import numpy as np

    extra = [_SYMBOL_FIELD] if portfolio else []
    return np.dtype(_STORED_FIELDS + extra), np.dtype(_READ_FIELDS + extra)


def __getattr__(name: str) -> Any:
    """``STORED_TRADE_DTYPE`` and ``READ_TRADE_DTYPE``, made on first use: this module is also
    what planning and recording use (``ResultStore``), which need no numpy."""
    if name == "STORED_TRADE_DTYPE":
        return _trade_dtypes()[0]
    if name == "READ_TRADE_DTYPE":
        return _trade_dtypes()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def stored_trades(trades: np.ndarray) -> np.ndarray:
    """``trades`` (the engine's records, or records read back) as ``STORED_TRADE_DTYPE``."""
    import numpy as np

    portfolio = trades.dtype.names is not None and "symbol_index" in trades.dtype.names
    stored_dtype = _trade_dtypes(portfolio)[0]
    if trades.dtype == stored_dtype:
        return np.ascontiguousarray(trades)
    out = np.empty(trades.shape[0], stored_dtype)
    if not portfolio and _from_engine(trades.dtype):
        # the engine made them, so numba is loaded: its kernel copies them in a tenth of the time
        from backtest.engine.orders import stored_records_nb

        if not stored_records_nb(trades, out):
            raise ResultError("a trade held for more than 2**31 bars cannot be stored")
        return out
    for name in stored_dtype.names or ():
        out[name] = trades[name]
    if out.shape[0] and int(trades["bars"].max()) > np.iinfo(np.int32).max:  # pragma: no cover - 2e9 bars
        raise ResultError("a trade held for more than 2**31 bars cannot be stored")
    return out


def _from_engine(dtype: np.dtype) -> bool:
    from backtest.engine.records import TRADE_DTYPE

    return dtype == TRADE_DTYPE


def _read_trades(stored: np.ndarray) -> np.ndarray:
    import numpy as np

    names = stored.dtype.names or ()
    if "return" in names:
        return stored.copy()  # a file written before trades were stored compactly: as it was
    _, read_dtype = _trade_dtypes("symbol_index" in names)
    out = np.empty(stored.shape[0], read_dtype)
    for name in read_dtype.names or ():
        if name in names:
            out[name] = stored[name]
        elif name != "return":  # excursions: not stored (``report.trades_rows`` computes them again)
            out[name] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        out["return"] = stored["pnl"] / (stored["size"] * stored["entry_price"])
    return out


@functools.lru_cache(maxsize=8)
def _dtype_json(dtype: np.dtype) -> str:
    """The header's ``trade_dtype``: [[field name, numpy type string], ...] as canonical JSON."""
    return canonical_json([[name, dtype[name].str] for name in dtype.names or ()])


def decode(data: bytes, where: str = "result", key: str | None = None) -> ResultRecord:
    """A result file's record, after checking its checksum and (with ``key``) that it is the
    result of that task: a file of another task (a copy, a swap) is refused like a damaged one."""
    import numpy as np

    if len(data) < len(MAGIC) + 4 + 32 or not data.startswith(MAGIC):
        raise ResultError(f"{where} is not a bt result file")
    payload, digest = data[:-32], data[-32:]
    if hashlib.sha256(payload).digest() != digest:
        raise ResultError(f"{where} is damaged (checksum mismatch)")
    (hlen,) = _U32.unpack_from(payload, len(MAGIC))
    pos = len(MAGIC) + 4
    header = json.loads(payload[pos : pos + hlen])
    if key is not None and header.get("key") != key:
        raise ResultError(f"{where} holds the result of another task ({str(header.get('key'))[:12]})")
    pos += hlen
    names = header["metric_names"]
    values = np.frombuffer(payload, dtype="<f8", count=len(names), offset=pos)
    pos += 8 * len(names)
    dtype = np.dtype([(n, s) for n, s in header["trade_dtype"]])
    trades = _read_trades(np.frombuffer(payload, dtype=dtype, count=header["n_trades"], offset=pos))
    return ResultRecord(
        key=header["key"],
        symbol=header["symbol"],
        params=header["params"],
        metrics={n: float(v) for n, v in zip(names, values, strict=True)},
        trades=trades,
        env=header["env"],
        symbols=tuple(header.get("symbols", ())),
    )


def decode_metrics(data: bytes) -> tuple[dict[str, Any], dict[str, float]]:
    """Header and metrics only (no trades copy, no checksum): for fast catalog indexing."""
    (hlen,) = _U32.unpack_from(data, len(MAGIC))
    pos = len(MAGIC) + 4
    header = json.loads(data[pos : pos + hlen])
    names = header["metric_names"]
    values = struct.unpack_from(f"<{len(names)}d", data, pos + hlen)
    return header, dict(zip(names, values, strict=True))


_TYPE_SIZE = re.compile(r"[<>|=]?[A-Za-z](\d+)$")


def _field(header: bytes, name: bytes, end: bytes) -> bytes | None:
    """The JSON text of a top-level field of a result file's canonical-JSON header, up to and
    including ``end`` (bytes.find: a planning pass checks thousands of heads)."""
    at = header.find(b'"' + name + b'":')
    if at < 0:
        return None
    at += len(name) + 3
    stop = header.find(end, at)
    return None if stop < 0 else header[at : stop + len(end)]


@functools.lru_cache(maxsize=64)
def _fixed_size(metric_names: bytes, trade_dtype: bytes) -> tuple[int, int]:
    """(bytes of the metrics block, bytes of one trade) for a header's metric names and trade
    dtype (their JSON text: every result of a job shares them, so this is computed once)."""
    types = [t for _, t in json.loads(trade_dtype)]
    sizes = [_TYPE_SIZE.match(t) for t in types]
    if not all(sizes):
        raise ValueError(f"a trade field of an unknown type: {types}")
    return 8 * len(json.loads(metric_names)), sum(int(m.group(1)) for m in sizes if m)


def check_head(path: str, key: str) -> str | None:
    """What is wrong with the result file at ``path`` as the result of ``key``, judged from its
    head and size alone (no checksum: a run's planning checks every cached result this way, ~20 µs
    a file), or None. Catches a file of another task and a torn or resized one; a file damaged in
    place is caught by the checksum when it is read (``ResultStore.read``)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            head = os.read(fd, 4096)
            size = os.fstat(fd).st_size
            if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC):
                return "is not a bt result file"
            (hlen,) = _U32.unpack_from(head, len(MAGIC))
            start = len(MAGIC) + 4
            if start + hlen > len(head):
                head += os.read(fd, start + hlen - len(head))
        finally:
            os.close(fd)
        header = head[start : start + hlen]
        if b'"key":"' + key.encode("ascii") + b'"' not in header:
            found = re.search(rb'"key":"([0-9a-f]{12})', header)
            return f"holds the result of another task ({found.group(1).decode() if found else '?'})"
        n_trades, names, dtype = (_field(header, b"n_trades", b","), _field(header, b"metric_names", b"]"),
                                  _field(header, b"trade_dtype", b"]]"))
        if n_trades is None or names is None or dtype is None:
            return "has a header bt cannot read"
        metrics, row = _fixed_size(names, dtype)
        expected = start + hlen + metrics + row * int(n_trades[:-1]) + 32
    except (OSError, ValueError, TypeError, struct.error, UnicodeEncodeError) as exc:
        return f"cannot be read ({exc})"
    if size != expected:
        return f"is damaged ({size} bytes where its header implies {expected})"
    return None


def _same_bytes(path: str, data: bytes) -> bool:
    """Whether the file at ``path`` holds exactly ``data`` (os-level calls: this runs once a task)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        size = len(data)
        return os.fstat(fd).st_size == size and os.read(fd, size + 1) == data
    except OSError:
        return False
    finally:
        os.close(fd)


def difference(path: str, key: str, new: bytes) -> str | None:
    """What differs between the intact result stored at ``path`` and ``new`` (None when there is
    no such file, or it is damaged: replacing it is a repair, not a difference)."""
    try:
        with open(path, "rb") as fh:
            old = decode(fh.read(), path, key)
    except (OSError, ResultError, ValueError, KeyError, struct.error):
        return None
    now = decode(new, "new result", key)
    said = [f"{k} {old.env.get(k)} → {now.env.get(k)}" for k in sorted(set(old.env) | set(now.env))
            if old.env.get(k) != now.env.get(k)]
    if len(old.trades) != len(now.trades):
        said.append(f"trades {len(old.trades)} → {len(now.trades)}")
    said += [f"{m} {old.metrics[m]:.6g} → {now.metrics[m]:.6g}" for m in old.metrics
             if m in now.metrics and old.metrics[m] != now.metrics[m]
             and not (old.metrics[m] != old.metrics[m] and now.metrics[m] != now.metrics[m])][:4]
    if not said:
        said.append("trade details")
    return ", ".join(said)


class ResultStore:
    """``<root>/results/<key[:2]>/<key>.res``; a file that exists is complete."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "results"
        self._dir = str(self.dir)

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.res"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def existing(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` already stored (one directory listing per prefix)."""
        by_prefix: dict[str, list[str]] = {}
        for k in keys:
            by_prefix.setdefault(k[:2], []).append(k)
        found: set[str] = set()
        for prefix, ks in by_prefix.items():
            try:
                names = set(os.listdir(self.dir / prefix))
            except FileNotFoundError:
                continue
            found.update(k for k in ks if f"{k}.res" in names)
        return found

    def write(self, key: str, data: bytes) -> str | None:
        """Store ``data`` as the result of ``key``. A stored file with exactly these bytes is left
        as it is (results are deterministic, so ``--force`` usually recomputes identical bytes, and
        comparing is much cheaper than replacing a file); a different or damaged one is replaced.
        Returns what differed when the replaced file was an intact result of the same key: the
        same key made different bits, so something the result depends on is not in its key."""
        sub = os.path.join(self._dir, key[:2])
        path = os.path.join(sub, key + ".res")
        if _same_bytes(path, data):
            return None
        differs = difference(path, key, data)
        try:
            atomic_write(path, data)
        except FileNotFoundError:
            os.makedirs(sub, exist_ok=True)
            atomic_write(path, data)
        return differs

    def stage(self, key: str, data: bytes, folder: Path) -> tuple[str | None, bool]:
        """``write``'s work for a sandboxed worker, which may not write the store: compare with the
        stored file as ``write`` does, and put a file that must replace it (or is new) into
        ``folder`` as ``<key>.res`` for the coordinator to move into place (``accept_staged``).
        Returns (what differed, whether a file was staged)."""
        path = os.path.join(self._dir, key[:2], key + ".res")
        if _same_bytes(path, data):
            return None, False
        differs = difference(path, key, data)
        atomic_write(os.path.join(folder, key + ".res"), data)
        return differs, True

    def accept_staged(self, folder: Path, keys: Sequence[str]) -> None:
        """Move the files a sandboxed worker staged in ``folder`` for ``keys`` into the store; only
        those keys (the ones of the shard it was sent), whatever else the folder holds."""
        for key in keys:
            target = self.path(key)
            try:
                os.replace(folder / f"{key}.res", target)
            except FileNotFoundError:
                if not (folder / f"{key}.res").exists():
                    continue  # not staged: the stored file had these bytes already
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(folder / f"{key}.res", target)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ResultError(f"no stored result for task {key[:12]}; rerun the job to compute it") from exc

    def read(self, key: str) -> ResultRecord:
        """The result of ``key``, checked; a file that fails the check is set aside (the next run
        of its job recomputes it) and raises ``ResultError`` saying so."""
        try:
            return decode(self.read_bytes(key), where=f"result {key[:12]}", key=key)
        except ResultError as exc:
            if not self.has(key):
                raise
            self.set_aside(key)
            raise ResultError(f"{exc}; it was set aside, and running the job again recomputes it") from None

    def set_aside(self, key: str) -> Path:
        """Move a damaged file out of the store's sight (``<key>.res.damaged``, kept for a look)."""
        path = self.path(key)
        aside = path.with_name(f"{key}.res.damaged")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            pass
        return aside

    def intact(self, keys: Iterable[str]) -> tuple[set[str], dict[str, str]]:
        """The subset of ``keys`` stored whole (``check_head``), and what is wrong with each other
        stored file (which is set aside, so that it is computed again)."""
        good: set[str] = set()
        bad: dict[str, str] = {}
        base = self._dir
        for key in self.existing(keys):
            problem = check_head(f"{base}/{key[:2]}/{key}.res", key)
            if problem is None:
                good.add(key)
            else:
                bad[key] = problem
                self.set_aside(key)
        return good, bad

    def keys(self) -> list[str]:
        """Every stored key. A temporary file (``.tmp-*``, left by a writer killed mid-write, e.g.
        a worker stopped by Ctrl+C) is not a result and not listed."""
        return [p.name[:-4] for p in self._files("*.res") if not p.name.startswith(".")]

    def leftovers(self, older_than: float) -> list[Path]:
        """Temporary files (``.tmp-*``) last written before ``older_than`` (a Unix time): what
        writers killed mid-write left behind. A live writer holds one for a moment only."""
        out: list[Path] = []
        for p in self._files(".tmp-*"):
            try:
                if p.stat().st_mtime < older_than:
                    out.append(p)
            except FileNotFoundError:  # renamed or removed meanwhile
                pass
        return out

    def damaged_files(self) -> list[Path]:
        """Damaged result files set aside (``<key>.res.damaged``), kept for a post-mortem."""
        return self._files("*.res.damaged")

    def _files(self, pattern: str) -> list[Path]:
        """The store's files named like ``pattern``, in order, over every key-prefix folder."""
        if not self.dir.is_dir():
            return []
        return [p for sub in sorted(self.dir.iterdir()) if sub.is_dir() for p in sorted(sub.glob(pattern))]

    def remove(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass
