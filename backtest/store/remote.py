"""A result cache on object storage that people and machines share (``--remote-cache``).

Results are keyed by the hash of everything that makes them, so a result computed by one person
is the result another would compute: a team's cache on S3 (or anything ``pyarrow.fs`` opens)
saves everyone the tasks someone already ran. The unit moved is a pack (``store.packs``), as the
local store keeps them::

    <uri>/packs/<name>.pack          packs, named by what they hold (never overwritten)
    <uri>/runs/<run id>.json         ``bt cache push``: the run's catalog row
    <uri>/jobs/<sha256>.json         ... its job, and
    <uri>/strategies/<sha256>.json   ... its strategy source (what plans its tasks again)

**Looking up.** A run lists ``packs/``, reads the index of each pack it has not seen before (two
ranged reads: the pack's head and its index with the footer, checked against the footer's
digest) and keeps it under ``<root>/cache/remote/`` (a pack's name says what it holds, so an index
once read stays true). Which planned keys the cache holds is then a lookup in those indexes.

**Fetching.** A pack holding wanted results is downloaded whole, every entry checked against its
digest (the same check a local read makes), and only then moved into the local results store;
a pack that fails is not kept, and its tasks are computed here. From then on the results are
local ones: ``bt verify``, reports and reruns read them as if computed here.

**Uploading.** After a run, the packs that hold what it computed are uploaded (unless the cache
is read-only, ``--remote-cache-read-only``). An object store's PUT is all or nothing, and a
pack's name is its content, so two machines uploading the same pack write the same object.

**Failures.** A cache that cannot be reached, refuses the credentials or is damaged never fails
a run: the first failure is reported in one line and the rest of the run goes on without it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from backtest.errors import DataError, ResultError

#: what the options are called, for messages
OPTION = "--remote-cache / BT_REMOTE_CACHE"
#: a pack's head read at once (magic, table length and the table: a few hundred bytes usually)
HEAD_BYTES = 64 * 1024
#: packs read or written side by side
THREADS = 8


def configured(uri: str | None = None, read_only: bool | None = None) -> tuple[str | None, bool]:
    """The remote cache's URI (``uri``, else ``BT_REMOTE_CACHE``; None: no cache) and whether it
    is read-only (``read_only``, else ``BT_REMOTE_CACHE_READ_ONLY`` set to 1/true/yes)."""
    uri = (uri if uri is not None else os.environ.get("BT_REMOTE_CACHE", "")).strip() or None
    if read_only is None:
        read_only = os.environ.get("BT_REMOTE_CACHE_READ_ONLY", "").strip().lower() in ("1", "true", "yes", "on")
    return uri, read_only


def check_uri(uri: str) -> None:
    """A remote cache URI bt can open, or a ``UsageError`` in one line (nothing is contacted)."""
    from urllib.parse import urlsplit

    from backtest.errors import UsageError

    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) < 2:  # a bare path, or a Windows drive letter
        raise UsageError(f"--remote-cache {uri}: give a URI such as s3://bucket/prefix (or file:///shared/folder)")


class RemoteCache:
    """One remote cache, for one data root. After its first failure (``broken``, one line) every
    call does nothing."""

    def __init__(self, uri: str, root: Path, read_only: bool = False) -> None:
        from backtest.data.objstore import Objects, display_uri

        self.objects = Objects(uri, kind="remote cache", option=OPTION)
        self.where = display_uri(uri)
        self.read_only = read_only
        self.root = Path(root)
        self.broken: str | None = None
        self.failure: BaseException | None = None  # what broke it, as raised
        self._shown: set[str] = set()
        self.indexes = self.root / "cache" / "remote" / hashlib.sha256(self.where.encode()).hexdigest()[:16]
        self._sizes: dict[str, int] | None = None
        self._lock = threading.Lock()
        self.fetched = 0  # results fetched into the local store
        self.uploaded = 0  # packs uploaded
        self.uploaded_bytes = 0
        self.notes: list[str] = []  # damaged packs and the like: one line each

    # failures ------------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        if self.broken is None:
            self.failure = exc
            self.broken = f"{exc}; going on without the remote cache (results are computed here)"

    def warnings(self) -> list[str]:
        """What went wrong so far, a line each: the failure that broke the cache, damaged packs."""
        return ([self.broken] if self.broken else []) + list(self.notes)

    def new_warnings(self) -> list[str]:
        """``warnings`` not returned by an earlier call (for a display that shows them as they come)."""
        new = [w for w in self.warnings() if w not in self._shown]
        self._shown.update(new)
        return new

    # what is there -------------------------------------------------------------------------------
    def pack_sizes(self, again: bool = False) -> dict[str, int]:
        """{pack name: size} of the packs in the cache (listed once, unless ``again``)."""
        if self._sizes is None or again:
            names = self.objects.sizes("packs")
            self._sizes = {n[:-5]: size for n, size in names.items() if n.endswith(".pack") and len(n) == 69}
        return self._sizes

    def _index(self, name: str, size: int) -> bytes:
        """The raw index rows of the remote pack ``name`` (kept locally once read and checked)."""
        from backtest.store.fsutil import atomic_write
        from backtest.store.packs import _FOOTER, _U32, END, INDEX_ROW, MAGIC

        path = self.indexes / f"{name}.idx"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        rel = f"packs/{name}.pack"
        head, tail = self.objects.get_ranges(rel, size, [(0, min(size, HEAD_BYTES)),
                                                         (max(0, size - _FOOTER.size), min(size, _FOOTER.size))])
        bad = ResultError(f"the remote cache's pack {name[:12]} is not a whole bt pack")
        if not head.startswith(MAGIC) or len(tail) != _FOOTER.size:
            raise bad
        (tlen,) = _U32.unpack_from(head, len(MAGIC))
        n, at, digest, end = _FOOTER.unpack(tail)
        if end != END or at + n * INDEX_ROW + _FOOTER.size != size:
            raise bad
        top_len = len(MAGIC) + 4 + tlen
        if top_len > len(head):
            (head,) = self.objects.get_ranges(rel, size, [(0, top_len)])
        (index,) = self.objects.get_ranges(rel, size, [(at, n * INDEX_ROW)])
        if hashlib.sha256(head[:top_len] + index).digest() != digest:
            raise bad
        try:
            atomic_write(path, [index])
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, [index])
        return index

    def find(self, keys: Iterable[str]) -> dict[str, list[str]]:
        """{pack name: the ``keys`` it holds} over the cache's packs (each key in one of them);
        {} when the cache is broken or holds none."""
        if self.broken is not None:
            return {}
        wanted = list(keys)
        if not wanted:
            return {}
        try:
            sizes = self.pack_sizes()
            self._forget_gone(sizes)
            if not sizes:
                return {}
            with ThreadPoolExecutor(THREADS) as pool:
                indexes = list(pool.map(lambda item: self._index_or_none(*item), sorted(sizes.items())))
        except DataError as exc:
            self._fail(exc)
            return {}
        return _locate(wanted, [(name, index) for (name, _), index in zip(sorted(sizes.items()), indexes, strict=True)
                                if index is not None])

    def _forget_gone(self, sizes: dict[str, int]) -> None:
        """Delete the kept indexes of packs the cache no longer has (its owners cleaned it)."""
        try:
            kept = os.listdir(self.indexes)
        except FileNotFoundError:
            return
        for file in kept:
            if file.endswith(".idx") and file[:-4] not in sizes:
                (self.indexes / file).unlink(missing_ok=True)

    def _index_or_none(self, name: str, size: int) -> bytes | None:
        try:
            return self._index(name, size)
        except ResultError as exc:
            self._note(str(exc))
            return None
        except FileNotFoundError:  # deleted since it was listed
            return None

    def _note(self, text: str) -> None:
        with self._lock:
            if text not in self.notes:
                self.notes.append(text)

    # fetching ------------------------------------------------------------------------------------
    def pull(self, keys: Iterable[str], store: Any) -> set[str]:
        """Fetch the results of ``keys`` the cache holds into ``store`` (a ``ResultStore``): the
        keys now stored whole."""
        where = self.find(keys)
        if not where:
            return set()
        have = {p.path.rsplit("/", 1)[-1][:-5] for p in store.packs()}
        todo = [name for name in sorted(where) if name not in have]
        try:
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(lambda name: self._download(name, store), todo))
        except DataError as exc:
            self._fail(exc)
        store.refresh()
        got = {k for name in where for k in where[name]}
        found: set[str] = store.existing(got)
        with self._lock:
            self.fetched += len(found)
        return found

    def _download(self, name: str, store: Any) -> None:
        """Download the pack ``name`` into ``store``, every entry checked first."""
        from backtest.store.fsutil import atomic_write
        from backtest.store.packs import assemble, read_index

        if self.broken is not None:
            return
        try:
            data = self.objects.get(f"packs/{name}.pack", "fetching")
        except FileNotFoundError:
            return
        folder = Path(store.packs_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-remote-{name}.pack"
        atomic_write(tmp, [data])
        try:
            pack = read_index(str(tmp))
            for row, raw in pack.rows():
                offset, length = pack.span(row)
                assemble(pack.variants, raw.hex(), data[offset:offset + length])
        except ResultError as exc:
            tmp.unlink(missing_ok=True)
            self._note(f"the remote cache's pack {name[:12]} is damaged ({str(exc).rsplit('(', 1)[-1].rstrip(')')}): "
                       "its results are computed here")
            return
        os.replace(tmp, folder / f"{name}.pack")

    # uploading -----------------------------------------------------------------------------------
    def push(self, keys: Iterable[str], store: Any) -> tuple[int, int]:
        """Upload the local packs holding results of ``keys`` that the cache lacks (results kept
        as single files, from stores made before packs, are packed first). Returns (packs
        uploaded, packs that hold them)."""
        if self.broken is not None or self.read_only:
            return 0, 0
        paths = store.pack_paths(keys)
        try:
            remote = self.pack_sizes(again=True)
            todo = sorted(p for name, p in paths.items() if name not in remote)
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(self._upload, todo))
        except DataError as exc:
            self._fail(exc)
            return 0, len(paths)
        return len(todo), len(paths)

    def _upload(self, path: str) -> None:
        if self.broken is not None:
            return
        data = Path(path).read_bytes()
        name = os.path.basename(path)
        self.objects.put(f"packs/{name}", data)
        with self._lock:
            self.uploaded += 1
            self.uploaded_bytes += len(data)
            if self._sizes is not None:
                self._sizes[name[:-5]] = len(data)

    # runs ----------------------------------------------------------------------------------------
    def put_file(self, rel: str, data: bytes) -> None:
        """Write ``rel`` unless it is there already (the files pushed beside packs are named by
        their content, or by a run id)."""
        if self.objects.size(rel) is None:
            self.objects.put(rel, data)

    def get_file(self, rel: str) -> bytes | None:
        try:
            return self.objects.get(rel)
        except FileNotFoundError:
            return None

    def summary(self) -> str:
        """One line on what the cache did for a run ("" when nothing)."""
        parts = []
        if self.fetched:
            parts.append(f"{self.fetched:,} results fetched")
        if self.uploaded:
            parts.append(f"{self.uploaded:,} packs ({self.uploaded_bytes / 1e6:.1f} MB) uploaded")
        return f"remote cache {self.where}: " + ", ".join(parts) if parts else ""


def _locate(wanted: list[str], indexes: list[tuple[str, bytes]]) -> dict[str, list[str]]:
    """{pack name: the ``wanted`` keys its index lists}, each key under the first pack listing it."""
    import numpy as np

    from backtest.store.packs import INDEX_ROW

    if not indexes:
        return {}
    rows = np.dtype([("key", "V32"), ("span", "V12")])
    assert rows.itemsize == INDEX_ROW
    keys = np.concatenate([np.frombuffer(index, dtype=rows)["key"] for _, index in indexes])
    owner = np.concatenate([np.full(len(index) // INDEX_ROW, i, dtype=np.int32) for i, (_, index) in enumerate(indexes)])
    raw = np.frombuffer(b"".join(bytes.fromhex(k) for k in wanted), dtype="V32")
    order = np.argsort(keys, kind="stable")
    keys, owner = keys[order], owner[order]
    at = np.searchsorted(keys, raw)
    at[at >= len(keys)] = 0
    hit = keys[at] == raw if len(keys) else np.zeros(len(raw), dtype=bool)
    out: dict[str, list[str]] = {}
    for i in np.flatnonzero(hit):
        out.setdefault(indexes[int(owner[at[i]])][0], []).append(wanted[i])
    return out
