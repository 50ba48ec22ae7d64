"""Uncompressed copies of the partitions that runs read, for workers to read without pyarrow.

Reading Parquet means importing pyarrow (35-50 ms of a worker's first shard) and decoding the
files (~4 ms a year of minute bars), both on the way to every result. So once a worker has read
a partition from Parquet, it keeps its six columns as they are in memory, under
``<data root>/cache/bars/<sha256>.bars``, and later reads copy them straight into the arrays (~1 ms,
no pyarrow). The file is named by the partition's content hash (the one in every result's key)
and holds a header (format, that hash, the row count) followed by the raw little-endian columns
``ts, open, high, low, close, volume``: exactly the bytes that hash is computed over
(``partition.content_hash``), so ``bt data verify`` can check a copy as it checks a partition.

- A copy is written whole or not at all (``fsutil.atomic_write``); one whose header or size does
  not match what its name promises is ignored and written again from the Parquet file.
- The folder is a cache, bounded by ``BT_BARS_CACHE_MB`` (default 2048; 0 keeps no copies): when
  a new copy takes it over the bound, the copies read longest ago go first. Deleting it any time
  loses nothing. ``bt data rm`` deletes the copies of what it removes.
- Except what a live process has *pinned* (``pin``): the partitions fetched from an object store
  for a run exist only here, so the run that fetched them pins them (a file under ``pins/`` naming
  their hashes, one a process, on which it holds an exclusive ``flock``) and eviction passes them
  over while that lock is held — until the process ends or calls ``release_pins``. A pin whose lock is
  free (its process died) is deleted by the next eviction. A run whose partitions exceed the bound
  therefore keeps them all while it runs, and the folder goes back under the bound afterwards.
- Workers that have a data root keep copies (local, inline, Dask); SSH workers, which read the
  partitions shipped to their host's cache by absolute path, do not (yet).
- With the bars on an object store (``--store``), the partitions a run reads are fetched into this
  folder as ``<sha256>.parquet`` (``backtest.data.objstore``), under the same bound.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backtest.errors import BtError

if TYPE_CHECKING:
    from backtest.data.partition import Columns

CACHE_ENV = "BT_BARS_CACHE_MB"
DEFAULT_MB = 2048
MAGIC = b"BTBARS1\0"
_HEAD = struct.Struct("<8s32sQ")  # magic, sha256 (raw), rows: 48 bytes, the size of one row too
ROW_BYTES = 48  # int64 ts and five float64 columns


def folder(data_root: Path) -> Path:
    return data_root / "cache" / "bars"


def limit_bytes() -> int:
    """The cache's bound from ``BT_BARS_CACHE_MB`` (BtError if it is not a whole number ≥ 0)."""
    text = os.environ.get(CACHE_ENV, "").strip()
    if not text:
        return DEFAULT_MB << 20
    try:
        mb = int(text)
    except ValueError:
        mb = -1
    if mb < 0:
        raise BtError(f"{CACHE_ENV}={text!r}: give the bound of the bars cache in MB, a whole number "
                      f"(0 keeps no copies; default {DEFAULT_MB})")
    return mb << 20


def path(cache: Path, sha256: str) -> Path:
    return cache / f"{sha256}.bars"


def rows(cache: Path, sha256: str) -> tuple[Any, int] | None:
    """The open copy of partition ``sha256`` (positioned at its first column) and its row count,
    or None when there is no whole copy."""
    try:
        fh = open(path(cache, sha256), "rb", buffering=0)  # noqa: SIM115 - the caller reads, then closes it
    except OSError:
        return None
    try:
        head = fh.read(_HEAD.size)
        if len(head) == _HEAD.size:
            magic, digest, n = _HEAD.unpack(head)
            if magic == MAGIC and digest.hex() == sha256 and os.fstat(fh.fileno()).st_size == _HEAD.size + n * ROW_BYTES:
                try:
                    os.utime(fh.fileno())  # read now: the last to be evicted
                except OSError:
                    pass
                return fh, n
    except OSError:
        pass
    fh.close()
    return None


def read_into(fh: Any, n: int, cols: Columns, offset: int) -> None:
    """Copy an open copy's ``n`` rows into ``cols`` at ``offset``, column by column."""
    for a in cols.arrays():
        view = memoryview(a[offset:offset + n]).cast("B")  # type: ignore[arg-type]
        done = 0
        while done < len(view):
            got = fh.readinto(view[done:])
            if not got:
                raise OSError(f"{fh.name} ended early")
            done += got


def keep(cache: Path, sha256: str, cols: Columns, offset: int, n: int, limit: int) -> None:
    """Write the copy of partition ``sha256`` (rows ``offset … offset+n`` of ``cols``), then evict
    the least recently read copies beyond ``limit`` bytes. Best effort: a read-only or full disk
    only means the next read decodes Parquet again."""
    size = _HEAD.size + n * ROW_BYTES
    if size > limit:
        return
    from backtest.store.fsutil import atomic_write

    data = b"".join([_HEAD.pack(MAGIC, bytes.fromhex(sha256), n),
                     *(a[offset:offset + n].tobytes() for a in cols.arrays())])
    try:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write(path(cache, sha256), data)
        _evict(cache, limit, keep=path(cache, sha256).name)
    except OSError:
        pass


#: the pin this process holds in each cache folder: (its open, locked file, the hashes it lists)
_PINS: dict[str, tuple[Any, set[str]]] = {}


def pin(cache: Path, sha256s: Any) -> None:
    """Keep the files of these partitions (``<sha256>.parquet`` and ``.bars``) in ``cache`` while
    this process lives or until ``release_pins``, whatever the bound. One pin file a process and
    folder, appended to (so a reader sees every hash but perhaps the one being written). Best
    effort: a folder that cannot be written only means no pin."""
    import fcntl
    import secrets

    held = _PINS.get(str(cache))
    if held is None:
        target = cache / "pins" / f"{os.getpid()}-{secrets.token_hex(4)}.pin"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fh = open(target, "a", encoding="ascii")  # noqa: SIM115 - held open: the lock is the pin
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except OSError:
            return
        held = _PINS[str(cache)] = (fh, set())
    fh, names = held
    new = sorted(set(sha256s) - names)
    if not new:
        return
    try:
        fh.write("".join(f"{n}\n" for n in new))
        fh.flush()
    except OSError:
        return
    names.update(new)


def release_pins() -> None:
    """Drop every pin this process holds."""
    while _PINS:
        fh, _ = _PINS.popitem()[1]
        try:
            os.unlink(fh.name)
        except OSError:
            pass
        fh.close()


def _pinned(cache: Path) -> set[str]:
    """The hashes live pins name; pins whose lock is free (their process ended) are deleted."""
    import fcntl

    found: set[str] = set()
    try:
        it = os.scandir(cache / "pins")
    except OSError:
        return found
    with it:
        for e in it:
            try:
                fh = open(e.path, encoding="ascii")  # noqa: SIM115 - closed below
            except OSError:
                continue
            with fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:  # held: a live pin
                    found.update(fh.read().split())
                    continue
                try:
                    os.unlink(e.path)  # free: its process is gone
                except OSError:
                    pass
    return found


def _evict(cache: Path, limit: int, keep: str) -> None:
    entries = []
    total = 0
    pinned: set[str] | None = None
    with os.scandir(cache) as it:
        for e in it:
            # .parquet: partitions fetched from an object store; ".tmp-…": a file being written
            if e.name.endswith((".bars", ".parquet")) and not e.name.startswith("."):
                try:
                    st = e.stat()
                except OSError:
                    continue
                total += st.st_size
                entries.append((st.st_mtime, e.name, st.st_size))
    for _, name, size in sorted(entries):
        if total <= limit:
            return
        if name == keep:
            continue
        if pinned is None:
            pinned = _pinned(cache)
        if name.partition(".")[0] in pinned:
            continue
        try:
            os.unlink(os.path.join(cache, name))
            total -= size
        except OSError:
            pass


def damaged(cache: Path, sha256: str) -> bool:
    """Whether a copy of partition ``sha256`` is there and its columns do not hash to its name
    (then it is deleted: the next read makes it again)."""
    import hashlib

    from backtest.data.partition import hash_header

    p = path(cache, sha256)
    try:
        data = p.read_bytes()
    except OSError:
        return False
    n = _HEAD.unpack_from(data)[2] if len(data) >= _HEAD.size else -1
    if n >= 0 and len(data) == _HEAD.size + n * ROW_BYTES:
        h = hashlib.sha256(hash_header(n))
        h.update(memoryview(data)[_HEAD.size:])
        if h.hexdigest() == sha256:
            return False
    try:
        p.unlink()
    except OSError:
        pass
    return True


def drop(data_root: Path, hashes: list[str]) -> None:
    """Delete the copies of these partitions (their data left the store)."""
    for h in hashes:
        for p in (path(folder(data_root), h), folder(data_root) / f"{h}.parquet"):
            try:
                p.unlink()
            except OSError:
                pass
