"""The sandbox a worker enters before it runs any strategy code (``bt run --sandbox on``).

A worker imports and warms up first, then, while it still has a single thread, takes away what
strategy code must not have. Each step uses what the kernel offers and records what it got
(``Protections``), so that ``bt run`` and ``bt hosts check`` can say what a host really has:

- **environment**: the worker's parent (the local executor, or the host agent's launcher) starts
  it with an allow-listed environment (``ENV_KEEP``, ``clean_env``); here ``HOME`` and ``TMPDIR``
  point into a scratch folder of the worker's own.
- **scratch**: ``<tmp>/bt-sandbox-<pid>/home`` is the only folder strategy code may write; it is
  emptied after every shard and removed with the worker (or by the next worker, if it was killed).
- **memory**: an address-space cap (``RLIMIT_AS``); by default what the worker has mapped after
  its imports plus its share of the machine's memory (``MEMORY_SHARE`` of it, divided by the
  workers on the machine).
- **processes**: the worker becomes a child subreaper, so that everything strategy code starts,
  daemons that called ``setsid`` included, stays its descendant and is killed after each shard;
  the number of processes is capped by a ``pids`` cgroup where one can be made (root, or a
  delegated cgroup), else by ``RLIMIT_NPROC`` inside the worker's own user namespace.
- **network**: a new network namespace with no interfaces up (``unshare``; for a user other than
  root inside a new user namespace, mapped to the same user); Landlock (ABI >= 4) also refuses TCP.
  Python's audit hook turns a socket call into one clear error.
- **files**: Landlock (Linux >= 5.13): read-only access to Python, bt and its dependencies (the
  import path), the system's libraries and the bars; write access to the scratch folder and to
  what bt itself writes in the worker (the results store and the bars cache of this machine);
  nothing else (no home folder, no ``/proc`` but the worker's own ``/proc/<pid>``, no other
  process's signals where the ABI scopes them).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import shutil
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backtest.store.fsutil import process_alive

#: Environment variables a worker keeps (exact names); every other one is dropped, secrets
#: included (``SSH_AUTH_SOCK``, cloud keys, tokens): an allow-list, not a deny-list.
ENV_KEEP = (
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME", "PWD", "TMPDIR", "VIRTUAL_ENV",
    "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONFAULTHANDLER", "PYTHONDONTWRITEBYTECODE",
    "PYTHONUTF8", "PYTHONIOENCODING", "PYTHONWARNINGS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
    "OMP_NUM_THREADS", "BT_TRACE", "BT_BARS_CACHE_MB", "BT_NUMBA_FULL_LOAD",
)
#: ... and every variable whose name starts with one of these (locale and numba settings).
ENV_KEEP_PREFIXES = ("LC_", "NUMBA_")

#: Processes (threads included) one worker and everything it starts may have at once.
MAX_PROCESSES = 128
#: The fraction of the machine's memory the default caps of its workers add up to.
MEMORY_SHARE = 0.8

NETWORK_DENIED = "network access is disabled for strategies by bt's sandbox; run with --sandbox off to allow it"


#: Names of more variables to keep, comma-separated, for strategies that need them (it is kept too).
KEEP_ENV = "BT_SANDBOX_KEEP"


def _kept(env: dict[str, str]) -> set[str]:
    return {*ENV_KEEP, KEEP_ENV, *(n.strip() for n in env.get(KEEP_ENV, "").split(",") if n.strip())}


def keep_env_arg() -> str:
    """The host agent's ``launch --keep-env=...`` option that applies ``ENV_KEEP`` (and the names
    in this process's ``BT_SANDBOX_KEEP``) on an SSH host."""
    return "--keep-env=" + ",".join([*sorted(_kept(dict(os.environ))), *(f"{p}*" for p in ENV_KEEP_PREFIXES)])


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with only the variables a sandboxed worker keeps."""
    keep = _kept(env)
    return {k: v for k, v in env.items() if k in keep or k.startswith(ENV_KEEP_PREFIXES)}


@dataclass
class Protections:
    """What a worker's sandbox actually has (None: not available on this host)."""

    network: str | None = None
    files: str | None = None
    processes: str | None = None
    memory: int | None = None  # the address-space cap, bytes
    environment: str | None = None
    problems: tuple[str, ...] = ()  # why a protection is missing, when the kernel said why

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = list(self.problems)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Protections:
        return cls(**{**d, "problems": tuple(d.get("problems") or ())})

    def describe(self) -> str:
        """One line, e.g. ``network off (namespace), files Landlock v7, processes ≤ 128 (cgroup)``."""
        gb = f"memory ≤ {self.memory / 2**30:.1f} GB" if self.memory else "memory not capped"
        parts = [f"network off ({self.network})" if self.network else "network NOT blocked",
                 f"files {self.files}" if self.files else "files NOT restricted",
                 f"processes {self.processes}" if self.processes else "processes NOT contained", gb,
                 f"environment {self.environment}" if self.environment else "environment NOT cleaned"]
        return ", ".join(parts)


# --- the kernel's interfaces, through libc ------------------------------------------------------

_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 36, 38
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000

# Landlock's access rights (linux/landlock.h), by the ABI version that added them
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_V1 = (1 << 13) - 1  # EXECUTE ... MAKE_SYM
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV  # what a file (not a folder) may hold


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def landlock_abi() -> int:
    """Landlock's ABI version on this kernel (0: none, or disabled)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        return max(0, int(_c().syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))))
    except (OSError, AttributeError):  # pragma: no cover - no libc syscall()
        return 0


# --- the steps ----------------------------------------------------------------------------------


def sandbox_dir(pid: int, base: str | None = None) -> Path:
    """A worker's private folder: ``home/`` (its scratch) and ``strategies/`` (its strategies' files)."""
    return Path(base or tempfile.gettempdir()) / f"bt-sandbox-{pid}"


def remove_stale(base: str | None = None, prefix: str = "bt-sandbox-") -> None:
    """Remove the folders (``<prefix><pid>``) of workers that are gone (killed before they could)."""
    folder = Path(base or tempfile.gettempdir())
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        try:
            pid = int(name[len(prefix):])
        except ValueError:
            continue
        if not process_alive(pid):
            shutil.rmtree(folder / name, ignore_errors=True)


def _memory_cap(max_memory: int | None, share: int) -> int | None:
    """The address-space cap: ``max_memory`` when given (0: none), else what this process has
    mapped now plus its share of the machine's memory."""
    if max_memory is not None:
        return max_memory or None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as fh:
            mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None
    return mapped + int(pages * MEMORY_SHARE / max(1, share))


def _pids_cgroup() -> Path | None:
    """This process's ``pids`` cgroup folder, if this process may make cgroups in it."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/pids") / path.lstrip("/")
            if (folder / "cgroup.procs").exists():
                return folder if os.access(folder, os.W_OK) else None
        if controllers == "":  # cgroup v2: pids must be enabled for the children of this one
            folder = Path("/sys/fs/cgroup") / path.lstrip("/")
            try:
                enabled = (folder / "cgroup.subtree_control").read_text().split()
            except OSError:
                continue
            if "pids" in enabled and os.access(folder, os.W_OK):
                return folder
    return None


def remove_empty_cgroups(parent: Path | None = None) -> None:
    """Remove the ``bt-worker-*`` cgroups of workers that are gone (a cgroup can be removed only
    when no process is left in it, so a live worker's stays)."""
    parent = parent if parent is not None else _pids_cgroup()
    if parent is None:
        return
    for stale in parent.glob("bt-worker-*"):
        try:
            stale.rmdir()
        except OSError:
            pass


def _join_cgroup(parent: Path, limit: int) -> Path:
    """Make ``parent/bt-worker-<pid>`` with ``pids.max`` = ``limit`` and move this process into
    it; empty ones left by workers that are gone are removed on the way."""
    remove_empty_cgroups(parent)
    mine = parent / f"bt-worker-{os.getpid()}"
    mine.mkdir(exist_ok=True)
    (mine / "pids.max").write_text(str(limit))
    (mine / "cgroup.procs").write_text(str(os.getpid()))
    return mine


def _unshare_network() -> str:
    """Enter a new network namespace (in a new user namespace unless root)."""
    c = _c()
    if os.geteuid() == 0:
        _check(c.unshare(_CLONE_NEWNET), "unshare(network)")
        return "namespace"
    uid, gid = os.geteuid(), os.getegid()
    _check(c.unshare(_CLONE_NEWUSER | _CLONE_NEWNET), "unshare(user, network)")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    return "user and network namespace"


def _read_paths(data_root: Path | None) -> list[str]:
    """Folders and files strategy code may read: Python, bt and its dependencies (the import
    path, minus the home folder itself, its parents and the current folder), system libraries,
    and the data root's bars."""
    home = os.path.realpath(os.path.expanduser("~"))
    cwd = os.path.realpath(os.getcwd())
    out = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    out.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bt's own package
    for entry in sys.path:
        real = os.path.realpath(entry or ".")
        if not os.path.isdir(real) or real == cwd or home == real or home.startswith(real.rstrip("/") + "/"):
            continue
        out.add(real)
    for mod in list(sys.modules.values()):  # packages found by import hooks (editable installs)
        f = getattr(mod, "__file__", None)
        if f and "." not in getattr(mod, "__name__", "."):
            out.add(os.path.dirname(os.path.realpath(f)))
    out.update(["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/localtime",
                "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/dev/urandom", "/dev/random", "/dev/zero"])
    if data_root is not None:
        out.add(str(data_root / "bars"))
    if os.environ.get("NUMBA_CACHE_DIR"):  # numba's cache, where it was redirected (read-only here)
        out.add(os.environ["NUMBA_CACHE_DIR"])
    return sorted(p for p in out if p and p != "/" and os.path.exists(p))


def _landlock(abi: int, read: list[str], write: list[str]) -> str:
    """Restrict this process (and everything it starts) to reading ``read`` and writing
    ``write``; with ABI >= 4 no TCP either, with ABI >= 6 no signals to processes outside."""
    c = _c()
    fs = _FS_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) | (_FS_IOCTL_DEV if abi >= 5 else 0)
    attr = _RulesetAttr(fs, (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _check(c.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                               ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        reading = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
        rules = [(p, reading) for p in read] + [(p, fs) for p in write]
        rules.append(("/dev/null", _FS_READ_FILE | _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0)))
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not os.path.isdir(path):
                    rights &= _FILE_RIGHTS
                rule = _PathBeneathAttr(rights & fs, fd)
                _check(c.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule),
                                 ctypes.c_uint32(0)), f"landlock_add_rule({path})")
            finally:
                os.close(fd)
        _check(c.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
        _check(c.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return f"Landlock v{abi}"


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in _NET_EVENTS:
        if event in ("socket.connect", "socket.bind", "socket.sendto") and args and getattr(args[0], "family", None) == 1:
            return  # AF_UNIX: not the network (the file rules apply)
        raise PermissionError(errno.EACCES, NETWORK_DENIED)


_NET_EVENTS = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
                         "socket.gethostbyname", "socket.gethostbyaddr"})


class Sandbox:
    """A worker's sandbox, once entered (``enter``): its scratch folder and what it has."""

    def __init__(self, folder: Path, protections: Protections, cgroup: Path | None) -> None:
        self.folder = folder
        self.home = folder / "home"
        self.protections = protections
        self.cgroup = cgroup
        self.staging: Path | None = None  # where result files go for the coordinator to move in

    def after_shard(self) -> None:
        """Kill whatever strategy code started and empty the scratch folder."""
        kill_descendants(self.cgroup)
        for entry in os.scandir(self.home):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass

    def close(self) -> None:
        kill_descendants(self.cgroup)
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)

    def explain(self, exc: BaseException) -> str | None:
        """A clearer line for a task that failed on what the sandbox took away, else None."""
        seen: set[int] = set()
        e: BaseException | None = exc
        while e is not None and id(e) not in seen:
            seen.add(id(e))
            if isinstance(e, MemoryError) and self.protections.memory:
                return (f"the task ran out of its worker's memory cap ({self.protections.memory / 2**30:.1f} GB); "
                        "--max-memory raises it, --max-memory 0 lifts it")
            if isinstance(e, OSError):
                if e.errno in (errno.ENETUNREACH, errno.ENETDOWN, errno.EADDRNOTAVAIL) or NETWORK_DENIED in str(e):
                    return NETWORK_DENIED
                if e.errno == errno.EAGAIN and self.protections.processes and "fork" in _where(e):
                    return (f"the sandbox allows a worker {MAX_PROCESSES} processes at once, and the strategy "
                            "wanted more; run with --sandbox off to lift the limit")
                if (e.errno in (errno.EACCES, errno.EPERM) and self.protections.files and e.filename
                        and _permitted(str(e.filename))):
                    return (f"the sandbox does not let strategies touch {e.filename}: they may read Python, bt, "
                            f"their libraries and the bars, and write only $HOME ({self.home}, emptied after each "
                            "shard); run with --sandbox off to lift it")
            e = e.__cause__ or e.__context__
        return None


def _permitted(path: str) -> bool:
    """Whether the file's own permissions would let this process at it (``access`` does not see
    Landlock): then it is the sandbox that refused, not the file's mode."""
    if os.path.exists(path):
        return os.access(path, os.R_OK)
    return os.access(os.path.dirname(path) or ".", os.W_OK)


def _where(e: BaseException) -> str:
    import traceback

    return "".join(traceback.format_tb(e.__traceback__)) + str(e)


def kill_descendants(cgroup: Path | None = None, keep: set[int] | frozenset[int] = frozenset()) -> int:
    """SIGKILL every process this one started but those in ``keep``, their children too (orphans
    come back to this process, a child subreaper), and reap them; how many were killed."""
    killed = 0
    me = os.getpid()
    for _ in range(1000):
        pids = _children() - set(keep)
        if cgroup is not None:
            try:
                pids |= {int(p) for p in (cgroup / "cgroup.procs").read_text().split()}
            except (OSError, ValueError):
                pass
        pids.discard(me)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        _reap(keep)
    _reap(keep)
    return killed


def _children() -> set[int]:
    out: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{os.getpid()}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/children") as fh:
                out.update(int(p) for p in fh.read().split())
        except (OSError, ValueError):
            pass
    return out


def _reap(keep: set[int] | frozenset[int] = frozenset()) -> None:
    """Reap the children that ended, but those in ``keep`` (the fork server reaps its workers itself)."""
    for pid in _children() - set(keep) if keep else [-1]:
        while True:
            try:
                got, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if got == 0 or pid != -1:
                break


def discard(pid: int, base: str | None = None) -> None:
    """Remove a worker's private folder once it is gone (``sandbox_dir``)."""
    shutil.rmtree(sandbox_dir(pid, base), ignore_errors=True)


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children (Linux ≥ 3.4)."""
    try:
        return bool(_c().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # pragma: no cover
        return False


def enter(*, data_root: Path | None, writable: list[Path], max_memory: int | None, share: int,
          readable: list[Path] | None = None) -> Sandbox:
    """Enter the sandbox; call once, with a single thread, before any strategy code is loaded.
    ``writable``: the folders bt itself writes in this worker besides the scratch folder (the
    results store, the bars cache); ``max_memory``: the cap in bytes (None: the default, 0: none);
    ``share``: how many workers share this machine's memory."""
    problems: list[str] = []
    p = Protections()
    base = os.environ.get("TMPDIR") or tempfile.gettempdir()
    remove_stale(base)
    folder = sandbox_dir(os.getpid(), base)
    home = folder / "home"
    home.mkdir(parents=True, exist_ok=True)
    (folder / "strategies").mkdir(exist_ok=True)
    for name in ("HOME", "TMPDIR", "TMP", "TEMP"):
        os.environ[name] = str(home)
    os.environ["BT_CACHE"] = str(folder)  # strategies' files go to <folder>/strategies
    tempfile.tempdir = None
    kept = clean_env(dict(os.environ))
    dropped = [k for k in os.environ if k not in kept and k not in ("TMP", "TEMP", "BT_CACHE")]
    for k in dropped:
        del os.environ[k]
    p.environment = "allow-list"
    if not sys.platform.startswith("linux"):
        return Sandbox(folder, Protections(memory=_set_memory(max_memory, share), environment="allow-list",
                                           problems=("not Linux: only the memory cap and the environment apply",)),
                       None)
    if _threads() > 1:
        problems.append(f"the worker had {_threads()} threads when it entered the sandbox")
    cgroup = None
    reaper = become_subreaper()
    pids = _pids_cgroup()
    if pids is not None:
        try:
            cgroup = _join_cgroup(pids, MAX_PROCESSES)
        except OSError as exc:
            problems.append(f"pids cgroup: {exc}")
    try:
        p.network = _unshare_network()
    except OSError as exc:
        problems.append(f"network namespace: {exc.strerror or exc}")
    if cgroup is not None:
        p.processes = f"≤ {MAX_PROCESSES} (cgroup)"
    elif os.geteuid() != 0 and p.network == "user and network namespace":
        resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
        p.processes = f"≤ {MAX_PROCESSES} (user namespace)"
    elif reaper:
        problems.append("process count: no pids cgroup to use, and RLIMIT_NPROC does not bind root")
    if reaper:
        p.processes = f"{p.processes} and reaped" if p.processes else "reaped, their number NOT limited"
    p.memory = _set_memory(max_memory, share)  # while /proc/self/statm can still be read
    abi = landlock_abi()
    if abi:
        write = [str(folder)] + [str(w) for w in writable]
        for w in [*writable, *(readable or [])]:  # a rule needs the folder: files may come later
            w.mkdir(parents=True, exist_ok=True)
        read = (_read_paths(data_root) + [str(r) for r in readable or []] + [f"/proc/{os.getpid()}"]
                + ([str(cgroup)] if cgroup else []))
        try:
            p.files = _landlock(abi, read, write)
        except OSError as exc:
            problems.append(f"Landlock: {exc.strerror or exc}")
        else:
            if abi >= 4 and p.network is None:
                p.network = "Landlock: TCP only"
    else:
        problems.append("Landlock: not in this kernel (Linux >= 5.13 with landlock among its LSMs)")
    if p.files:
        _numba_saves_quietly()
    if p.network is not None:
        sys.addaudithook(_audit)
    p.problems = tuple(problems)
    return Sandbox(folder, p, cgroup)


def _numba_saves_quietly() -> None:
    """In the sandbox numba's cache folders (beside bt's and the libraries' sources) are
    read-only: a kernel compiled here stays in memory instead of failing its task. (bt's own
    kernels were loaded or compiled, and cached, before the sandbox: ``tuning.warm_up``.)"""
    from numba.core import caching

    save = caching.Cache.save_overload

    def save_overload(self: Any, sig: Any, data: Any) -> None:
        try:
            save(self, sig, data)
        except OSError:
            pass

    caching.Cache.save_overload = save_overload  # type: ignore[method-assign]


def _set_memory(max_memory: int | None, share: int) -> int | None:
    cap = _memory_cap(max_memory, share)
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap


@dataclass
class SandboxOptions:
    """A worker's sandbox, as its command line asks for it (``python -m backtest.worker --sandbox``)."""

    data_root: Path | None
    results: Path | None  # the bt root whose results store this worker writes, if it does
    max_memory: int | None
    share: int
    readable: list[Path] = field(default_factory=list)  # more folders of bars (an SSH host's shipped files)

    def enter(self) -> Sandbox:
        writable, readable, staging = [], list(self.readable), None
        if self.results is not None:  # the store is read-only: packs are staged for the coordinator
            staging = staging_dir(self.results, os.getpid())
            remove_stale(str(staging.parent), prefix="")
            writable.append(staging)
            readable.append(self.results / "results")
        if self.data_root is not None:
            from backtest.data.bars_cache import folder

            writable.append(folder(self.data_root))
        box = enter(data_root=self.data_root, writable=writable, max_memory=self.max_memory, share=self.share,
                    readable=readable)
        box.staging = staging
        return box


def staging_dir(results_root: Path, pid: int) -> Path:
    """Where the sandboxed worker ``pid`` puts the packs of results it made, for its coordinator
    to move into the store of ``results_root`` (``ResultStore.accept_pack``): in the store's own
    folder, so that the move is a rename."""
    return results_root / "results" / ".staging" / str(pid)
