"""Content-addressed shipping of files into a host's cache: ``objects/<sha[:2]>/<sha>``.

``ship(conn, [(path, sha256), ...])``

1. asks the host, in one call, which of these objects it already has (and their sizes);
2. streams the missing ones over one exec channel: per file a JSON header line, then chunks
   each prefixed by a 4-byte length, then a zero length; zlib-compressed when a sample of the
   file compresses well (wheels and other already-compressed files go as they are);
3. the host hashes each file as it writes it and moves it into place only if the sha256 and size
   match; a mismatch is reported back and that file is sent again (up to ``attempts`` times).

The sha256 is of the file's bytes: this is transport integrity. (The data store's partition
hashes are of data content and are a different thing.)
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backtest.errors import HostError
from backtest.executors.ssh.connect import exec_command, host_label, quote_argv
from backtest.executors.ssh.remote import agent_argv

if TYPE_CHECKING:
    import fabric

CHUNK = 256 * 1024
SAMPLE = 256 * 1024
#: A file is compressed when its first SAMPLE bytes shrink to less than this fraction.
COMPRESS_BELOW = 0.85

#: Test hook: (sha, attempt, chunk) -> chunk actually sent; lets tests corrupt a transfer.
Tamper = Callable[[str, int, bytes], bytes]


_SHA_CACHE: dict[tuple[str, int, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes, remembered by (path, inode, size, mtime) so that a file shipped to
    many hosts is hashed once; a file replaced since is hashed again."""
    st = os.stat(path)
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        known = _SHA_CACHE.get(key)
    if known is not None:
        return known
    from backtest.hashing import file_sha256 as digest

    sha = digest(path)
    with _SHA_LOCK:
        _SHA_CACHE[key] = sha
    return sha


def object_path(cache: str, sha: str) -> str:
    """Where a host keeps the object ``sha`` (``cache`` is the host's absolute cache dir)."""
    return f"{cache}/objects/{sha[:2]}/{sha}"


@dataclass
class ShipReport:
    """What one ``ship`` call did."""

    present: list[str] = field(default_factory=list)  # already on the host, not sent
    sent: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)  # arrived corrupted at least once
    bytes_raw: int = 0  # file bytes sent (sum of sizes, counting resends)
    bytes_wire: int = 0  # payload bytes on the channel after compression
    seconds: float = 0.0


def remote_have(conn: fabric.Connection, shas: Sequence[str], python: str = "python3") -> dict[str, int]:
    """``{sha: size}`` of the objects the host already has, in one call."""
    if not shas:
        return {}
    done = exec_command(conn, quote_argv(agent_argv(python, "have")), input=json.dumps(list(shas)).encode())
    if done.returncode != 0:
        raise HostError(f"{host_label(conn)}: listing its cache failed: {done.error_tail()}")
    try:
        present = json.loads(done.stdout)
    except ValueError as exc:
        raise HostError(f"{host_label(conn)}: bad listing from host: {done.stdout[:200]!r}") from exc
    return {str(k): int(v) for k, v in present.items()}


#: the default bound of the files shipped to a host (packages, data), in MB (``BT_HOST_CACHE_MB``)
HOST_CACHE_MB = 2048


def host_cache_limit() -> int | None:
    """``BT_HOST_CACHE_MB`` in bytes (default ``HOST_CACHE_MB``; 0: no bound), or a UsageError."""
    from backtest.errors import UsageError

    text = os.environ.get("BT_HOST_CACHE_MB")
    try:
        mb = HOST_CACHE_MB if text is None or not text.strip() else int(text)
    except ValueError:
        raise UsageError(f"BT_HOST_CACHE_MB must be a whole number of MB (0: no bound), not {text!r}") from None
    if mb < 0:
        raise UsageError(f"BT_HOST_CACHE_MB must be 0 or more, not {mb}")
    return mb * 1_000_000 if mb else None


def trim_cache(conn: fabric.Connection, limit: int, python: str = "python3") -> dict[str, Any]:
    """Delete the host's shipped files used longest ago until they take at most ``limit`` bytes
    (the host skips it while a bt worker runs there). What the host says: freed and left, or why
    it skipped."""
    done = exec_command(conn, quote_argv(agent_argv(python, "trim", str(limit))))
    if done.returncode != 0:
        raise HostError(f"{host_label(conn)}: trimming its cache failed: {done.error_tail()}")
    try:
        out: dict[str, Any] = json.loads(done.stdout)
    except ValueError as exc:
        raise HostError(f"{host_label(conn)}: bad answer from host: {done.stdout[:200]!r}") from exc
    return out


def _worth_compressing(path: Path) -> bool:
    with open(path, "rb") as fh:
        sample = fh.read(SAMPLE)
    if len(sample) < 512:
        return False
    return len(zlib.compress(sample, 1)) < COMPRESS_BELOW * len(sample)


def _payload(path: Path, compress: bool) -> Iterable[bytes]:
    deflater = zlib.compressobj(1) if compress else None
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            if deflater is None:
                yield chunk
            else:
                out = deflater.compress(chunk)
                if out:
                    yield out
        if deflater is not None:
            yield deflater.flush()


def _send_batch(
    conn: fabric.Connection,
    files: list[tuple[Path, str, int]],
    python: str,
    attempt: int,
    tamper: Tamper | None,
    report: ShipReport,
) -> dict[str, dict[str, object]]:
    """Stream one batch over one channel; return the host's verdict per sha."""
    transport = conn.transport
    if transport is None or not transport.is_active():
        raise HostError(f"{host_label(conn)}: not connected")
    chan = transport.open_session(timeout=30)
    chan.exec_command(quote_argv(agent_argv(python, "receive")))
    verdicts: dict[str, dict[str, object]] = {}
    errors: list[bytes] = []

    def read_results() -> None:
        buf = b""
        while True:
            data = chan.recv(65536)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    verdict = json.loads(line)
                    verdicts[verdict["sha"]] = verdict

    def read_errors() -> None:
        while True:
            data = chan.recv_stderr(65536)
            if not data:
                return
            errors.append(data)

    readers = [
        threading.Thread(target=read_results, daemon=True),
        threading.Thread(target=read_errors, daemon=True),
    ]
    for t in readers:
        t.start()
    try:
        for path, sha, size in files:
            compress = _worth_compressing(path)
            header = json.dumps({"sha": sha, "size": size, "z": int(compress)}) + "\n"
            chan.sendall(header.encode())
            for chunk in _payload(path, compress):
                if tamper is not None:
                    chunk = tamper(sha, attempt, chunk)
                if chunk:
                    chan.sendall(struct.pack(">I", len(chunk)) + chunk)
                    report.bytes_wire += len(chunk)
            chan.sendall(struct.pack(">I", 0))
            report.bytes_raw += size
        chan.shutdown_write()
        for t in readers:
            t.join()
        status = chan.recv_exit_status()
    except OSError as exc:
        raise HostError(f"{host_label(conn)}: connection lost while shipping: {exc}") from exc
    finally:
        chan.close()
    if status != 0 and len(verdicts) < len(files):
        tail = b"".join(errors).decode("utf-8", "replace").strip().splitlines()
        raise HostError(f"{host_label(conn)}: receiving failed: {tail[-1] if tail else f'exit {status}'}")
    return verdicts


def host_store_uri(uri: str) -> str:
    """The object store's URI as a host gets it: the endpoint and region configured here folded in,
    credentials taken out (a host reads with its own)."""
    from backtest.data.objstore import _with_env, display_uri

    return display_uri(_with_env(uri))


def from_store(path: str) -> bool:
    """Whether a shard's file is a partition of an object store (its copy in the bars cache)."""
    return path.startswith("cache/bars/") and path.endswith(".parquet")


def store_dir(cache: str) -> str:
    """Where a host keeps the partitions it fetched from an object store itself (readable by its
    sandboxed workers, bounded with the shipped files)."""
    return f"{cache}/objects/bars"


def remote_fetch(conn: fabric.Connection, command: Sequence[str], uri: str, dest: str,
                 wanted: Sequence[tuple[str, str]] | None) -> str | None:
    """Run ``backtest.data.fetch`` on the host (``command``: its bt Python, e.g. ``env.command``):
    fetch ``wanted`` ((object key, content sha256)) into ``dest``, or with None only probe the
    store. None when it worked, else the host's one line."""
    argv = [*command, "-m", "backtest.data.fetch", uri, dest, *(["--probe"] if wanted is None else [])]
    done = exec_command(conn, quote_argv(argv), input=json.dumps(list(wanted or [])).encode(), timeout=600)
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except ValueError:
        answer = {}
    if done.returncode == 0 and "error" not in answer:
        return None
    return str(answer.get("error") or done.error_tail() or f"exit {done.returncode}")


class HostObjects:
    """What the coordinator knows of one host's object cache, for shipping data on demand.

    ``ensure(files)`` takes a shard's ``[(path, data_sha256), ...]`` (paths relative to
    ``data_root`` or absolute), ships whatever the host lacks (once per host, verified on arrival,
    by the sha256 of the file's bytes) and returns the same list naming the host's copies. Safe to
    call from several threads: a file wanted by two workers at once is sent once.
    """

    def __init__(
        self,
        conn: fabric.Connection,
        cache: str,
        data_root: Path,
        *,
        python: str = "python3",
        tamper: Tamper | None = None,
        store: Any = None,
        command: Sequence[str] = (),
    ) -> None:
        self.conn = conn
        # bars on an object store (``data.objstore.ObjectStore``): the host fetches them itself
        # (with ``command``, its bt Python) when it can reach the store, else they are shipped
        self.store = store
        self.command = list(command)
        self.direct: bool | None = None  # None: not asked yet
        self.direct_reason = ""
        self.fetched: set[str] = set()
        self.cache = cache
        self.data_root = Path(data_root)
        self.python = python
        self.tamper = tamper
        self.have: set[str] = set()
        self.checked: set[str] = set()  # asked the host about (present ones are in ``have``)
        self.reports: list[ShipReport] = []
        self._lock = threading.Lock()

    def _local(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.data_root / p

    def _hashed(self, files: Sequence[Sequence[str]]) -> list[tuple[Path, str, str]]:
        from backtest.errors import DataError

        local: list[tuple[Path, str, str]] = []
        for path, data_sha in files:
            p = self._local(path)
            try:
                local.append((p, file_sha256(p), data_sha))
            except OSError as exc:
                raise DataError(f"partition file {p} cannot be read here: {exc.strerror or exc}") from exc
        return local

    def prime(self, files: Sequence[Sequence[str]]) -> None:
        """Ask the host once which of ``files`` it has, so that ``ensure`` need not ask per shard."""
        if self.store is not None:
            files = [f for f in files if not from_store(f[0])]
        with self._lock:
            todo = {sha: p for p, sha, _ in self._hashed(files) if sha not in self.checked}
            if todo:
                present = remote_have(self.conn, list(todo), self.python)
                self.have.update(sha for sha, size in present.items() if todo[sha].stat().st_size == size)
                self.checked.update(todo)

    def can_fetch(self) -> bool:
        """Whether the host reads the object store itself (asked once)."""
        with self._lock:
            if self.direct is None:
                if not self.command:
                    self.direct, self.direct_reason = False, "no bt environment to fetch with"
                else:
                    why = remote_fetch(self.conn, self.command, host_store_uri(self.store.uri),
                                       store_dir(self.cache), None)
                    self.direct, self.direct_reason = why is None, why or ""
            return self.direct

    def ensure(self, files: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
        if self.store is not None and any(from_store(f[0]) for f in files):
            stored = [(f[0], f[1]) for f in files if from_store(f[0])]
            if self.can_fetch():
                self._fetch_on_host(stored)
                others = iter(self._ship([f for f in files if not from_store(f[0])]))
                return [(f"{store_dir(self.cache)}/{f[1]}.parquet", f[1]) if from_store(f[0]) else next(others)
                        for f in files]
            self.store.fetch(stored)  # here first, then shipped as any file
        return self._ship(files)

    def _fetch_on_host(self, files: Sequence[tuple[str, str]]) -> None:
        from backtest.data.objstore import object_key
        from backtest.errors import DataError

        need = [sha for _, sha in files if sha not in self.fetched]
        if not need:
            return
        with self._lock:  # one fetch at a time per host; others wait and find it there
            by_sha = {p.sha256: p for ps in self.store._manifest().values() for p in ps}
            wanted = [(object_key(by_sha[sha]), sha) for sha in dict.fromkeys(need)
                      if sha not in self.fetched and sha in by_sha]
            missing = [sha for sha in need if sha not in by_sha]
            if missing:
                raise DataError(f"partition {missing[0][:12]} is no longer in the data store {self.store.where}; "
                                "run the command again to plan with the current data")
            if wanted:
                why = remote_fetch(self.conn, self.command, host_store_uri(self.store.uri), store_dir(self.cache),
                                   wanted)
                if why is not None:
                    raise DataError(f"{host_label(self.conn)}: fetching bars from the data store failed: {why}")
                self.fetched.update(sha for _, sha in wanted)

    def _ship(self, files: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
        if not files:
            return []
        local = self._hashed(files)
        if any(sha not in self.have for _, sha, _ in local):
            with self._lock:  # one transfer at a time per host; others wait and find it there
                need = {sha: p for p, sha, _ in local if sha not in self.have}
                if need:
                    report = ship(self.conn, [(p, sha) for sha, p in need.items()], python=self.python,
                                  tamper=self.tamper, check=not set(need) <= self.checked)
                    self.have.update(need)
                    self.checked.update(need)
                    self.reports.append(report)
        return [(object_path(self.cache, sha), data_sha) for _, sha, data_sha in local]


def ship(
    conn: fabric.Connection,
    files: Sequence[tuple[Path | str, str]],
    *,
    python: str = "python3",
    attempts: int = 3,
    tamper: Tamper | None = None,
    check: bool = True,
) -> ShipReport:
    """Make the host's cache hold every ``(local_path, sha256)``; send only what it lacks.

    ``python`` is any Python on the host (the base one is fine). ``check=False`` skips asking the
    host what it has (the caller knows it lacks these). Raises HostError when a file still arrives
    corrupted after ``attempts`` tries, or when the connection is lost.
    """
    start = time.perf_counter()
    report = ShipReport()
    unique: dict[str, tuple[Path, int]] = {}
    for local, sha in files:
        path = Path(local)
        unique.setdefault(sha, (path, path.stat().st_size))
    present = remote_have(conn, list(unique), python) if check else {}
    todo = []
    for sha, (path, size) in unique.items():
        if present.get(sha) == size:
            report.present.append(sha)
        else:
            todo.append((path, sha, size))
    for attempt in range(1, attempts + 1):
        if not todo:
            break
        verdicts = _send_batch(conn, todo, python, attempt, tamper, report)
        failed = []
        for path, sha, size in todo:
            verdict = verdicts.get(sha)
            if verdict is not None and verdict.get("ok"):
                report.sent.append(sha)
            else:
                failed.append((path, sha, size))
                if sha not in report.resent:
                    report.resent.append(sha)
        todo = failed
    if todo:
        names = ", ".join(str(p) for p, _, _ in todo[:3])
        raise HostError(
            f"{host_label(conn)}: {len(todo)} file(s) arrived corrupted {attempts} times: {names}"
        )
    report.seconds = time.perf_counter() - start
    return report
