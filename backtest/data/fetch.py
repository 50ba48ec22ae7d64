"""Fetch partitions straight from an object store into a folder: what an SSH host runs, with its
own credentials, to get the bars of its shards without the coordinator shipping them.

    python -m backtest.data.fetch URI DEST           # stdin: [[object key, sha256], ...]
    python -m backtest.data.fetch URI DEST --probe   # can this machine read the store?

Each object is decoded and must hash to its content hash before it is written, whole, as
``DEST/<sha256>.parquet`` (files already there are kept). Prints one JSON line: ``{"fetched": N}``,
or ``{"error": "<one line>"}`` with exit status 1. ``URI`` carries no credentials (the coordinator
strips them); the endpoint and region are in it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from backtest.data.objstore import Objects, fetch_into
    from backtest.errors import BtError

    args = list(sys.argv[1:] if argv is None else argv)
    probe = "--probe" in args
    args = [a for a in args if a != "--probe"]
    if len(args) != 2:
        print(json.dumps({"error": "usage: python -m backtest.data.fetch URI DEST [--probe]"}))
        return 2
    uri, dest = args
    try:
        objects = Objects(uri)
        if probe:
            objects.current()  # lists the manifest's versions and reads the newest
            print(json.dumps({"ok": True}))
            return 0
        wanted = [(str(k), str(h)) for k, h in json.loads(sys.stdin.read() or "[]")]
        n = fetch_into(objects, Path(dest), wanted)
    except BtError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    except Exception as exc:  # noqa: BLE001 - one line back to the coordinator, whatever it was
        print(json.dumps({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}))
        return 1
    print(json.dumps({"fetched": n}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
