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


#: (parameter names in a dict's order) -> (the names sorted, each as the JSON text ``"name":``)
_FLAT_KEYS: dict[tuple[Any, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}


def canonical_params(params: dict[str, Any]) -> str:
    """``canonical_json(params)`` for a flat parameter set, in a third of the time: the names'
    JSON is made once per set of names, and int, str, finite float, bool and None values are
    written as ``json.dumps`` writes them; anything else goes through ``canonical_json``."""
    names = tuple(params)
    known = _FLAT_KEYS.get(names)
    if known is None:
        if not all(type(k) is str for k in names) or len(_FLAT_KEYS) >= 256:
            return canonical_json(params)
        order = tuple(sorted(names))
        known = _FLAT_KEYS[names] = (order, tuple(json.dumps(k) + ":" for k in order))
    parts = []
    for name, head in zip(*known, strict=True):
        v = params[name]
        kind = type(v)
        if kind is int:
            parts.append(head + int.__repr__(v))
        elif kind is str:
            parts.append(head + json.dumps(v))
        elif kind is float and v - v == 0.0:  # finite
            parts.append(head + float.__repr__(v))
        elif kind is bool:  # (a strategy's switch, e.g. ``short``: in most grids' parameter sets)
            parts.append(head + ("true" if v else "false"))
        elif v is None:
            parts.append(head + "null")
        else:
            return canonical_json(params)
    return "{" + ",".join(parts) + "}"


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
