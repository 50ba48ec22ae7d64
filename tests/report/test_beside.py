"""The report computes its curves in a forked child: answers, errors and a dying child come back.

Each check runs in a fresh interpreter: ``_beside`` forks only when no other thread runs, and a
test process may hold threads left by earlier tests."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, os, threading
from backtest.errors import DataError
from backtest.report.html import _beside

assert threading.active_count() == 1
parent = os.getpid()
out = {"answer": _beside(lambda: {"pid": os.getpid(), "data": list(range(5))})()}

def fail():
    raise DataError("the bars changed")

try:
    _beside(fail)()
except DataError as exc:
    out["error"] = [type(exc).__name__, str(exc), os.getpid() == parent]

def die_in_the_child():
    if os.getpid() != parent:
        os._exit(9)
    return 42

out["died"] = _beside(die_in_the_child)()
print(json.dumps({**out, "parent": parent}))
"""


def test_answers_errors_and_a_dying_child() -> None:
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["answer"]["data"] == [0, 1, 2, 3, 4]
    assert got["answer"]["pid"] != got["parent"]  # computed in another process
    assert got["error"] == ["DataError", "the bars changed", True]  # raised here, in the parent
    assert got["died"] == 42  # the child died: computed here instead
