"""The manifest, the writers' lock, and all-or-nothing commits of partition files.

Layout under ``<root>/bars/``::

    manifest.json                  every partition: sha256, rows, first/last ts, freq, size
    symbol=AAPL/year=2020.parquet  the partitions
    .lock                          writers hold an exclusive flock while they change anything
    .journal.json                  present only while a commit is being applied
    .staging/                      new files and backups of a commit in progress

A commit writes every new file into ``.staging``, then the journal (which names them), then keeps a
hard link to each file it is about to replace, renames the new files into place, replaces the
manifest, and deletes the journal: that deletion is the commit. A process killed anywhere before it
leaves a journal, and the next process to take the lock rolls the store back to how it was (from the
backups). Readers never lock: files and the manifest are only ever renamed into place, so a reader
sees a whole old or a whole new file; a partition replaced after a run was planned fails its hash
check instead of being read silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backtest.data.partition import Partition
from backtest.errors import DataError

FORMAT = "bt-manifest-1"
Manifest = dict[str, list[Partition]]  # symbol → partitions sorted by year


def parse(data: bytes, path: Path) -> Manifest:
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        return {sym: sorted((Partition(symbol=sym, **p) for p in parts), key=lambda p: p.year)
                for sym, parts in doc["symbols"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"the data manifest {path} is unreadable ({exc}); "
                        f"move the data folder aside and import again") from exc


def dump(manifest: Manifest) -> bytes:
    symbols = {sym: [{k: v for k, v in asdict(p).items() if k != "symbol"} for p in parts]
               for sym, parts in sorted(manifest.items()) if parts}
    return json.dumps({"format": FORMAT, "symbols": symbols}, sort_keys=True, indent=1).encode()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not possible on every platform / filesystem
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Files:
    """Paths of one store, the lock, and the journal."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bars = root / "bars"
        self.manifest = self.bars / "manifest.json"
        self.lock = self.bars / ".lock"
        self.journal = self.bars / ".journal.json"
        self.staging = self.bars / ".staging"

    @contextlib.contextmanager
    def locked(self, blocking: bool = True) -> Iterator[bool]:
        """Hold the writers' lock (yields False if ``blocking=False`` and another process has it)."""
        try:
            import fcntl
        except ImportError as exc:  # pragma: no cover - Windows
            raise DataError("writing to the data store needs fcntl file locks (Linux or macOS)") from exc

        self.bars.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            self.recover()
            yield True
        finally:
            os.close(fd)  # releases the flock

    def read(self) -> Manifest:
        try:
            data = self.manifest.read_bytes()
        except FileNotFoundError:
            return {}
        return parse(data, self.manifest)

    def recover_if_needed(self) -> None:
        """For readers: roll back a killed commit if no writer is at work (never waits)."""
        if self.journal.exists() or self.staging.exists():
            with self.locked(blocking=False):
                pass

    def recover(self) -> None:
        """Undo a commit that did not finish (caller holds the lock), then empty the staging area."""
        if self.journal.exists():
            doc: dict[str, Any] = json.loads(self.journal.read_bytes())
            for op in doc["ops"]:
                final = self.root / op["final"]
                saved = self.staging / op["backup"]
                if op["existed"]:
                    if saved.exists():
                        os.replace(saved, final)
                elif op["tmp"] and not (self.staging / op["tmp"]).exists() and final.exists():
                    final.unlink()  # it was renamed into place: it did not exist before
                with contextlib.suppress(OSError):
                    final.parent.rmdir()  # a symbol directory left empty
            backup = self.staging / "manifest.bak"
            if doc["manifest_existed"]:
                if backup.exists():
                    os.replace(backup, self.manifest)
            elif self.manifest.exists():
                self.manifest.unlink()
            self.journal.unlink()
            _fsync_dir(self.bars)
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    def commit(self, writes: dict[str, str | None], manifest: Manifest) -> None:
        """Apply staged files and the new manifest at once (caller holds the lock).

        ``writes`` maps a final path (relative to the root) to its staged file name in ``.staging``,
        or to None to delete that file.
        """
        ops: list[dict[str, Any]] = [
            {"final": rel, "tmp": tmp, "backup": f"{i}.bak", "existed": (self.root / rel).exists()}
            for i, (rel, tmp) in enumerate(sorted(writes.items()))]
        doc = {"ops": ops, "manifest_existed": self.manifest.exists()}
        tmp_journal = self.stage_dir() / "journal.tmp"
        _write_synced(tmp_journal, json.dumps(doc).encode())
        os.replace(tmp_journal, self.journal)
        for op in ops:
            if op["existed"]:
                _link(self.root / op["final"], self.staging / op["backup"])
        if doc["manifest_existed"]:
            _link(self.manifest, self.staging / "manifest.bak")
        dirs = set()
        for op in ops:
            target = self.root / op["final"]
            if op["tmp"] is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.staging / op["tmp"], target)
            dirs.add(target.parent)
        for d in dirs:  # the renames reach the disk before the manifest that names them
            _fsync_dir(d)
        new_manifest = self.staging / "manifest.new"
        _write_synced(new_manifest, dump(manifest))
        os.replace(new_manifest, self.manifest)
        self.journal.unlink()  # the commit
        _fsync_dir(self.bars)
        shutil.rmtree(self.staging, ignore_errors=True)

    def stage_dir(self) -> Path:
        self.staging.mkdir(parents=True, exist_ok=True)
        return self.staging


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)
