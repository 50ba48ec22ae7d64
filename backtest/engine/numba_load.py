"""Lean loading of kernels from numba's on-disk cache, for bt's worker processes.

Before numba loads a cached kernel it readies its compiler: it imports every typing and lowering
module it has and registers their contents (about 80 modules; 0.2-0.3 s of a worker's start-up of
~0.8 s on a slow 2-core host), although the machine code it is about to load uses none of them.
What that code does need is numba's runtime (NRT: memory allocation and reference counts), which
numba initialises in the same step; the rest of what it calls (numba's C helpers, the C math
library, Python's exception types) is registered when numba makes its CPU context, before any
load. So ``install`` makes numba load a cached kernel after initialising only the runtime.

Nothing else changes:

- Compiling is as before. numba's compiler readies its registries itself before compiling
  (``numba.core.compiler.CompilerBase``), so a kernel missing from the cache, or a strategy's own
  kernel compiled in a worker, compiles exactly as it would have.
- The machine code is the same either way, so results are the same bits (the reproducibility
  tests compare workers, which load the lean way, with the in-process executor, which does not).
- Only numba's CPU cache is changed, only in the processes that call ``install`` (bt's workers and
  the fork server, through ``backtest.engine.run.warm_up``; never a program that imports bt as a
  library), and not at all with ``BT_NUMBA_FULL_LOAD=1`` or where numba lacks the internals this
  relies on: then kernels load the ordinary way.
"""

from __future__ import annotations

import os
from typing import Any

FULL_LOAD_ENV = "BT_NUMBA_FULL_LOAD"


def install() -> bool:
    """Make cached kernels load without readying numba's compiler, in this process; whether they
    now do. Idempotent."""
    if os.environ.get(FULL_LOAD_ENV):
        return False
    try:
        from numba.core.caching import FunctionCache
        from numba.core.cpu import CPUContext
        from numba.core.runtime import rtsys
    except ImportError:  # pragma: no cover - a numba without these modules: load the ordinary way
        return False
    if getattr(FunctionCache, "_bt_lean", False):
        return True
    if not all(hasattr(FunctionCache, n) for n in ("_load_overload", "_guard_against_spurious_io_errors")):
        return False  # pragma: no cover - numba's cache changed shape: load the ordinary way
    ordinary = FunctionCache.load_overload

    def load_overload(self: Any, sig: Any, target_context: Any) -> Any:
        if not isinstance(target_context, CPUContext):
            return ordinary(self, sig, target_context)
        rtsys.initialize(target_context)  # what numba's full refresh sets up that loaded code uses
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)
        return None  # the guard swallowed a spurious I/O error: numba then compiles, as it would

    load_overload.__doc__ = ordinary.__doc__
    FunctionCache.load_overload = load_overload  # type: ignore[method-assign]
    FunctionCache._bt_lean = True  # type: ignore[attr-defined]
    return True
