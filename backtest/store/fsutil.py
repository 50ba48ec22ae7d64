"""Files appear whole or not at all."""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from pathlib import Path

_COUNTER = itertools.count()
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def atomic_write(path: Path | str, data: bytes | list[bytes]) -> None:
    """Write to a temporary name in the same directory, then rename: the file appears whole.

    The temporary name is made of the process id, thread id and a counter (unique without the
    random names and retries of ``tempfile``, which cost more than the write of a small file);
    should one exist already (a dead process's leftover under a reused pid), ``tempfile`` picks.
    ``data`` may be a list of pieces, written in order. A reader that lists the folder must skip
    names starting with a dot: the temporary file has the final name's suffix."""
    folder, name = os.path.split(path)
    suffix = os.path.splitext(name)[1]
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{threading.get_ident()}-{next(_COUNTER)}{suffix}")
    try:
        fd = os.open(tmp, _FLAGS, 0o644)
    except FileExistsError:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes):
                fh.write(data)
            else:  # pieces, written one after another (a pack: no copy of the whole)
                fh.writelines(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_once(path: Path, data: bytes) -> None:
    """``atomic_write`` unless ``path`` exists already (a file named by its content, or by what
    decides it, is never written twice), making its folder if need be."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)


def process_alive(pid: int) -> bool:
    """Whether a process of this machine with that pid exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
