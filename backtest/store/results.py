"""The content-addressed results store: every task's result found, checked and served by its key.

A task's result file (the unit a result is served, compared and checked as) is::

    b"BTRES1" | u32 header length | canonical JSON header | float64 metrics | trades | sha256

The header holds the key, symbol, params, metric names, trade count and dtype, the codec of the
trades block and the environment versions (python, numpy, numba, bt) — nothing host- or
time-specific, so the same task gives the same bytes anywhere. The trailing sha256 covers all
that precedes it: a torn or damaged file is detected on read. Trades are stored raw, 62 bytes a
trade (``STORED_TRADE_DTYPE``: what can be derived exactly is derived on reading); equity curves
are not stored: they are re-derived on demand by re-running the task, which is deterministic (see
``bt verify``).

The store keeps these files in packs, the results of a batch of a shard in one file
(``store.packs``: each task's entry gives back its result file's exact bytes, checked against its
sha256), so that files and disk grow with shards, not tasks. Stores made before packs keep one
file a task (``<key[:2]>/<key>.res``); both are read, and ``bt gc`` packs such files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import struct
import threading
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backtest.errors import ResultError
from backtest.hashing import canonical_json, canonical_params
from backtest.store.packs import Variant, payload

if TYPE_CHECKING:  # numpy is imported where trades are handled: storing and indexing need none
    import numpy as np

    from backtest.engine.records import TaskOutput
    from backtest.store.packs import Pack

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
        self._dtype: Any = None  # the last trades dtype seen, and the variant of one-symbol tasks with it
        self._variant: Variant = ("", "", "", "", "")

    @property
    def names(self) -> tuple[str, ...]:
        """The metric names of the last result encoded."""
        return self._names

    def parts(self, key: str, params: dict[str, Any], metrics: dict[str, float], trades: np.ndarray,
              symbols: tuple[str, ...] = ()) -> tuple[Variant, str, int, str, bytes, bytes]:
        """A result's parts as a pack keeps them (``store.packs``): (variant, key, trade count,
        params JSON, metrics block, trades block)."""
        names = tuple(metrics)
        return self.block_parts(key, params, names, struct.pack(f"<{len(names)}d", *metrics.values()), trades,
                                symbols)

    def output_parts(self, key: str, params: dict[str, Any], out: TaskOutput) -> tuple[Variant, str, int, str,
                                                                                           bytes, bytes]:
        """``parts`` of an engine's output, its metrics taken as the kernel left them."""
        names, block = out.metric_block()
        return self.block_parts(key, params, names, block, out.trades, out.symbols)

    def block_parts(self, key: str, params: dict[str, Any], names: tuple[str, ...], block: bytes, trades: np.ndarray,
                    symbols: tuple[str, ...] = ()) -> tuple[Variant, str, int, str, bytes, bytes]:
        """``parts`` with the metrics as their ``names`` and little-endian float64 ``block``."""
        stored = stored_trades(trades)
        if names is not self._names:
            if names != self._names:
                self._names_json = canonical_json(list(names))
                self._dtype = None  # the variant is made again below
            self._names = names
        if stored.dtype is not self._dtype:
            self._dtype = stored.dtype
            self._variant = (self._env, self._names_json, self._symbol, "", _dtype_json(stored.dtype))
        variant = self._variant
        if symbols:
            variant = (*variant[:3], f'"symbols":{canonical_json(list(symbols))},', variant[4])
        return variant, key, int(stored.shape[0]), canonical_params(params), block, stored.tobytes()

    def __call__(self, key: str, params: dict[str, Any], metrics: dict[str, float], trades: np.ndarray,
                 symbols: tuple[str, ...] = ()) -> bytes:
        return result_file(self.parts(key, params, metrics, trades, symbols))


def result_file(parts: tuple[Variant, str, int, str, bytes, bytes]) -> bytes:
    """The result file of ``parts`` (``Encoder.parts``): its payload and that payload's sha256."""
    body = payload(*parts)
    return body + hashlib.sha256(body).digest()


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
    fast = _ENGINE_FAST
    if fast and trades.dtype is fast[0]:  # the engine's records, as every task of a grid has them
        engine_dtype, stored_dtype, empty, copy = fast
        out: np.ndarray = empty(trades.shape[0], stored_dtype)
        if not copy(trades, out):
            raise ResultError("a trade held for more than 2**31 bars cannot be stored")
        return out
    import numpy as np

    dtype = trades.dtype
    if any(dtype is seen for seen in _ENGINE_DTYPES):  # (comparing structured dtypes costs ~1 µs)
        portfolio, engine = False, True
    else:
        portfolio = dtype.names is not None and "symbol_index" in dtype.names
        engine = not portfolio and _from_engine(dtype)
        if engine and len(_ENGINE_DTYPES) < 8:
            _ENGINE_DTYPES.append(dtype)
    stored_dtype = _trade_dtypes(portfolio)[0]
    if not engine and dtype == stored_dtype:
        return np.ascontiguousarray(trades)
    out = np.empty(trades.shape[0], stored_dtype)
    if engine:
        # the engine made them, so numba is loaded: its kernel copies them in a tenth of the time
        from backtest.engine.orders import stored_records_nb

        _ENGINE_FAST[:] = (dtype, stored_dtype, np.empty, stored_records_nb)
        if not stored_records_nb(trades, out):
            raise ResultError("a trade held for more than 2**31 bars cannot be stored")
        return out
    for name in stored_dtype.names or ():
        out[name] = trades[name]
    if out.shape[0] and int(trades["bars"].max()) > np.iinfo(np.int32).max:  # pragma: no cover - 2e9 bars
        raise ResultError("a trade held for more than 2**31 bars cannot be stored")
    return out


#: dtype objects of trades seen to equal the engine's ``TRADE_DTYPE`` (each compiled kernel makes its
#: records with a dtype object of its own)
_ENGINE_DTYPES: list[Any] = []
#: the last of them, with what copying its records needs (the stored dtype, ``np.empty``, the
#: kernel): a grid's tasks come from one kernel, so theirs is checked first, by identity (~1 µs saved)
_ENGINE_FAST: list[Any] = []


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


def difference(old_bytes: bytes | None, key: str, new: bytes) -> str | None:
    """What differs between the intact result ``old_bytes`` and ``new`` (None when there is no
    old result, or it is damaged: replacing it is a repair, not a difference)."""
    if old_bytes is None:
        return None
    try:
        old = decode(old_bytes, "stored result", key)
    except (ResultError, ValueError, KeyError, struct.error):
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


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


#: Lookups by key after which a store maps every key a pack holds (``ResultStore._find``).
FIND_MAP = 64


#: key sets from which ``ResultStore`` looks keys up in packs with NumPy (``_packed_many``)
MANY_KEYS = 50_000
#: packs a store keeps open for reading
OPEN_PACKS = 32


class ResultStore:
    """The results of ``<root>/results``: packs (``packs/<name>.pack``, ``store.packs``), which
    workers and the coordinator write, and single files (``<key[:2]>/<key>.res``), which stores
    made before packs hold. A task is found by its key alone in either; where a key is in both, or
    in several packs (``--force`` computes again), the newest pack's entry is served."""

    def __init__(self, root: Path, snapshot: bool = False) -> None:
        self.snapshot = snapshot  # the packs as first read, never read again (``packs``)
        self.dir = Path(root) / "results"
        self._dir = str(self.dir)
        self.packs_dir = self.dir / "packs"
        self._packs: list[Pack] | None = None  # newest first
        self._all: set[bytes] | None = None  # every key a pack serves, once (``existing``)
        self._stamp = -1  # the packs folder's mtime when they were read
        self._map: dict[bytes, tuple[Pack, int]] | None = None  # every key's entry (``_find``)
        self._finds = 0
        self._fds: dict[str, int] = {}  # open packs (``_fd``)
        self._fd_lock = threading.Lock()

    # where results are ----------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        """Where the single file of ``key`` is, or would be (stores made before packs)."""
        return self.dir / key[:2] / f"{key}.res"

    def refresh(self) -> None:
        """Forget the packs read so far (others were written since)."""
        self._packs = self._all = self._map = None

    def packs(self) -> list[Pack]:
        """Every whole pack, newest first, less the entries found damaged (``<name>.bad``); a pack
        whose index is damaged is set aside (``<name>.pack.damaged``). Read again when the packs
        folder changed since."""
        try:
            stamp = os.stat(self.packs_dir).st_mtime_ns  # a pack or a damage list added changes it
        except FileNotFoundError:
            stamp = 0
        if stamp != self._stamp and not (self.snapshot and self._packs is not None):
            self._packs = self._all = self._map = None
            self._stamp = stamp
        if self._packs is None:
            from backtest.store.packs import load

            try:
                with os.scandir(self.packs_dir) as entries:
                    # (a ``.tmp-*`` file is a pack being written: not one yet)
                    names = [e for e in entries if e.name.endswith(".pack") and not e.name.startswith(".")]
            except FileNotFoundError:
                names = []
            dated = []
            for e in names:
                try:
                    dated.append((e.stat().st_mtime_ns, e.name, e.path))
                except FileNotFoundError:  # deleted meanwhile (bt gc)
                    pass
            dated.sort(reverse=True)
            packs, bad = load([path for _, _, path in dated])
            for path, _ in bad:
                try:
                    os.replace(path, path + ".damaged")
                except FileNotFoundError:
                    pass
            for pack in packs:
                pack.dropped = frozenset(self._bad_keys(pack.path))
            self._packs = [p for p in packs if len(p)]
        return self._packs

    @staticmethod
    def _bad_keys(pack_path: str) -> set[bytes]:
        try:
            with open(pack_path[:-5] + ".bad") as fh:
                return {bytes.fromhex(line.strip()) for line in fh if line.strip()}
        except (OSError, ValueError):
            return set()

    def _find(self, key: str, packs: list[Pack] | None = None) -> tuple[Pack, int] | None:
        """(pack, row) of ``key``'s newest pack entry, or None. A few lookups search each pack's
        index; from the ``FIND_MAP``-th on (``bt verify``, reading a run), one map of every key.
        ``packs``: ``self.packs()`` as just read (else it is read again, which looks at the folder)."""
        raw = bytes.fromhex(key)
        packs = self.packs() if packs is None else packs
        if self._map is None:
            self._finds += 1
            if self._finds < FIND_MAP or len(packs) < 2:
                for pack in packs:
                    row = pack.find(raw)
                    if row >= 0:
                        return pack, row
                return None
            self._map = {}
            for pack in reversed(packs):  # the newest last: its entries win
                self._map.update((k, (pack, row)) for row, k in pack.rows())
        return self._map.get(raw)

    def _pack_keys(self) -> set[bytes]:
        """Every key a pack serves (raw bytes)."""
        packs = self.packs()
        if self._all is None:
            self._all = set()
            for pack in packs:
                self._all.update(pack.raw_keys())
        return self._all

    def _loose(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` stored as single files (one directory listing per prefix)."""
        by_prefix: dict[str, list[str]] = {}
        for k in keys:
            by_prefix.setdefault(k[:2], []).append(k)
        found: set[str] = set()
        if not by_prefix or not self.dir.is_dir():
            return found
        for prefix, ks in by_prefix.items():
            try:
                names = set(os.listdir(os.path.join(self._dir, prefix)))
            except (FileNotFoundError, NotADirectoryError):
                continue
            found.update(k for k in ks if f"{k}.res" in names)
        return found

    def has(self, key: str) -> bool:
        return self._find(key) is not None or self.path(key).is_file()

    def existing(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` already stored."""
        loose, packed = self._stored(keys)
        return loose | packed

    def _stored(self, keys: Iterable[str]) -> tuple[set[str], set[str]]:
        """The subsets of ``keys`` stored as single files and in packs."""
        keys = list(keys)
        loose = self._loose(keys) if self._has_loose() else set()
        if len(keys) > MANY_KEYS and self._all is None:
            return loose, self._packed_many(keys)
        stored = self._pack_keys()
        return loose, {k for k in keys if bytes.fromhex(k) in stored} if stored else set()

    def _packed_many(self, keys: list[str]) -> set[str]:
        """The subset of ``keys`` (many) that packs serve (``_packed_mask``)."""
        import numpy as np

        found = self._packed_mask(bytes.fromhex("".join(keys)))
        if found.all():
            return set(keys)
        return {keys[i] for i in np.flatnonzero(found)}

    def _packed_mask(self, raw: bytes) -> Any:
        """Whether packs serve each of the keys ``raw`` holds (32 bytes each, joined): a NumPy mask
        in their order, found over the packs' indexes as they are read (a set of every packed key,
        then a lookup a key, cost 1.5 s for a million). Each key's first 8 bytes, as a number in
        the bytes' order, are looked up among the packed keys' sorted first 8 bytes (each pack's
        index is sorted already: a stable sort merges them), and a key is found only if all its
        32 bytes are those of the packed key there."""
        import numpy as np

        n = len(raw) // 32
        packs = [p for p in self.packs() if len(p)]
        if not packs or not n:
            return np.zeros(n, dtype=bool)
        rows = np.dtype([("key", "V32"), ("offset", "<u8"), ("length", "<u4")])
        parts = []
        for pack in packs:
            packed = np.frombuffer(pack.index, dtype=rows)["key"]
            if pack.dropped:  # entries listed as damaged (rare): not served
                packed = packed[np.fromiter((k.tobytes() not in pack.dropped for k in packed), bool, len(packed))]
            parts.append(np.ascontiguousarray(packed))
        have = np.concatenate(parts)
        order = np.argsort(have.view(">u8")[::4].astype(np.uint64), kind="stable")
        first = have.view(">u8")[::4][order].astype(np.uint64)
        have = have.view("<u8").reshape(-1, 4)
        wanted = np.frombuffer(raw, dtype="<u8").reshape(-1, 4)
        lead = np.frombuffer(raw, dtype=">u8")[::4].astype(np.uint64)
        asked = np.argsort(lead)  # looked up in order: a search of sorted values is faster
        at = np.empty(n, dtype=np.intp)
        at[asked] = np.minimum(np.searchsorted(first, lead[asked]), len(first) - 1)
        return (have[order[at]] == wanted).all(axis=1)

    def intact_raw(self, raw: bytes) -> tuple[Any, dict[str, str]]:
        """``intact`` of many keys given raw (32 bytes each, joined, as ``plan.TaskTable`` holds
        them): whether each is stored whole (a NumPy mask in their order), and what is wrong with
        each other stored result (set aside). Packs are searched with no hex text made
        (``_packed_mask``)."""
        import numpy as np

        if self._has_loose():  # single files: judged one by one, by their hex names
            keys = [raw[i:i + 32].hex() for i in range(0, len(raw), 32)]
            good, bad = self.intact(keys)
            return np.fromiter((k in good for k in keys), bool, len(keys)), bad
        return self._packed_mask(raw), {}

    def _has_loose(self) -> bool:
        """Whether the store has single-file results (key-prefix folders) at all."""
        try:
            with os.scandir(self._dir) as entries:
                return any(len(e.name) == 2 and e.is_dir() for e in entries)
        except FileNotFoundError:
            return False

    # writing ---------------------------------------------------------------------------------------
    def write(self, key: str, data: bytes) -> str | None:
        """Store ``data`` as the result of ``key`` in a pack of its own (``write_pack`` for many);
        returns what differed from an intact result stored under the same key (see ``write_pack``)."""
        from backtest.store.packs import PackWriter

        pack = PackWriter()
        if not pack.add_file(data):
            raise ResultError(f"the result of {key[:12]} is not a bt result file")
        differs = self.write_pack(pack, {key: data})
        return differs.get(key)

    def write_pack(self, pack: Any, bodies: dict[str, bytes] | None = None, compare: bool = True) -> dict[str, str]:
        """Write ``pack`` (a ``PackWriter``) into the store. With ``compare``, each of its keys
        that was stored already is compared with the intact result it replaces (``bodies``: the new
        bytes, else read back): a difference means something the result depends on is not in its
        key. Returns {key: what differed}. A pack whose every result was stored with these very
        bytes is not kept (results are deterministic: ``--force`` usually makes the same bytes)."""
        differs: dict[str, str] = {}
        same = 0
        if compare:
            before = self.existing(pack.keys)
            for key in before:
                old = self.stored_bytes(key)
                new = (bodies or {}).get(key)
                if new is None:
                    continue
                if old == new:
                    same += 1
                else:
                    what = difference(old, key, new)
                    if what:
                        differs[key] = what
            if same == len(pack) and not differs:
                return differs
        pack.write(self.packs_dir)
        self.refresh()
        return differs

    def accept_pack(self, folder: Path, name: str, allowed: Container[bytes]) -> None:
        """Move the pack ``name`` a sandboxed worker staged in ``folder`` into the store, if it
        holds results of ``allowed`` raw keys (the ones of the shard it was sent) only; else it is
        deleted and ``ResultError`` says so."""
        from backtest.store.packs import read_index

        path = os.path.join(folder, f"{name}.pack")
        pack = read_index(path)
        if not all(k in allowed for k in pack.raw_keys()):
            os.unlink(path)
            raise ResultError("a staged pack holds results of tasks its shard did not have")
        try:
            os.replace(path, self.packs_dir / f"{name}.pack")
        except FileNotFoundError:
            self.packs_dir.mkdir(parents=True, exist_ok=True)
            os.replace(path, self.packs_dir / f"{name}.pack")
        self.refresh()

    # reading ---------------------------------------------------------------------------------------
    def _entry(self, pack: Pack, row: int) -> bytes:
        """The checked result file of ``pack``'s index ``row``, read through a kept descriptor."""
        with self._fd_lock:  # another thread must not close the descriptor while it is read
            return pack.entry(row, self._fd(pack.path))

    def _fd(self, path: str) -> int:
        """An open descriptor of the pack at ``path``, kept for the next reads (the last
        ``OPEN_PACKS``): reading a run's results opens each pack once, not once a result. A pack
        is never changed in place, so a descriptor stays true even when ``bt gc`` replaces it."""
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            while len(self._fds) >= OPEN_PACKS:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[path] = fd  # the most recently used last
        return fd

    def stored_bytes(self, key: str) -> bytes | None:
        """The bytes stored for ``key`` (the newest pack's entry, else its file), or None: unchecked
        for a file, checked for a pack entry (None when it is damaged)."""
        found = self._find(key)
        if found is not None:
            try:
                return self._entry(*found)
            except (ResultError, OSError):
                return None
        return _read_file(str(self.path(key)))

    def digest(self, key: str) -> bytes | None:
        """The sha256 a stored result of ``key`` carries (its last 32 bytes, unchecked), or None:
        two results of a key with the same digest are the same bytes."""
        found = self._find(key)
        try:
            if found is not None:
                offset, length = found[0].span(found[1])
                with open(found[0].path, "rb") as fh:
                    fh.seek(offset + length - 32)
                    return fh.read(32)
            with open(self.path(key), "rb") as fh:
                fh.seek(-32, os.SEEK_END)
                return fh.read(32)
        except OSError:
            return None

    def read_bytes(self, key: str) -> bytes:
        """The result file of ``key``; a pack entry is checked against its digest (a damaged one
        is set aside and ``ResultError`` says so)."""
        found = self._find(key)
        if found is not None:
            pack, row = found
            try:
                return self._entry(pack, row)
            except OSError as exc:
                raise ResultError(f"result {key[:12]} cannot be read ({exc.strerror or exc})") from None
            except ResultError as exc:
                self.set_aside(key)
                raise ResultError(f"{exc}; it was set aside, and running the job again recomputes it") from None
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ResultError(f"no stored result for task {key[:12]}; rerun the job to compute it") from exc

    def read_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """(key, result file) of each of ``keys``, as ``read_bytes`` reads them, with the packs
        looked at once for all of them (many results: a catalog indexing a run's results)."""
        packs = self.packs()
        for key in keys:
            found = self._find(key, packs)
            if found is None:
                yield key, self.read_bytes(key)  # a single file, or the error saying it is missing
                continue
            try:
                yield key, self._entry(*found)
            except (ResultError, OSError):
                yield key, self.read_bytes(key)  # says what is wrong, as one read would

    def read(self, key: str) -> ResultRecord:
        """The result of ``key``, checked; a result that fails the check is set aside (the next
        run of its job recomputes it) and raises ``ResultError`` saying so."""
        data = self.read_bytes(key)
        try:
            return decode(data, where=f"result {key[:12]}", key=key)
        except ResultError as exc:
            if not self.has(key):
                raise
            self.set_aside(key)
            raise ResultError(f"{exc}; it was set aside, and running the job again recomputes it") from None

    def set_aside(self, key: str) -> Path:
        """Take a damaged result out of the store's sight: a pack entry is listed in its pack's
        ``<name>.bad`` (the pack stays until ``bt gc``), a file is renamed ``<key>.res.damaged``."""
        found = self._find(key)
        if found is not None:
            bad = Path(found[0].path[:-5] + ".bad")
            with open(bad, "a") as fh:
                fh.write(key + "\n")
            self.refresh()
            return bad
        path = self.path(key)
        aside = path.with_name(f"{key}.res.damaged")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            pass
        return aside

    def intact(self, keys: Iterable[str]) -> tuple[set[str], dict[str, str]]:
        """The subset of ``keys`` stored whole, and what is wrong with each other stored result
        (which is set aside, so that it is computed again). A pack's entries are whole when its
        index is (``packs.read_index``); a file is judged by its head and size (``check_head``).
        A result damaged in place is caught by its checksum when it is read."""
        loose, packed = self._stored(keys)
        good = loose | packed
        bad: dict[str, str] = {}
        if loose:
            base = self._dir
            for key in loose:
                if key in packed:
                    continue  # a pack holds it as well: the pack's entry is served
                problem = check_head(f"{base}/{key[:2]}/{key}.res", key)
                if problem is not None:
                    good.discard(key)
                    bad[key] = problem
                    self.set_aside(key)
        return good, bad

    def _in_pack(self, key: str) -> bool:
        return bytes.fromhex(key) in self._pack_keys()

    def keys(self) -> list[str]:
        """Every stored key, in order. A temporary file (``.tmp-*``, left by a writer killed
        mid-write, e.g. a worker stopped by Ctrl+C) is not a result and not listed."""
        loose = {p.name[:-4] for p in self._files("*.res") if not p.name.startswith(".")}
        return sorted(loose | {k.hex() for k in self._pack_keys()})

    def leftovers(self, older_than: float) -> list[Path]:
        """Temporary files (``.tmp-*``) last written before ``older_than`` (a Unix time): what
        writers killed mid-write left behind. A live writer holds one for a moment only."""
        out: list[Path] = []
        for p in self._files(".tmp-*") + (sorted(self.packs_dir.glob(".tmp-*")) if self.packs_dir.is_dir() else []):
            try:
                if p.stat().st_mtime < older_than:
                    out.append(p)
            except FileNotFoundError:  # renamed or removed meanwhile
                pass
        return out

    def damaged_files(self) -> list[Path]:
        """Damaged results set aside, kept for a post-mortem until ``bt gc``: files
        (``<key>.res.damaged``), packs (``<name>.pack.damaged``) and lists of a pack's damaged
        entries (``<name>.bad``: ``delete`` writes the pack again without them)."""
        packs = sorted(p for pattern in ("*.pack.damaged", "*.bad") for p in self.packs_dir.glob(pattern)
                       if not p.name.startswith(".")) if self.packs_dir.is_dir() else []
        return self._files("*.res.damaged") + packs

    def _files(self, pattern: str) -> list[Path]:
        """The single files named like ``pattern``, in order, over every key-prefix folder."""
        if not self.dir.is_dir():
            return []
        return [p for sub in sorted(self.dir.iterdir()) if sub.is_dir() and len(sub.name) == 2
                for p in sorted(sub.glob(pattern))]

    # removing ------------------------------------------------------------------------------------------
    def sizes(self, keys: Iterable[str]) -> int:
        """Bytes the results of ``keys`` take (a pack entry's share of its pack, a file's size)."""
        from backtest.store.packs import INDEX_ROW

        keys = list(keys)
        want = {bytes.fromhex(k) for k in keys}
        total = 0
        for pack in self.packs():
            for raw in want.intersection(pack.raw_keys()):
                total += pack.span(pack.find(raw))[1] + INDEX_ROW
        for key in self._loose(keys):
            try:
                total += self.path(key).stat().st_size
            except FileNotFoundError:
                pass
        return total

    def delete(self, keys: Iterable[str]) -> int:
        """Delete the results of ``keys``: their files, and their pack entries (a pack left with no
        entry is deleted; one left with some is written again without the others), and the
        entries found damaged. Returns the bytes freed."""
        from backtest.store.packs import PackWriter

        keys = list(keys)
        gone = {bytes.fromhex(k) for k in keys}
        freed = 0
        for key in self._loose(keys):
            path = self.path(key)
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
        every = {e.path: e for e in self.packs()}
        files = sorted(os.listdir(self.packs_dir)) if self.packs_dir.is_dir() else []
        for file in [os.path.join(self.packs_dir, n) for n in files if n.endswith(".pack") and n[0] != "."]:
            pack = every.get(file)
            damaged = os.path.exists(file[:-5] + ".bad")
            if pack is None:
                if not damaged:
                    continue  # written since this store was read
            else:
                kept = [k for k in pack.raw_keys() if k not in gone]
                if len(kept) == len(pack) and not damaged:
                    continue  # nothing of it goes
                out = PackWriter()
                with open(file, "rb") as fh:
                    for raw in kept:
                        try:
                            out.add_file(pack.entry(pack.find(raw), fh.fileno()))
                        except ResultError:
                            pass  # damaged in place: it goes too (the next run that needs it computes it)
                if len(out):
                    out.write(self.packs_dir)
            freed += os.path.getsize(file)
            os.unlink(file)
            try:
                os.unlink(file[:-5] + ".bad")
            except FileNotFoundError:
                pass
        self.refresh()
        return freed

    def pack_paths(self, keys: Iterable[str]) -> dict[str, str]:
        """{pack name: path} of the packs that serve the results of ``keys`` (the newest pack of
        each key). Results of ``keys`` kept as single files are packed first, into one new pack;
        a key with no result is left out."""
        from backtest.store.packs import PackWriter

        keys = list(keys)
        loose = self._loose(keys) - self._stored_packed(keys) if self._has_loose() else set()
        if loose:
            pack = PackWriter()
            for key in sorted(loose):
                data = _read_file(str(self.path(key)))
                try:
                    decode(data or b"", f"result {key[:12]}", key)  # checked: a damaged one is not shared
                except (ResultError, ValueError, KeyError, struct.error):
                    continue
                pack.add_file(data or b"")
            if len(pack):
                pack.write(self.packs_dir)
                self.refresh()
        out: dict[str, str] = {}
        for key in keys:
            found = self._find(key)
            if found is not None:
                path = found[0].path
                out.setdefault(os.path.basename(path)[:-5], path)
        return out

    def _stored_packed(self, keys: list[str]) -> set[str]:
        stored = self._pack_keys()
        return {k for k in keys if bytes.fromhex(k) in stored}

    def pack_files(self, batch: int = 100_000) -> tuple[int, int, list[str]]:
        """Pack the single files of a store made before packs (``batch`` results a pack), each
        checked first (a damaged one is set aside, not packed). Returns (files packed, packs
        written, keys of the files set aside)."""
        from backtest.store.packs import PackWriter

        files = [p for p in self._files("*.res") if not p.name.startswith(".")]
        packed = written = 0
        damaged: list[str] = []
        for at in range(0, len(files), batch):
            pack = PackWriter()
            done: list[Path] = []
            for path in files[at:at + batch]:
                key = path.name[:-4]
                if self._in_pack(key):  # a pack serves it already
                    done.append(path)
                    continue
                try:
                    data = path.read_bytes()
                    decode(data, f"result {key[:12]}", key)
                except (OSError, ResultError, ValueError, KeyError, struct.error):
                    self.set_aside(key)
                    damaged.append(key)
                    continue
                if pack.add_file(data):
                    done.append(path)
            if len(pack):
                pack.write(self.packs_dir)
                written += 1
            for path in done:  # only once the pack that holds them is whole on disk
                path.unlink()
                packed += 1
        for sub in self.dir.iterdir() if self.dir.is_dir() else []:
            if sub.is_dir() and len(sub.name) == 2:
                try:
                    sub.rmdir()  # empty now (a folder that still holds something stays)
                except OSError:
                    pass
        self.refresh()
        return packed, written, damaged
