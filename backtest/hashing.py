"""Canonical identities: ids are sha256 over canonical JSON.

Anything that cannot be serialised canonically (NaN, infinities, arbitrary objects) is an error,
never a random or repr-based fallback.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no spaces and no NaN; raises TypeError/ValueError otherwise."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def token(obj: Any) -> str:
    """sha256 hex of the canonical JSON of ``obj``."""
    return sha256_hex(canonical_json(obj))
