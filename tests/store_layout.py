"""Test helpers that reach into the results store's files: what old stores look like, and where
a task's result sits in a pack (to damage it as a disk would)."""

from __future__ import annotations

import os
from pathlib import Path

from backtest.store.results import ResultStore


def as_files(root: Path) -> list[str]:
    """Turn the store at ``root`` into the layout of stores made before packs (one
    ``<key[:2]>/<key>.res`` file a task, no pack); the keys."""
    store = ResultStore(root)
    keys = store.keys()
    for key in keys:
        path = store.path(key)
        data = store.read_bytes(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for p in store.packs_dir.glob("*"):
        p.unlink()
    return keys


def entry_span(root: Path, key: str) -> tuple[Path, int, int]:
    """(pack file, offset, length) of ``key``'s entry."""
    store = ResultStore(root)
    raw = bytes.fromhex(key)
    for pack in store.packs():
        row = pack.find(raw)
        if row >= 0:
            offset, length = pack.span(row)
            return Path(pack.path), offset, length
    raise KeyError(key)


def damage_entry(root: Path, key: str, at: float = 0.5) -> None:
    """Overwrite 8 bytes inside ``key``'s pack entry (size kept), as a failing disk would."""
    path, offset, length = entry_span(root, key)
    fd = os.open(path, os.O_RDWR)
    try:
        pos = offset + int(length * at)
        old = os.pread(fd, 8, pos)
        os.pwrite(fd, bytes(b ^ 0xFF for b in old), pos)
    finally:
        os.close(fd)
