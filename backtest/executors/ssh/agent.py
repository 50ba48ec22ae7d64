"""The host side of bootstrap and shipping: a stdlib-only script run as ``python3 -c SOURCE CMD``.

It is sent with every call (a few KB), so nothing has to be installed on a host first. It writes
only under the host's cache dir (``~/.cache/bt``)::

    objects/<sha[:2]>/<sha>     shipped files, by the sha256 of their bytes
    envs/<key>/                 a venv of the pinned dependencies; ``.bt-ready`` written last
    code/<key>/                 the unpacked bt wheel (on PYTHONPATH); ``.bt-ready`` written last;
                                compiled kernels carried over from a copy with the same kernels
    procs/<pgid>                process groups started by ``open_stream`` (for reaping)

Commands (JSON on stdout, one object or one per line):

- ``probe ENV_KEY CODE_KEY [TRIM]``: Python version, platform, cores, and whether the keyed env and
  code are complete; with TRIM, ``trim TRIM`` first (its answer under ``trimmed``). Written in old syntax so that a too-old Python can still say what it is.
- ``have``: stdin is a JSON list of sha256; prints ``{sha: size}`` of those present.
- ``receive``: stdin is, per file, a header line ``{"sha","size","z"}`` then chunks each
  prefixed by a 4-byte big-endian length, then a zero length (zlib stream when z); each file is hashed as it is written and only a file whose sha256 and size
  match is moved into place; prints one ``{"sha","ok"[,"got"]}`` line per frame.
- ``install``: stdin is a JSON plan (see ``backtest.executors.ssh.bootstrap``); builds what is missing
  under a lock; prints the fingerprint.
- ``trim LIMIT``: delete the shipped files used longest ago until they take at most LIMIT bytes
  (skipped while a bt worker runs here); ``have`` marks the files it finds as used now.
- ``launch ARGV...``: used by ``open_stream``; setsid, record the pgid, run ARGV, and kill the
  whole group when the SSH channel goes away.
"""

# Keep this file runnable by Python 3.6+: no walrus, no match, no "X | Y" annotations at runtime.
import hashlib
import json
import os
import sys

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "bt")
FINGERPRINT_DISTS = ("bt-farm", "numpy", "numba", "pyarrow", "duckdb")


def _out(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def _ready(path):
    marker = os.path.join(path, ".bt-ready")
    try:
        with open(marker) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def probe(env_key, code_key, trim_limit=None):
    import platform
    import sysconfig

    trimmed = _trim(int(trim_limit)) if trim_limit is not None else None

    env_dir = os.path.join(CACHE, "envs", env_key)
    env = _ready(env_dir)
    if env is not None and not os.path.exists(os.path.join(env_dir, "bin", "python")):
        env = None  # the base Python it points to is gone
    _out(
        {
            "version": list(sys.version_info[:3]),
            "executable": sys.executable,
            "implementation": sys.implementation.name,
            "cache_tag": sys.implementation.cache_tag,
            "platform": sysconfig.get_platform(),
            "machine": platform.machine(),
            "libc": list(platform.libc_ver()),
            "cores": _cores(),
            "cache": CACHE,
            "env": env,
            "code": _ready(os.path.join(CACHE, "code", code_key)),
            "disk": _disk(CACHE),
            "trimmed": trimmed,
        }
    )


def _disk(folder):
    """Bytes of the files under ``folder`` (bt's cache on this host)."""
    total = 0
    for top, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
    return total


def _object_path(sha):
    return os.path.join(CACHE, "objects", sha[:2], sha)


def have():
    wanted = json.loads(sys.stdin.read() or "[]")
    present = {}
    for sha in wanted:
        path = _object_path(sha)
        try:
            present[sha] = os.stat(path).st_size
            os.utime(path)  # needed now: the newest to keep when the cache is trimmed
        except OSError:
            pass
    _out(present)


def trim(limit):
    _out(_trim(int(limit)))


def _trim(limit):
    """Delete the shipped files (packages, data) used longest ago until they take at most
    ``limit`` bytes; nothing while a bt worker runs here (it may be reading them)."""
    live = _live_groups()
    if live:
        return {"skipped": f"{len(live)} bt worker group(s) run here"}
    root = os.path.join(CACHE, "objects")
    files = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in files)
    freed = 0
    for _mtime, size, path in sorted(files):
        if total - freed <= limit:
            break
        try:
            os.unlink(path)
            freed += size
        except OSError:
            pass
    return {"freed": freed, "left": total - freed}


def _read_exact(stream, n):
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("stream ended inside a frame")
    return data


def receive():
    import struct
    import zlib

    stream = sys.stdin.buffer
    while True:
        header = stream.readline()
        if not header.strip():
            return
        frame = json.loads(header.decode())
        sha, size = frame["sha"], frame["size"]
        final = _object_path(sha)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = f"{final}.tmp-{os.getpid()}"
        digest = hashlib.sha256()
        count = 0
        inflater = zlib.decompressobj() if frame.get("z") else None
        broken = None
        with open(tmp, "wb") as fh:
            while True:
                (n,) = struct.unpack(">I", _read_exact(stream, 4))
                if n == 0:
                    break
                data = _read_exact(stream, n)
                if broken is not None:
                    continue
                if inflater is not None:
                    try:
                        data = inflater.decompress(data)
                    except zlib.error as exc:
                        broken = str(exc)
                        continue
                digest.update(data)
                count += len(data)
                fh.write(data)
            if inflater is not None and broken is None:
                try:
                    tail = inflater.flush()
                except zlib.error as exc:
                    broken = str(exc)
                else:
                    digest.update(tail)
                    count += len(tail)
                    fh.write(tail)
        got = digest.hexdigest()
        if broken is None and got == sha and count == size:
            os.replace(tmp, final)
            _out({"sha": sha, "ok": True})
        else:
            os.unlink(tmp)
            _out({"sha": sha, "ok": False, "got": got, "size": count, "error": broken})


def _fingerprint_of(python, code_dir):
    import subprocess

    script = (
        "import json, platform, sys\n"
        "from importlib import metadata\n"
        "fp = {'python': '%d.%d' % sys.version_info[:2], 'machine': platform.machine()}\n"
        "for name in DISTS:\n"
        "    try:\n"
        "        fp[name] = metadata.version(name)\n"
        "    except metadata.PackageNotFoundError:\n"
        "        fp[name] = None\n"
        "print(json.dumps(fp))\n"
    ).replace("DISTS", repr(FINGERPRINT_DISTS))
    env = dict(os.environ)
    if code_dir:
        env["PYTHONPATH"] = code_dir
    out = subprocess.check_output([python, "-c", script], env=env)
    return json.loads(out.decode())


def _link_named(workdir, files):
    """Symlink objects under their real file names (pip needs wheel names)."""
    os.makedirs(workdir, exist_ok=True)
    paths = []
    for item in files:
        path = os.path.join(workdir, item["name"])
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(_object_path(item["sha"]), path)
        paths.append(path)
    return paths


def _build_env(plan, env_dir):
    import shutil
    import subprocess

    if os.path.exists(env_dir):
        shutil.rmtree(env_dir)  # an earlier attempt died before its marker
    subprocess.check_call([sys.executable, "-m", "venv", "--without-pip", env_dir], stdout=sys.stderr)
    python = os.path.join(env_dir, "bin", "python")
    work = os.path.join(env_dir, ".wheels")
    pip = _link_named(work, [plan["pip"]])[0]
    cmd = [python, os.path.join(pip, "pip"), "install", "--no-deps", "--disable-pip-version-check"]
    cmd += ["--no-input", "--no-warn-script-location", "--no-compile", "--quiet"]
    if plan["mode"] == "wheelhouse":
        cmd += ["--no-index"] + _link_named(work, plan["wheels"])
    else:
        cmd += ["--only-binary=:all:"] if plan.get("only_binary") else []
        cmd += plan["pins"]
    env = dict(os.environ)
    if plan["mode"] == "wheelhouse":
        env["PIP_CONFIG_FILE"] = os.devnull  # no index, no find-links from the host's config
    subprocess.check_call(cmd, stdout=sys.stderr, env=env)
    shutil.rmtree(work)
    fingerprint = _fingerprint_of(python, None)
    fingerprint.pop("bt-farm", None)
    _write_marker(env_dir, {"fingerprint": fingerprint, "pins": plan.get("pins", [])})


#: the modification time of every unpacked bt file (the zip entries' own date): numba's cache
#: checks a kernel's source file by its time and size, so with a fixed time a copy of unchanged
#: kernel sources accepts the machine code compiled for an earlier copy
SOURCE_TIME = 315532800  # 1980-01-01 UTC


def _kernel_sources(code_dir):
    """The sha256 of bt's kernel sources in an unpacked copy (``backtest/engine/*.py``: kernels
    inline each other across these files, so they are judged together), or None."""
    engine = os.path.join(code_dir, "backtest", "engine")
    try:
        names = sorted(n for n in os.listdir(engine) if n.endswith(".py"))
    except OSError:
        return None
    h = hashlib.sha256()
    for name in names:
        with open(os.path.join(engine, name), "rb") as fh:
            h.update(name.encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def _carry_kernels(new_dir):
    """Copy the compiled kernels of the newest other copy of bt whose kernel sources are the same
    into ``new_dir``: a change to bt elsewhere does not make the host compile them again. Returns
    how many files were copied."""
    import shutil

    wanted = _kernel_sources(new_dir)
    code = os.path.join(CACHE, "code")
    others = []
    for name in os.listdir(code) if os.path.isdir(code) else []:
        path = os.path.join(code, name)
        cache = os.path.join(path, "backtest", "engine", "__pycache__")
        if path != new_dir and os.path.isdir(cache) and _ready(path) is not None:
            others.append((os.path.getmtime(cache), path, cache))
    for _, path, cache in sorted(others, reverse=True):
        if _kernel_sources(path) != wanted:
            continue
        dest = os.path.join(new_dir, "backtest", "engine", "__pycache__")
        os.makedirs(dest, exist_ok=True)
        copied = 0
        for name in os.listdir(cache):
            if name.endswith((".nbi", ".nbc", ".bin")):
                try:
                    shutil.copy2(os.path.join(cache, name), os.path.join(dest, name))
                    copied += 1
                except OSError:
                    pass  # a file being replaced as we copy: that kernel compiles again, no harm
        return copied
    return 0


def _build_code(plan, code_dir):
    import shutil
    import zipfile

    tmp = f"{code_dir}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    with zipfile.ZipFile(_object_path(plan["code"]["sha"])) as zf:
        zf.extractall(tmp)
    for root, _, files in os.walk(tmp):
        for name in files:
            os.utime(os.path.join(root, name), (SOURCE_TIME, SOURCE_TIME))
    carried = _carry_kernels(tmp)
    _write_marker(tmp, {"name": plan["code"]["name"], "version": plan["code"]["version"], "kernels": carried})
    if os.path.exists(code_dir):
        shutil.rmtree(code_dir)
    os.rename(tmp, code_dir)


def _write_marker(path, obj):
    marker = os.path.join(path, ".bt-ready")
    with open(marker + ".tmp", "w") as fh:
        json.dump(obj, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(marker + ".tmp", marker)


def install():
    import fcntl

    plan = json.loads(sys.stdin.read())
    env_dir = os.path.join(CACHE, "envs", plan["env_key"])
    code_dir = os.path.join(CACHE, "code", plan["code_key"])
    os.makedirs(os.path.dirname(env_dir), exist_ok=True)
    os.makedirs(os.path.dirname(code_dir), exist_ok=True)
    with open(env_dir + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two coordinators bootstrapping at once: one builds
        if _ready(env_dir) is None:
            _build_env(plan, env_dir)
    with open(code_dir + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ready(code_dir) is None:
            _build_code(plan, code_dir)
    fingerprint = _fingerprint_of(os.path.join(env_dir, "bin", "python"), code_dir)
    _out({"env": env_dir, "code": code_dir, "fingerprint": fingerprint})


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_groups():
    """The process groups of bt workers still running here."""
    procs = os.path.join(CACHE, "procs")
    return [int(name) for name in (os.listdir(procs) if os.path.isdir(procs) else [])
            if name.isdigit() and _alive(int(name))]


def clean(env_key, code_key, everything):
    """Delete what bt keeps on this host and no longer needs: environments and copies of bt other
    than the current ones (``env_key``, ``code_key``), shipped files (packages, data: shipped again
    when a run needs them), strategy copies, and the records of worker groups that are gone; with
    ``everything`` ("all"), the whole cache. Refused while a bt worker runs here."""
    import shutil

    live = _live_groups()
    if live:
        _out({"refused": f"{len(live)} bt worker group(s) run here (pgid {live[0]}); clean when no run uses the host"})
        return
    before = _disk(CACHE)
    removed = []

    def drop(path):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(os.path.relpath(path, CACHE))
        except FileNotFoundError:
            pass

    if everything == "all":
        for name in os.listdir(CACHE) if os.path.isdir(CACHE) else []:
            drop(os.path.join(CACHE, name))
    else:
        keep = {"envs": {env_key, env_key + ".lock"}, "code": {code_key, code_key + ".lock"}}
        for sub, kept in keep.items():
            folder = os.path.join(CACHE, sub)
            for name in os.listdir(folder) if os.path.isdir(folder) else []:
                if name not in kept:
                    drop(os.path.join(folder, name))
        for sub in ("objects", "strategies", "procs"):
            drop(os.path.join(CACHE, sub))
    _out({"freed": max(0, before - _disk(CACHE)), "removed": removed, "left": _disk(CACHE)})


def _kept(name, keep):
    return any(name == k or (k.endswith("*") and name.startswith(k[:-1])) for k in keep)


def _subreaper():
    """Make orphaned descendants our children (prctl PR_SET_CHILD_SUBREAPER), so that what a
    sandboxed worker started and left behind (a daemon that called setsid) can be killed."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
    except Exception:
        return False


def _kill_children():
    """SIGKILL every child of ours (orphans that came back to us), until none is left. A
    standalone copy of backtest.worker.sandbox.kill_descendants: this script imports no bt."""
    import signal

    for _ in range(1000):
        pids = set()  # type: set[int]
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/children") as fh:
                    pids.update(int(p) for p in fh.read().split())
            except (OSError, ValueError):
                pass
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass


def launch(argv):
    """setsid; run argv as a child in this process group; kill the group when the channel goes.

    ``--keep-env=NAME,PREFIX*,...`` first: the child gets only those variables of the environment
    (a sandboxed worker: ``backtest.worker.sandbox.ENV_KEEP``), and this launcher becomes a child
    subreaper that kills whatever the child left behind when it ends.

    The channel's stdout is a pipe from sshd: when the client closes the channel or the
    connection dies and sshd notices, its read end closes and poll() on our fd 1 reports an error.
    """
    import select
    import signal
    import time

    keep = None
    if argv and argv[0].startswith("--keep-env="):
        keep = argv[0].split("=", 1)[1].split(",")
        argv = argv[1:]
        _subreaper()

    # A process group of our own, whose id we record. Under sh/dash (and fish) we are a child of
    # the login shell, in its group: setsid() makes one. bash and zsh exec the last command of
    # ``-c`` in place, so we are the session leader sshd made, already leading our own group, and
    # setsid() would fail with EPERM: the group we lead is the one to record.
    if os.getpgid(0) != os.getpid():
        os.setsid()
    pgid = os.getpgid(0)
    procs = os.path.join(CACHE, "procs")
    os.makedirs(procs, exist_ok=True)
    record = os.path.join(procs, str(pgid))
    with open(record, "w") as fh:
        fh.write(json.dumps({"argv": argv, "started": time.time()}))
    sys.stderr.write(f"bt-pgid {pgid}\n")
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        try:
            if keep is None:
                os.execvp(argv[0], argv)
            else:
                os.execvpe(argv[0], argv, dict((k, v) for k, v in os.environ.items() if _kept(k, keep)))
        finally:
            os._exit(127)
    os.close(0)

    def stop_group(signum=None, frame=None):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.time() + 2.0
        while time.time() < deadline:
            try:
                if os.waitpid(child, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        try:
            os.unlink(record)
        except OSError:
            pass
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if keep is not None:
            _kill_children()
        os.killpg(pgid, signal.SIGKILL)  # also ends this watchdog

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, stop_group)
    signal.signal(signal.SIGPIPE, stop_group)
    poller = select.poll()
    poller.register(1, select.POLLERR | select.POLLHUP)
    while True:
        pid, st = os.waitpid(child, os.WNOHANG)
        if pid:
            break
        if poller.poll(200):
            stop_group()
    if keep is not None:
        _kill_children()
        import shutil

        shutil.rmtree(os.path.join(os.environ.get("TMPDIR") or "/tmp", f"bt-sandbox-{child}"), ignore_errors=True)
    try:
        os.unlink(record)
    except OSError:
        pass
    code = os.WEXITSTATUS(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st)
    os._exit(code)


def main(args):
    cmd = args[0] if args else ""
    if cmd == "probe":
        probe(args[1], args[2], args[3] if len(args) > 3 else None)
    elif cmd == "have":
        have()
    elif cmd == "receive":
        receive()
    elif cmd == "install":
        install()
    elif cmd == "launch":
        launch(args[1:])
    elif cmd == "trim":
        trim(args[1])
    elif cmd == "clean":
        clean(args[1], args[2], args[3] if len(args) > 3 else "")
    else:
        sys.stderr.write(f"bt agent: unknown command {cmd!r}\n")
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
