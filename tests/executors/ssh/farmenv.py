"""Fast farm hosts for the executor tests: the coordinator's own Python, and a pre-built environment.

Two things make farm hosts slow or different from a local run:

- the hosts' ``python3`` (the system's) may be another patch release than the coordinator's, and
  a result file records the Python version, so results would differ in those bytes;
- a first contact builds a venv of every pinned dependency (~20 s), and every fresh host compiles
  the engine's numba kernels again.

So, once per machine (cached under ``/var/tmp/bt-test-farm``, rebuilt when the pins or bt's code
change), ``shared_python()`` makes a copy of the coordinator's Python that any user can run
(hard links; the executable's RUNPATH pointing into root's home is rewritten to ``$ORIGIN``),
and ``prebuilt()`` builds bt's environment and code with the host-side agent itself
(``install``, run locally as a farm host would), then warms numba's cache in it. ``provision``
points a host's ``~/.cache/bt/{envs,code}/<key>`` at those, so its bootstrap is a second contact.
A real first contact is still exercised: ``test_bootstrap.py`` and
``test_ssh_faults.py::test_first_contact_host_joins_a_running_job``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

from netns_farm import Farm, Host

from backtest.executors.ssh import environment
from backtest.executors.ssh.bootstrap import install_plan
from backtest.executors.ssh.remote import agent_source

ROOT = Path(os.environ.get("BT_TEST_FARM_CACHE", "/var/tmp/bt-test-farm"))
HOME = ROOT / "home"  # the agent's ~ when it builds the shared env and code
CACHE = HOME / ".cache" / "bt"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    ROOT.mkdir(parents=True, exist_ok=True)
    ROOT.chmod(0o755)
    with open(ROOT / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _others_can_run(path: Path) -> bool:
    for part in [path, *path.parents]:
        mode = part.stat().st_mode
        if not mode & stat.S_IXOTH:
            return False
    return True


def shared_python() -> str:
    """A Python of exactly the coordinator's version that every farm user can run."""
    exe = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    if _others_can_run(exe.parent):
        return str(exe)
    base = Path(sys.base_prefix)
    dest = ROOT / f"python-{sys.version.split()[0]}"
    python = dest / exe.relative_to(base)
    with _locked():
        if python.exists():
            return str(python)
        tmp = Path(tempfile.mkdtemp(prefix=".python-", dir=ROOT))
        site = Path(sysconfig.get_paths()["purelib"]).resolve()
        for folder, dirs, files in os.walk(base):
            here = Path(folder)
            target = tmp / here.relative_to(base)
            target.mkdir(exist_ok=True)
            if here == site:  # the coordinator's packages: not needed, hosts get bt's env
                dirs[:] = []
                continue
            for name in files:
                src = here / name
                if src.resolve() == exe:
                    continue
                if src.is_symlink():
                    (target / name).symlink_to(os.readlink(src))
                else:
                    try:
                        os.link(src, target / name)
                    except OSError:  # another filesystem: copy
                        shutil.copy2(src, target / name)
        data = exe.read_bytes()
        old = str(base / "lib").encode() + b"\0"
        if old in data:  # RUNPATH into root's home: make it relative to the executable
            new = b"$ORIGIN/../lib"
            data = data.replace(old, new + b"\0" * (len(old) - len(new)), 1)
        (tmp / exe.relative_to(base)).write_bytes(data)
        (tmp / exe.relative_to(base)).chmod(0o755)
        tmp.chmod(0o755)
        tmp.rename(dest)
    return str(python)


WARM = textwrap.dedent(
    """
    import pathlib, sys, tempfile
    import numpy as np
    from backtest.data import Store
    from backtest.executors.base import ExecutorOptions
    from backtest.executors.inline import InlineExecutor
    from backtest.run import RunRequest, prepare

    root = pathlib.Path(tempfile.mkdtemp())
    store = Store(root)
    for seed, sym in enumerate(["AAA", "BBB"]):
        rng = np.random.default_rng(seed)
        ts = np.datetime64("2019-01-01", "ns").astype(np.int64) + np.arange(700) * 86_400 * 10**9
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, 700)))
        store.import_arrays(sym, ts, close, close * 1.01, close * 0.99, close, np.ones(700))
    faulty = root / "faulty.py"
    faulty.write_text(sys.argv[2])
    for strategy, params in ((pathlib.Path(sys.argv[1]), ["fast=5,10", "slow=20"]), (faulty, ["n=3:4"])):
        prep = prepare(RunRequest(strategy=strategy, params=params, start="2020", end="2021"), root)
        ex = InlineExecutor(ExecutorOptions(data_root=root))
        ex.start(prep.job.strategy)
        ex.submit(prep.shards)
        while not ex.finished():
            for event in ex.poll(0.1):
                if type(event).__name__ in ("TaskFailed", "ShardFailed"):
                    sys.exit(f"warm-up task failed: {event}")
    """
)


def prebuilt(python: str) -> tuple[Path, Path]:
    """bt's environment and code, built by the agent as on a host; numba's cache warmed."""
    env_dir = CACHE / "envs" / environment.env_key()
    code_dir = CACHE / "code" / environment.code_key()[:24]
    with _locked():
        if (env_dir / ".bt-ready").exists() and (code_dir / ".bt-warm").exists():
            return env_dir, code_dir
        wheels, plan = install_plan("wheelhouse", env_ready=(env_dir / ".bt-ready").exists())
        for wheel in wheels:
            obj = CACHE / "objects" / wheel.sha256[:2] / wheel.sha256
            if not obj.exists():
                obj.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(wheel.path, obj)
        env = dict(os.environ, HOME=str(HOME))
        env.pop("PYTHONPATH", None)
        subprocess.run([python, "-c", agent_source(), "install"], input=json.dumps(plan).encode(),
                       env=env, check=True, capture_output=True)
        sma = Path(__file__).resolve().parents[3] / "strategies" / "sma_cross.py"
        FAULTY, STRATEGY_HEAD = _root_conftest_strategy()
        warm_env = dict(env, PYTHONPATH=str(code_dir), NUMBA_NUM_THREADS="1")
        warm_env.pop("PYTHONDONTWRITEBYTECODE", None)  # the hosts' workers find bt compiled too
        done = subprocess.run([str(env_dir / "bin" / "python"), "-c", WARM, str(sma), STRATEGY_HEAD + FAULTY],
                              env=warm_env, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"warming the shared code failed: {done.stderr[-2000:]}")
        for folder in code_dir.rglob("__pycache__"):  # numba caches only where it may write
            folder.chmod(0o777)
        (code_dir / ".bt-warm").write_text("")
        _prune(CACHE / "code", keep=code_dir)
    return env_dir, code_dir


def _root_conftest_strategy() -> tuple[str, str]:
    """The fault-test strategy's text (``tests/helpers.py``, formerly ``tests/conftest.py``)."""
    import importlib.util

    for name in ("helpers.py", "conftest.py"):
        path = Path(__file__).resolve().parents[2] / name
        if not path.exists():
            continue
        spec = importlib.util.spec_from_file_location(f"bt_tests_text_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "FAULTY") and hasattr(module, "STRATEGY_HEAD"):
            return module.FAULTY, module.STRATEGY_HEAD
    raise RuntimeError("tests/helpers.py has no FAULTY strategy")


def _prune(folder: Path, keep: Path, count: int = 4) -> None:
    """Keep the newest few code dirs (bt's source changes often while it is being written)."""
    dirs = sorted((p for p in folder.iterdir() if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime)
    for old in dirs[:-count]:
        shutil.rmtree(old, ignore_errors=True)
        for suffix in (".lock",):
            with contextlib.suppress(FileNotFoundError):
                (old.parent / (old.name + suffix)).unlink()


def provision(host: Host, env_dir: Path, code_dir: Path) -> None:
    """Make ``host`` find bt's environment and code ready (links to the shared ones)."""
    cache = host.home / ".cache" / "bt"
    for kind, target in (("envs", env_dir), ("code", code_dir)):
        (cache / kind).mkdir(parents=True, exist_ok=True)
        link = cache / kind / target.name
        if not link.exists():
            link.symlink_to(target)
    subprocess.run(["chown", "-R", f"{host.user}:", str(host.home / ".cache")], check=True)


def aws_credentials(farm: Farm) -> None:
    """Each host's user gets keys of its own in ``~/.aws`` (moto's server accepts any), as a real
    host reading an object store would."""
    for host in farm.hosts:
        aws = host.home / ".aws"
        aws.mkdir(exist_ok=True)
        (aws / "credentials").write_text(f"[default]\naws_access_key_id = host-{host.user}\n"
                                         "aws_secret_access_key = its-own-secret\n")
        (aws / "config").write_text("[default]\nregion = us-east-1\n")
        subprocess.run(["chown", "-R", f"{host.user}:", str(aws)], check=True)


def hosts_lines(farm: Farm, python: str, cores: int = 1, hosts: list[Host] | None = None) -> list[str]:
    return [h.line(key=farm.client_key, python=python, cores=cores) for h in (hosts or farm.hosts)]
