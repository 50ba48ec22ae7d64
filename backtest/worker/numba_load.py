"""Lean loading of kernels from numba's on-disk cache, for bt's worker processes.

Before numba loads a cached kernel it readies its compiler: it imports every typing and lowering
module it has and registers their contents (about 80 modules; 0.2-0.3 s of a worker's start-up of
~0.8 s on a slow 2-core host), although the machine code it is about to load uses none of them.
What that code does need is numba's runtime (NRT: memory allocation and reference counts), which
numba initialises in the same step; the rest of what it calls (numba's C helpers, the C math
library, Python's exception types) is registered when numba makes its CPU context, before any
load. So ``install`` makes numba load a cached kernel after initialising only the runtime, and
the runtime's own machine code, which numba compiles at every start (25-35 ms), is kept in the
kernels' cache folder too (``bt-nrt-*.bin``, named by numba's and LLVM's versions and the target
machine, and checked by its sha256 before it is loaded).

Two more of numba's load-time steps are skipped the same way, for what they import (together
~45-70 ms of the fork server's warm-up, the critical path of a run's start):

- A loaded kernel's environment (the constants its code refers to) names the module whose globals
  it was compiled in; numba imports that module to hand its ``__dict__`` over. Nopython code never
  reads those globals (only object-mode code does, which numba's own modules do not contain), so
  for a module of numba's that is not imported yet (``numba.np.arrayobj``, which imports numba's
  whole string support: 30-45 ms) the environment gets globals naming the module and nothing else.
- Typing an argument that is an ndarray asks whether it is a ``numpy.ma.MaskedArray`` (which
  numba rejects), and that first import of ``numpy.ma`` costs 25-45 ms. An array whose type is
  exactly ``numpy.ndarray`` is not one, so it is typed without asking; subclasses are typed by
  numba's own function, as before.

Nothing else changes:

- Compiling is as before. numba's compiler readies its registries itself before compiling
  (``numba.core.compiler.CompilerBase``), so a kernel missing from the cache, or a strategy's own
  kernel compiled in a worker, compiles exactly as it would have.
- The machine code is the same either way, so results are the same bits (the reproducibility
  tests compare workers, which load the lean way, with the in-process executor, which does not).
- Only the processes that call ``install`` are changed (bt's workers and the fork server, through
  ``backtest.worker.tuning.warm_up``; never a program that imports bt as a library), and not at
  all with ``BT_NUMBA_FULL_LOAD=1``, on a numba release it is not tested with (``TESTED_NUMBA``)
  or where numba lacks the internals this relies on: then kernels load the ordinary way.
"""

from __future__ import annotations

import os
import sys
from typing import Any

FULL_LOAD_ENV = "BT_NUMBA_FULL_LOAD"

#: numba releases (major.minor) whose internals this module is tested with. Any other numba
#: loads kernels the ordinary way. ``pyproject.toml`` caps numba just above the newest of these,
#: and a test fails when the two disagree: moving the cap means testing the lean load on the new
#: release and adding it here.
TESTED_NUMBA = ("0.68",)


def cached(dispatcher: Any) -> bool:
    """Whether numba's cache holds compiled code of ``dispatcher`` (a ``@njit(cache=True)``
    kernel) that is current with its source: its index exists, matches the source file's stamp,
    and lists at least one signature. False on a numba release this module is not tested with,
    or whenever numba's internals are not as expected (the caller then compiles to be sure)."""
    import numba

    if not tested(numba.__version__):
        return False
    try:
        return bool(dispatcher._cache._cache_file._load_index())
    except Exception:
        return False


def tested(version: str) -> bool:
    """Whether numba ``version`` is one the lean load is tested with."""
    return ".".join(version.split(".")[:2]) in TESTED_NUMBA


def install() -> bool:
    """Make cached kernels load without readying numba's compiler, in this process; whether they
    now do. Idempotent. Only on a tested numba (``TESTED_NUMBA``)."""
    if os.environ.get(FULL_LOAD_ENV):
        return False
    import numba

    if not tested(numba.__version__):
        return False
    try:
        from numba.core.caching import FunctionCache
        from numba.core.cpu import CPUContext
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
        _initialize_runtime(self.cache_path, target_context)  # what loaded code uses of numba's refresh
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)
        return None  # the guard swallowed a spurious I/O error: numba then compiles, as it would

    load_overload.__doc__ = ordinary.__doc__
    _lean_environments()
    _lean_ndarray_typeof()
    FunctionCache.load_overload = load_overload  # type: ignore[method-assign]
    FunctionCache._bt_lean = True  # type: ignore[attr-defined]
    return True


def _initialize_runtime(folder: str | None, ctx: Any) -> None:
    """``rtsys.initialize(ctx)``, with the runtime's machine code loaded from ``folder`` (the cache
    folder of the kernel being loaded) when it is there, else compiled as numba does and saved
    there. Compiling it is 25-35 ms of every worker's start; loading it, ~1.5 ms."""
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.runtime import rtsys

    if getattr(rtsys, "_init", False):
        return None
    with global_compiler_lock:
        if getattr(rtsys, "_init", True):
            rtsys.initialize(ctx)  # done already, or a numba whose runtime changed shape
            return None
        try:
            from llvmlite import binding as ll
            from numba.core import config
            from numba.core.runtime import _nrt_python, nrtdynmod  # type: ignore[attr-defined]
        except ImportError:  # pragma: no cover - a numba whose runtime changed shape
            rtsys.initialize(ctx)
            return None
        if config.NRT_STATS:  # type: ignore[attr-defined]
            _nrt_python.memsys_enable_stats()
        for py_name, address in _nrt_python.c_helpers.items():  # as numba's initialize does
            ll.add_symbol(py_name if py_name.startswith("_") else "NRT_" + py_name, address)
        codegen = ctx.codegen()
        path = _runtime_file(folder, codegen, config, ll)
        library = _load_runtime(path, codegen)
        if library is None:
            ir_module, library = nrtdynmod.create_nrt_module(ctx)
            library.enable_object_caching()  # keeps the machine code, to save it
            library.add_ir_module(ir_module)
            library.finalize()
            _save_runtime(path, library)
        rtsys._library = library
        rtsys._init = True
        return None


_RUNTIME_MAGIC = b"bt-nrt-1\n"


def _runtime_file(folder: str | None, codegen: Any, config: Any, ll: Any) -> str | None:
    """The file for the runtime's machine code: named by what decides that code (numba's and
    LLVM's versions, the target machine, the optimisation level), as numba's own cache is."""
    if not folder:
        return None
    import llvmlite
    import numba

    from backtest.hashing import sha256_hex

    decided = repr((numba.__version__, llvmlite.__version__, ll.llvm_version_info, codegen.magic_tuple(),
                    str(config.OPT)))
    return os.path.join(folder, f"bt-nrt-{sha256_hex(decided)[:20]}.bin")


def _load_runtime(path: str | None, codegen: Any) -> Any:
    """The runtime's library from ``path``, or None (no file, or one that is not whole: its
    checksum is checked before LLVM sees a byte of it)."""
    import hashlib
    import pickle

    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    head = len(_RUNTIME_MAGIC)
    if data[:head] != _RUNTIME_MAGIC or hashlib.sha256(data[head + 32:]).digest() != data[head:head + 32]:
        return None
    try:
        return codegen.unserialize_library(pickle.loads(data[head + 32:]))  # noqa: S301 - our own file, checked
    except Exception:  # noqa: BLE001 - anything unexpected: compile it instead
        return None


def _save_runtime(path: str | None, library: Any) -> None:
    import hashlib
    import pickle

    if path is None:
        return
    try:
        payload = pickle.dumps(library.serialize_using_object_code())
        os.makedirs(os.path.dirname(path), exist_ok=True)
        from backtest.store.fsutil import atomic_write

        atomic_write(path, _RUNTIME_MAGIC + hashlib.sha256(payload).digest() + payload)
    except (OSError, ValueError, pickle.PicklingError):
        pass  # a read-only cache folder: compile it next time too


def _lean_environments() -> None:
    """Rebuild a loaded kernel's environment without importing the numba module it names."""
    from numba.core import environment

    ordinary = getattr(environment, "_rebuild_env", None)
    if ordinary is None or not hasattr(environment, "lookup_environment"):  # pragma: no cover - other numba
        return
    Environment = environment.Environment

    def _rebuild_env(modname: Any, consts: Any, env_name: str) -> Any:
        if not isinstance(modname, str) or not modname.startswith("numba.") or modname in sys.modules:
            return ordinary(modname, consts, env_name)
        env = environment.lookup_environment(env_name)
        if env is not None:
            return env
        env = Environment({"__name__": modname})  # what nopython code reads of it: nothing
        env.consts[:] = consts
        env.env_name = env_name
        Environment._memo[env_name] = env
        return env

    # pickle finds the function by its module and name when it loads a cached kernel's state
    environment._rebuild_env = _rebuild_env


def _lean_ndarray_typeof() -> None:
    """Type exact ndarrays without importing ``numpy.ma`` (numba's function asks whether each is
    a masked array)."""
    import numpy as np
    from numba.core import errors, types
    from numba.core.typing.typeof import typeof_impl
    from numba.np import numpy_support

    ordinary = typeof_impl.dispatch(np.ndarray)

    def _typeof_ndarray(val: Any, c: Any) -> Any:
        if type(val) is not np.ndarray:
            return ordinary(val, c)
        try:
            dtype = numpy_support.from_dtype(val.dtype)
        except errors.NumbaNotImplementedError:
            raise errors.NumbaValueError(f"Unsupported array dtype: {val.dtype}") from None
        return types.Array(dtype, val.ndim, numpy_support.map_layout(val), readonly=not val.flags.writeable)

    typeof_impl.register(np.ndarray)(_typeof_ndarray)
