"""``BT_TRACE=1``: a timeline of where a run's time goes, on stderr.

Each mark is one line, ``bt-trace <unix time> <pid> <CPU seconds of that process so far> <what>``,
from the coordinator and the fork server (a worker's stderr is kept for its error reports instead). Sorting the lines of one run by
time gives its phases: start-up, planning, workers ready, each shard, the last result, recording.
Costs nothing when the variable is unset.
"""

from __future__ import annotations

import os
import sys
import time

ON = bool(os.environ.get("BT_TRACE"))


def mark(what: str) -> None:
    if ON:
        sys.stderr.write(f"bt-trace {time.time():.3f} {os.getpid()} {time.process_time():.3f} {what}\n")
        sys.stderr.flush()
