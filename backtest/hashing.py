"""Canonical identities: ids are sha256 over canonical JSON.

Anything that cannot be serialised canonically (NaN, infinities, arbitrary objects) is an error,
never a random or repr-based fallback.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no spaces and no NaN; raises TypeError/ValueError otherwise."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex of a file's bytes, read in chunks (``hashlib.file_digest``)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def token(obj: Any) -> str:
    """sha256 hex of the canonical JSON of ``obj``."""
    return sha256_hex(canonical_json(obj))
