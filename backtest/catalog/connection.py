"""How a process holds the catalog file: a lock file (shared for readers, exclusive for writers,
with a turnstile so readers cannot starve a writer), the DuckDB driver, one in-memory writing
instance a process with the file attached for each write, and retries while another program
holds the file.

The lock is ``flock`` on two files, by hand, because the libraries that offer one do something
else: fasteners' reader-writer lock uses ``lockf`` (POSIX record locks belong to the process, so
the catalog writer thread and a reader thread of one ``bt`` would not exclude each other, and
closing any descriptor of the file drops them all), filelock's ``FileLock`` is exclusive only and
its ``ReadWriteLock`` is a SQLite database; neither lets a waiting writer stop new readers (the
turnstile here), which a stream of ``bt report`` s during a run needs."""

from __future__ import annotations

import atexit
import functools
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from backtest.errors import CatalogError

T = TypeVar("T")
LOCK_WAIT = 60.0


def _flock(fd: int, shared: bool, path: Path) -> None:
    import fcntl

    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise CatalogError(f"the catalog next to {path} stayed busy for {LOCK_WAIT:.0f} s; "
                                   "is another bt stuck? (see bt runs)") from None
            time.sleep(0.002 + 0.008 * random.random())


@contextmanager
def _file_lock(path: Path, shared: bool) -> Iterator[None]:
    """Readers share, writers are alone. A writer first takes the turnstile (``.queue``) so that
    readers arriving after it wait: a stream of ``bt report``s cannot starve a run's writes."""
    import fcntl

    queue_fd = os.open(path.with_suffix(".queue"), os.O_RDWR | os.O_CREAT, 0o644)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock(queue_fd, shared, path)
        try:
            _flock(fd, shared, path)
        finally:
            fcntl.flock(queue_fd, fcntl.LOCK_UN)
        yield
    finally:
        os.close(fd)
        os.close(queue_fd)


def duckdb_driver() -> Any:
    """DuckDB as the catalog uses it: the C extension alone where it is a module of its own
    (``_duckdb``, duckdb ≥ 1.4), else the ``duckdb`` package. The catalog needs only what the
    extension has (connect, execute, fetch, register, the exceptions); importing the package
    also builds its Python layer (relational API, Arrow scan sources, expressions), ~0.1 s that
    every ``bt`` command touching the catalog would pay (a fifth of a fully cached rerun)."""
    import importlib

    try:
        return importlib.import_module("_duckdb")
    except ImportError:
        return importlib.import_module("duckdb")


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text or "conflicting" in text or "being used by another process" in text


#: What the writing instance may hold in memory before it spills to temporary files: without a
#: limit (DuckDB's default is most of the machine's memory) it kept the blocks of every write of
#: a million-task run, ~400 MB by its end. With 256 MB a million-task first run peaked at 1.03 GB,
#: with 192 MB at 0.99 GB; 128 MB made recording a cached rerun's million rows 0.2-0.3 s slower.
WRITER_MEMORY = "192MB"


def spill_folder(who: str) -> str:
    """Where DuckDB spills what does not fit its memory limit: the system's temporary folder (the
    data root may be read only; an in-memory instance would spill to ``.tmp`` in the working
    folder), a folder for each instance (``who``) so that one closing, which removes its files,
    never touches another's. DuckDB removes its files when it closes; the process removes its
    folders as it exits (``remove_spill_folders``, an ``atexit`` handler)."""
    import tempfile

    _remove_at_exit()
    return os.path.join(tempfile.gettempdir(), f"bt-duckdb-{os.getpid()}-{who}")


@functools.cache
def _remove_at_exit() -> None:
    atexit.register(remove_spill_folders)


def remove_spill_folders() -> None:
    """Remove this process's spill folders (a forked child's are its own): the ``bt`` console
    script leaves with ``os._exit`` after the ``atexit`` handlers, so its DuckDB instances never
    close, which would remove them."""
    import glob
    import shutil

    for folder in glob.glob(spill_folder("*")):
        shutil.rmtree(folder, ignore_errors=True)


class _Writer:
    """This process's DuckDB instance for writing catalogs: in memory, on one thread, made once
    (making an instance costs 20-50 ms, most of it DuckDB filling its own system catalog, which a
    run would pay at its start and again at its end), with the catalog file attached for each
    write and detached after (~1.5 ms), which takes and lets go of the file as opening and closing
    a connection does. Writes in one process take turns; a turn that fails drops the instance
    (closing it lets the file go whatever state it is in), and the next turn makes a new one."""

    ALIAS = "bt_catalog"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._con: Any = None
        self._pid = 0
        self._driver: Any = None

    @contextmanager
    def turn(self, path: Path, opening: Callable[[Callable[[], Any]], Any]) -> Iterator[Any]:
        with self._lock:
            driver = duckdb_driver()
            if self._con is None or self._pid != os.getpid() or self._driver is not driver:
                # (a forked child makes its own)
                self._con = driver.connect(":memory:", config={"threads": 1, "memory_limit": WRITER_MEMORY,
                                                               "temp_directory": spill_folder("writer")})
                self._pid, self._driver = os.getpid(), driver
            con = self._con
            quoted = str(path).replace("'", "''")
            opening(lambda: con.execute(f"ATTACH '{quoted}' AS {self.ALIAS}"))
            try:
                con.execute(f"USE {self.ALIAS}")
                yield con
            except BaseException:
                self._drop()
                raise
            try:
                con.execute("USE memory")
                con.execute(f"DETACH {self.ALIAS}")
            except Exception:
                self._drop()

    def _drop(self) -> None:
        try:
            self._con.close()
        except Exception:  # noqa: S110 - it is being thrown away
            pass
        self._con = None


_WRITER = _Writer()
