"""Pack files: many tasks' results in one file, found by key through the pack's index.

A worker computes thousands of tasks a second; one file each would make the store's cost per
task the file system's (~4 KB of disk and two system calls a task). A pack holds the results of
one batch of a shard::

    b"BTPACK1\\n" | u32 table length | table | entries | index | footer

- the **table** is canonical JSON: a list of *variants*, the parts of a result header that every
  task of a batch shares (environment, metric names, symbol, a portfolio's members, trade dtype),
  each as the JSON text the result header holds;
- an **entry** is what is the task's own: ``u8 variant | u32 params length | params JSON |
  u32 trade count | float64 metrics | trades | sha256``, the sha256 being the one of the task's
  whole result file (``store.results``), which ``assemble`` puts together again from the entry and
  its variant: reading a task from a pack gives the very bytes its result file would hold, checked
  against that digest, so a damaged entry is never served;
- the **index** lists the entries sorted by key: ``key (32 bytes) | u64 offset | u32 length``;
- the **footer** is ``u32 entries | u64 index offset | sha256 | b"BTPEND1\\n"``, the sha256 covering
  the magic, the table and the index: a pack whose index is damaged is set aside whole.

A pack is named by what it holds (``packs/<sha256>.pack``: the sha256 of the index's digest and
of every result's own digest), so two packs of one name hold the same results. It is written whole (temporary name, then
rename), so a worker killed while writing one leaves only a temporary file, never a half pack.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from backtest.errors import ResultError
from backtest.hashing import canonical_json
from backtest.store.fsutil import atomic_write

MAGIC = b"BTPACK1\n"
END = b"BTPEND1\n"
RESULT_MAGIC = b"BTRES1"
_U32 = struct.Struct(">I")
_ENTRY_HEAD = struct.Struct("<BI")
_N_TRADES = struct.Struct("<I")
_FOOTER = struct.Struct("<IQ32s8s")
_SPAN = struct.Struct("<QI")
INDEX_ROW = 44  # bytes of one index row
#: packs of at least this many entries, their keys all different, have their index made with NumPy
VECTOR_INDEX = 64

#: The parts of a result header that a batch's tasks share, as their JSON text: (env,
#: metric_names, symbol, the ``"symbols":[...],`` field of a portfolio's results or "", trade_dtype).
Variant = tuple[str, str, str, str, str]


def head(variant: Variant, key: str, n_trades: int, params: str) -> bytes:
    """A result file's canonical-JSON header (keys in sorted order), from its parts."""
    env, names, symbol, members, dtype = variant
    return (f'{{"env":{env},"key":"{key}","metric_names":{names},"n_trades":{n_trades},"params":{params},'
            f'"symbol":{symbol},{members}"trade_dtype":{dtype}}}').encode()


def payload(variant: Variant, key: str, n_trades: int, params: str, values: bytes, trades: bytes) -> bytes:
    """A result file less its trailing sha256 (``store.results``: the layout)."""
    h = head(variant, key, n_trades, params)
    return b"".join((RESULT_MAGIC, _U32.pack(len(h)), h, values, trades))


def digest(variant: Variant, key: str, n_trades: int, params: str, values: bytes, trades: bytes) -> bytes:
    """The sha256 of the result file of these parts (``payload``'s, without joining them)."""
    h = head(variant, key, n_trades, params)
    sha = hashlib.sha256(RESULT_MAGIC)
    sha.update(_U32.pack(len(h)))
    sha.update(h)
    sha.update(values)
    sha.update(trades)
    return sha.digest()


def split(data: bytes) -> tuple[Variant, str, int, str, bytes, bytes, bytes] | None:
    """A result file's parts (variant, key, trade count, params JSON, metrics, trades, sha256), or
    None when its header is not the canonical one ``payload`` makes again (then it is stored as a
    file of its own). For results that come as bytes (SSH hosts, Dask): ~15 µs a result."""
    try:
        (hlen,) = _U32.unpack_from(data, len(RESULT_MAGIC))
        start = len(RESULT_MAGIC) + 4
        header = json.loads(data[start:start + hlen])
        members = f'"symbols":{canonical_json(header["symbols"])},' if "symbols" in header else ""
        variant = (canonical_json(header["env"]), canonical_json(header["metric_names"]),
                   canonical_json(header["symbol"]), members, canonical_json(header["trade_dtype"]))
        key, n, params = header["key"], int(header["n_trades"]), canonical_json(header["params"])
        if head(variant, key, n, params) != data[start:start + hlen]:
            return None
        mlen = 8 * len(header["metric_names"])
        body = data[start + hlen:-32]
        return variant, key, n, params, body[:mlen], body[mlen:], data[-32:]
    except (ValueError, KeyError, TypeError, struct.error):
        return None


class PackWriter:
    """Gathers results, then writes them as one pack."""

    def __init__(self) -> None:
        self._variants: dict[Variant, int] = {}
        self._entries: list[tuple[bytes, ...]] = []  # each entry's pieces (written one after another)
        self._sizes: list[int] = []
        self._keys: list[str] = []
        self.size = 0

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> list[str]:
        return self._keys

    def add(self, variant: Variant, key: str, n_trades: int, params: str, values: bytes, trades: bytes,
            digest: bytes) -> None:
        v = self._variants.get(variant)
        if v is None:
            v = self._variants[variant] = len(self._variants)
            if v > 255:
                raise ResultError("a pack holds at most 256 kinds of result header")
        p = params.encode()
        entry = (_ENTRY_HEAD.pack(v, len(p)) + p + _N_TRADES.pack(n_trades), values, trades, digest)
        size = sum(map(len, entry))
        self._entries.append(entry)
        self._sizes.append(size)
        self._keys.append(key)
        self.size += size

    def add_file(self, data: bytes) -> bool:
        """Add a whole result file (False, nothing added, if it cannot be packed: ``split``)."""
        parts = split(data)
        if parts is None:
            return False
        variant, key, n, params, values, trades, digest = parts
        self.add(variant, key, n, params, values, trades, digest)
        return True

    def encode(self) -> tuple[str, list[bytes]]:
        """(name, the pack's bytes in pieces) of everything added."""
        table = canonical_json([list(v) for v in self._variants]).encode()
        top = MAGIC + _U32.pack(len(table)) + table
        start = len(top)
        if len(set(self._keys)) == len(self._keys) >= VECTOR_INDEX:  # a worker's batch: no key twice
            index, end = self._index(start)
            n = len(self._keys)
            digests = b"".join(entry[-1] for entry in self._entries)
        else:
            offsets: dict[str, tuple[int, int, int]] = {}  # key -> (offset, length, entry number)
            at = start
            for i, (key, size) in enumerate(zip(self._keys, self._sizes, strict=True)):
                offsets[key] = (at, size, i)  # a key added twice: its last entry
                at += size
            index = b"".join(bytes.fromhex(k) + _SPAN.pack(*offsets[k][:2]) for k in sorted(offsets))
            n, end = len(offsets), at
            digests = b"".join(self._entries[i][-1] for _, _, i in offsets.values())
        index_digest = hashlib.sha256(top + index).digest()
        # named by what it holds: the index's digest and every result's own digest (in the order
        # their keys were first added)
        name = hashlib.sha256(index_digest + digests)
        pieces = [top, *itertools.chain.from_iterable(self._entries), index,
                  _FOOTER.pack(n, end, index_digest, END)]
        return name.hexdigest(), pieces

    def _index(self, start: int) -> tuple[bytes, int]:
        """(the index, where it starts) of entries whose keys are all different, the first at
        ``start``: the rows ``encode`` makes one by one, made with NumPy (~1 µs an entry less)."""
        import numpy as np

        n = len(self._keys)
        keys = np.frombuffer(bytes.fromhex("".join(self._keys)), np.uint8).reshape(n, 32)
        sizes = np.array(self._sizes, dtype=np.uint64)
        ends = np.cumsum(sizes) + np.uint64(start)
        order = np.argsort(np.frombuffer(keys.tobytes(), "S32"), kind="stable")  # bytewise order
        rows = np.empty((n, INDEX_ROW), np.uint8)
        rows[:, :32] = keys[order]
        rows[:, 32:40] = (ends - sizes)[order].astype("<u8").view(np.uint8).reshape(n, 8)
        rows[:, 40:] = sizes[order].astype("<u4").view(np.uint8).reshape(n, 4)
        return rows.tobytes(), int(ends[-1])

    def write(self, folder: Path | str, store: Path | str | None = None) -> tuple[str, bool]:
        """Write the pack into ``folder`` (made if need be) as ``<name>.pack``, unless the packs
        folder ``store`` (default ``folder``) holds a pack of that name already: the same
        results (``--force`` computes the same bytes again). Returns (name, whether written)."""
        name, data = self.encode()
        if os.path.exists(os.path.join(store if store is not None else folder, f"{name}.pack")):
            return name, False
        path = os.path.join(folder, f"{name}.pack")
        try:
            atomic_write(path, data)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            atomic_write(path, data)
        return name, True


@dataclass
class Pack:
    """A pack's table and index (raw index rows: ``key | u64 offset | u32 length``, sorted by key);
    ``dropped``: keys whose entries were found damaged (``<name>.bad``), no longer served."""

    path: str
    variants: list[Variant]
    index: bytes
    dropped: frozenset[bytes] = frozenset()

    def __len__(self) -> int:
        return len(self.index) // INDEX_ROW - len(self.dropped)

    def raw_keys(self) -> list[bytes]:
        """The raw keys of the entries it serves, in order."""
        idx = self.index
        keys = [idx[i:i + 32] for i in range(0, len(idx), INDEX_ROW)]
        return [k for k in keys if k not in self.dropped] if self.dropped else keys

    def keys(self) -> list[str]:
        return [k.hex() for k in self.raw_keys()]

    def rows(self) -> list[tuple[int, bytes]]:
        """(index row, raw key) of the entries it serves."""
        idx = self.index
        rows = [(i // INDEX_ROW, idx[i:i + 32]) for i in range(0, len(idx), INDEX_ROW)]
        return [r for r in rows if r[1] not in self.dropped] if self.dropped else rows

    def find(self, raw: bytes) -> int:
        """The index row of the key ``raw`` (32 bytes), or -1."""
        if raw in self.dropped:
            return -1
        idx = self.index
        lo, hi = 0, len(idx) // INDEX_ROW
        while lo < hi:
            mid = (lo + hi) // 2
            at = mid * INDEX_ROW
            if idx[at:at + 32] < raw:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(idx) // INDEX_ROW and idx[lo * INDEX_ROW:lo * INDEX_ROW + 32] == raw else -1

    def span(self, row: int) -> tuple[int, int]:
        """(offset, length) of the index's ``row``."""
        offset, length = _SPAN.unpack_from(self.index, row * INDEX_ROW + 32)
        return int(offset), int(length)

    def entry(self, row: int, fd: int | None = None) -> bytes:
        """The result file of the index's ``row``, checked against its digest."""
        offset, length = self.span(row)
        key = self.index[row * INDEX_ROW:row * INDEX_ROW + 32].hex()
        if fd is None:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                raw = fh.read(length)
        else:
            raw = os.pread(fd, length, offset)
        return assemble(self.variants, key, raw)


def assemble(variants: list[Variant], key: str, raw: bytes) -> bytes:
    """A task's result file from its pack entry, checked (``ResultError`` when it is damaged)."""
    try:
        v, plen = _ENTRY_HEAD.unpack_from(raw, 0)
        at = _ENTRY_HEAD.size
        params = raw[at:at + plen].decode()
        at += plen
        (n,) = _N_TRADES.unpack_from(raw, at)
        at += _N_TRADES.size
        variant = variants[v]
        mlen = 8 * len(json.loads(variant[1]))
        body = payload(variant, key, n, params, raw[at:at + mlen], raw[at + mlen:-32])
    except (ValueError, IndexError, struct.error, UnicodeDecodeError) as exc:
        raise ResultError(f"result {key[:12]} is damaged in its pack ({exc})") from None
    if len(raw) < 32 or hashlib.sha256(body).digest() != raw[-32:]:
        raise ResultError(f"result {key[:12]} is damaged in its pack (checksum mismatch)")
    return body + raw[-32:]


def read_index(path: str) -> Pack:
    """A pack's table and index, checked against the footer's digest (``ResultError`` if not)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            top = fh.read(len(MAGIC) + 4)
            if len(top) < len(MAGIC) + 4 or not top.startswith(MAGIC) or size < _FOOTER.size:
                raise ResultError(f"{path} is not a bt pack file")
            (tlen,) = _U32.unpack_from(top, len(MAGIC))
            table = fh.read(tlen)
            fh.seek(size - _FOOTER.size)
            n, at, digest, end = _FOOTER.unpack(fh.read(_FOOTER.size))
            if end != END or at + n * INDEX_ROW + _FOOTER.size != size:
                raise ResultError(f"{path} is damaged (its footer is not whole)")
            fh.seek(at)
            index = fh.read(n * INDEX_ROW)
    except struct.error:
        raise ResultError(f"{path} is damaged (its footer is not whole)") from None
    if hashlib.sha256(top + table + index).digest() != digest:
        raise ResultError(f"{path} is damaged (the checksum of its index does not match)")
    variants: list[Variant] = [tuple(v) for v in json.loads(table)]
    return Pack(path, variants, index)


def load(paths: list[str]) -> tuple[list[Pack], list[tuple[str, str]]]:
    """The packs at ``paths`` that read whole, and (path, what is wrong) for the damaged ones. A
    pack that cannot be read now (gone meanwhile, no permission) is in neither: it is not damaged."""
    packs: list[Pack] = []
    bad: list[tuple[str, str]] = []
    for p in paths:
        try:
            packs.append(read_index(p))
        except ResultError as exc:
            bad.append((p, str(exc)))
        except OSError:
            pass
    return packs, bad
