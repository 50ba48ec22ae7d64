"""The coordinator's environment: fingerprint, pinned dependencies, and the wheels that rebuild it.

- ``fingerprint()``: what must be equal on every host for results to be the same bits: Python
  (major.minor: the ABI; patch releases do not change numerics), machine, and the versions of bt
  (with a hash of its source), numpy, numba, pyarrow and duckdb.
- ``pins()``: ``name==version`` of every distribution bt needs, walked from bt's own
  requirements through ``importlib.metadata`` in the running environment (extras and markers
  evaluated), i.e. exactly what is installed here.
- ``wheelhouse()``: wheels of those pins (``pip wheel --no-deps``), built once and cached under
  the coordinator's cache dir, keyed by the pins and the interpreter; ``code_wheel()``: a wheel of
  the running bt, built from its source, keyed by the source's hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from backtest.errors import HostError
from backtest.hashing import file_sha256, token

DIST_NAME = "bt-farm"
_BUILD_LOCK = threading.Lock()  # hosts bootstrapped in parallel threads build the wheels once
FINGERPRINT_DISTS = ("bt-farm", "numpy", "numba", "pyarrow", "duckdb")


def cache_dir() -> Path:
    """The coordinator's cache (``BT_CACHE`` or the platform's user cache dir)."""
    env = os.environ.get("BT_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("bt", appauthor=False))


@lru_cache(maxsize=1)
def pins() -> tuple[str, ...]:
    """Sorted ``name==version`` of bt's installed dependency closure (bt itself excluded)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, str] = {}

    def walk(name: str, extras: frozenset[str]) -> None:
        key = canonicalize_name(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as exc:
            raise HostError(f"bt needs {name!r}, which is not installed here") from exc
        if key in seen:
            return
        seen[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in (extras or {""})]
            if req.marker is None or any(req.marker.evaluate(e) for e in envs):
                walk(req.name, frozenset(req.extras))

    walk(DIST_NAME, frozenset())
    seen.pop(DIST_NAME, None)
    return tuple(sorted(f"{k}=={v}" for k, v in seen.items()))


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[2]  # backtest/


def _code_files() -> list[tuple[str, Path]]:
    root = _package_dir()
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files.append((f"backtest/{path.relative_to(root).as_posix()}", path))
    return files


@lru_cache(maxsize=1)
def code_key() -> str:
    """sha256 over bt's source files (names and bytes) and its distribution metadata."""
    h = hashlib.sha256()
    for arc, path in _code_files():
        h.update(arc.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    h.update(_metadata_text().encode())
    return h.hexdigest()


def _metadata_text() -> str:
    dist = metadata.distribution(DIST_NAME)
    text = dist.read_text("METADATA")
    return text or f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {dist.version}\n"


def bt_version() -> str:
    return f"{metadata.version(DIST_NAME)}+src.{code_key()[:12]}"


@lru_cache(maxsize=1)
def fingerprint() -> dict[str, str]:
    """This environment's fingerprint; hosts must report exactly this."""
    fp = {"python": "{}.{}".format(*sys.version_info[:2]), "machine": platform.machine()}
    for name in FINGERPRINT_DISTS:
        fp[name] = bt_version() if name == DIST_NAME else metadata.version(name)
    return fp


def fingerprint_diff(local: Mapping[str, object], remote: Mapping[str, object]) -> list[str]:
    """``["numpy 2.4.6 here, 1.26.4 there", ...]``; empty when equal."""
    diffs = []
    for key in sorted(set(local) | set(remote)):
        if local.get(key) != remote.get(key):
            there = remote.get(key) or "missing"
            diffs.append(f"{key} {local.get(key) or 'missing'} here, {there} there")
    return diffs


def env_key() -> str:
    """Key of the dependency environment: interpreter ABI, platform and the exact pins."""
    return token(
        {
            "python": "{}.{}".format(*sys.version_info[:2]),
            "cache_tag": sys.implementation.cache_tag,
            "machine": platform.machine(),
            "pins": list(pins()),
        }
    )[:24]


def platform_info() -> dict[str, object]:
    return {
        "cache_tag": sys.implementation.cache_tag,
        "platform": sysconfig.get_platform(),
        "machine": platform.machine(),
        "libc": list(platform.libc_ver()),
    }


@dataclass(frozen=True)
class Wheel:
    name: str
    path: Path
    sha256: str
    size: int

    def as_plan(self) -> dict[str, str]:
        return {"name": self.name, "sha": self.sha256}


def _load_manifest(folder: Path) -> list[Wheel] | None:
    try:
        entries = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    wheels = [Wheel(e["name"], folder / e["name"], e["sha256"], e["size"]) for e in entries]
    if all(w.path.exists() and w.path.stat().st_size == w.size for w in wheels):
        return wheels
    return None


def _publish(folder: Path, tmp: Path) -> list[Wheel]:
    wheels = []
    for path in sorted(tmp.glob("*.whl")):
        wheels.append(Wheel(path.name, folder / path.name, file_sha256(path), path.stat().st_size))
    (tmp / "manifest.json").write_text(
        json.dumps([{"name": w.name, "sha256": w.sha256, "size": w.size} for w in wheels], indent=1)
    )
    try:
        os.rename(tmp, folder)  # whole or not at all; a concurrent builder may have won
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        existing = _load_manifest(folder)
        if existing is None:
            raise
        return existing
    return wheels


def pip_pin() -> str:
    return f"pip=={metadata.version('pip')}"


def wheelhouse() -> list[Wheel]:
    """Wheels of ``pins()`` plus pip itself for this interpreter; built once, then cached."""
    with _BUILD_LOCK:
        return _wheelhouse()


def wheelhouse_dir() -> Path:
    """Where ``wheelhouse()`` is cached: by ``env_key()`` and this interpreter's pip, whose wheel it
    holds too (venvs with the same pins but another pip must not share one)."""
    return cache_dir() / "wheelhouse" / f"{env_key()}-{pip_pin().partition('==')[2]}"


def _wheelhouse() -> list[Wheel]:
    folder = wheelhouse_dir()
    cached = _load_manifest(folder)
    if cached is not None:
        return cached
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q"]
    cmd += ["-w", str(tmp), *pins(), pip_pin()]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise HostError(f"cannot build the wheelhouse of bt's pinned dependencies: {tail}")
    from packaging.utils import canonicalize_name, parse_wheel_filename

    names = {parse_wheel_filename(p.name)[0] for p in tmp.glob("*.whl")}
    missing = [p for p in (*pins(), pip_pin()) if canonicalize_name(p.split("==")[0]) not in names]
    if missing:
        shutil.rmtree(tmp, ignore_errors=True)
        raise HostError(f"the wheelhouse lacks {', '.join(missing)}")
    return _publish(folder, tmp)


def code_wheel() -> Wheel:
    """A wheel of the running bt, built from its source files; cached by ``code_key()``."""
    with _BUILD_LOCK:
        return _code_wheel()


def _code_wheel() -> Wheel:
    version = bt_version()  # 0.1.0+src.<hash>: what importlib.metadata reports on the host
    folder = cache_dir() / "code" / code_key()[:24]
    cached = _load_manifest(folder)
    if cached:
        return cached[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
    dist_info = f"{DIST_NAME.replace('-', '_')}-{version}.dist-info"
    name = f"{DIST_NAME.replace('-', '_')}-{version}-py3-none-any.whl"
    entries: list[tuple[str, bytes]] = [(arc, path.read_bytes()) for arc, path in _code_files()]
    meta = re.sub(r"(?m)^Version: .*$", f"Version: {version}", _metadata_text(), count=1)
    entries.append((f"{dist_info}/METADATA", meta.encode()))
    entries.append(
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: bt\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
    )
    record_lines = []
    for arc, data in entries:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record_lines.append(f"{arc},sha256={digest},{len(data)}")
    record_lines.append(f"{dist_info}/RECORD,,")
    entries.append((f"{dist_info}/RECORD", ("\n".join(record_lines) + "\n").encode()))
    with zipfile.ZipFile(tmp / name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arc, data in entries:
            info = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))  # same bytes every build
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return _publish(folder, tmp)[0]
