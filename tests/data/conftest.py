"""Fixtures for the data-store tests: a fresh store per test, and a writer of input files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from backtest.data import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "root")


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """write(name, text, bom=False, gz=False) → path of a file under tmp_path/in."""
    import gzip

    def _write(name: str, text: str | bytes, *, bom: bool = False, gz: bool = False) -> Path:
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode() if isinstance(text, str) else text
        if bom:
            data = b"\xef\xbb\xbf" + data
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        return path

    return _write
