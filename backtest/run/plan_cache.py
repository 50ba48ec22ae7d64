"""The keys of large jobs, kept by what they are made of, so that a rerun reads them instead of
hashing them again (a million tasks: ~1.5 s of sha256 over ~600 bytes a task).

A job's keys depend only on its ``plan.KeyInputs`` (the engine version, the strategy's hash and
class, every parameter set, the settings, the symbols, a universe's members, the benchmark, the
range, the warm-ups and the hash of every partition each (symbol, warm-up) reads) and on the code
that joins them (``plan.task_keys``). ``plan.digest`` is the sha256 of all of that, that code's
byte code included, and names the file: ``<root>/cache/plans/<digest>.keys``. The inputs are made by the
very function that the keys are made from (``plan.key_inputs``), so anything that changes a key
changes the digest; a file is never trusted for inputs it was not made of.

A file is ``MAGIC | u64 tasks | raw keys (32 bytes each, in plan.layout's order) | sha256`` of all
before it, written whole (``atomic_write``). One that does not check (magic, size, count, digest)
is ignored and written again. The folder is a cache: the least recently read files beyond
``KEEP_BYTES`` go first, and deleting it any time loses nothing.

Only jobs of ``MIN_TASKS`` tasks or more are kept: below that hashing costs less than the file
(and the run does not import NumPy for them).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from pathlib import Path

from backtest.plan import TaskTable, digest, key_inputs, layout, task_keys
from backtest.spec import Job, PartsFor

MAGIC = b"BTKEYS1\n"
_COUNT = struct.Struct("<Q")
#: jobs from this many tasks on have their keys kept
MIN_TASKS = 50_000
#: the folder's bound: the files read longest ago beyond it are deleted
KEEP_BYTES = 512 << 20


def folder(root: Path) -> Path:
    return root / "cache" / "plans"


def planned(job: Job) -> int:
    """How many tasks the job would plan at most (every parameter set on every task symbol)."""
    return len(job.params_list) * len(job.task_symbols())


def tasks(root: Path, job: Job, parts: PartsFor) -> TaskTable:
    """Every task of ``job`` (``plan.make_tasks``'s, as a ``TaskTable``): the keys read from the
    cache when these inputs made them before, else hashed and kept."""
    inputs = key_inputs(job, parts)
    sets, syms = layout(inputs)
    path = folder(root) / f"{digest(inputs)}.keys"
    raw = read(path, len(sets))
    if raw is None:
        raw = task_keys(inputs)
        write(path, raw)
    return TaskTable(job, raw, sets, syms)


def read(path: Path, n: int) -> bytes | None:
    """The ``n`` raw keys kept in ``path``, or None (no such file, or one that does not check)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    head = len(MAGIC) + _COUNT.size
    if len(data) != head + 32 * n + 32 or not data.startswith(MAGIC) or _COUNT.unpack_from(data, len(MAGIC))[0] != n:
        return None
    if hashlib.sha256(memoryview(data)[:-32]).digest() != data[-32:]:
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # read now: the last to go
    return data[head:-32]


def write(path: Path, raw: bytes) -> None:
    """Keep ``raw`` (the keys) in ``path``, whole, then keep the folder within ``KEEP_BYTES``. A
    cache that cannot be written (a read-only data root, a full disk) is only not kept."""
    from backtest.store.fsutil import atomic_write

    body = [MAGIC, _COUNT.pack(len(raw) // 32), raw]
    sha = hashlib.sha256()
    for piece in body:
        sha.update(piece)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, [*body, sha.digest()])
        _trim(path.parent, keep=path.name)
    except OSError:
        pass


def _trim(where: Path, keep: str) -> None:
    """Delete the files read longest ago while the folder holds more than ``KEEP_BYTES``."""
    files = []
    with os.scandir(where) as entries:
        for e in entries:
            if e.name.endswith(".keys") and not e.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    st = e.stat()
                    files.append((st.st_mtime_ns, st.st_size, e.path, e.name))
    total = sum(f[1] for f in files)
    for _, size, path, name in sorted(files):
        if total <= KEEP_BYTES:
            break
        if name == keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        total -= size

