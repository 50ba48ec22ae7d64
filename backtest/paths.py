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
