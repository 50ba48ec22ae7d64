"""Where `bt` keeps things.

One root holds everything of one installation: ``bars/`` and the manifest (data store),
``results/`` (content-addressed results), ``catalog.duckdb``. The root is, in order: the
``--data`` option, the ``BT_DATA`` environment variable, the platform's user data dir.
"""

from __future__ import annotations

import os
from pathlib import Path

_override: Path | None = None


def set_root(path: Path | str | None) -> None:
    """Set the root for this process (the CLI's ``--data`` option)."""
    global _override
    _override = Path(path).expanduser().resolve() if path is not None else None


def root() -> Path:
    if _override is not None:
        return _override
    env = os.environ.get("BT_DATA")
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("bt", appauthor=False))


_store_override: str | None = None


def set_store(uri: str | None) -> None:
    """Set the market data store for this process (the CLI's ``--store`` option)."""
    global _store_override
    _store_override = uri.strip() if uri and uri.strip() else None


def store_uri() -> str | None:
    """The market data store's URI (``--store``, else ``BT_STORE``), or None for the local store
    under the root (``<root>/bars``)."""
    if _store_override is not None:
        return _store_override
    env = os.environ.get("BT_STORE", "").strip()
    return env or None
