"""Timing one command in a fresh process: wall seconds and peak memory of its process tree.

``run_measured(argv)`` starts the command in its own session and samples, from /proc every
``interval`` seconds, the summed VmRSS of the process and all its descendants (workers included),
their summed Pss, and each one's VmHWM (its own exact high-water mark). The RSS sum counts a page
shared between forked processes once per process, so it errs high: bt's workers are forked from
a fork server that compiled or loaded the kernels, and share those pages with it (a cold numba
cache: 1.3 GB summed RSS, 0.6 GB summed Pss). The Pss sum (each shared page divided among the
processes that map it, from ``/proc/PID/smaps_rollup``) is the memory the job takes from the
machine; the largest VmHWM cannot miss a single process's spike between samples. Reading
``smaps_rollup`` walks the process's page tables (~20 ms a sample for a million-task run's 1 GB
tree): sampled at the RSS rate it took a third of a core from the job it measures (a 24.7 s run
measured 29.7 s), so Pss is read at most ``PSS_SHARE`` of the time.
(``ru_maxrss`` from wait4 is useless here: a child forked from this harness inherits the
harness's resident size before it execs, so it never reads below that.)

``Measurement`` is one row of a results table: an engine, a variant, its timed repeats.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import TaskKey

PAGE = os.sysconf("SC_PAGE_SIZE")


class CommandFailed(RuntimeError):
    pass


PYCACHE_DIR = Path(__file__).resolve().parent / ".work" / "pycache"


def python_env(**extra: str) -> dict[str, str]:
    """The environment of every measured process (every engine alike): this one, with Python's
    byte-code cache switched on and kept in ``.work/pycache`` (``PYTHONPYCACHEPREFIX``), plus ``extra``.

    The machine this runs on may set ``PYTHONDONTWRITEBYTECODE=1``; then every module without a
    ``.pyc`` from its installation (an editable install has none) is compiled from
    source in every process, which a user's installation does not do. With the prefix, the untimed
    warm-up runs write the byte code once and nothing is written outside ``benchmarks/.work``.
    Numba's on-disk cache is not affected (it ignores the prefix; see ``NUMBA_CACHE_DIR``)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_DIR)
    env.update(extra)
    return env


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def _pss(pid: int) -> int:
    """Pss of ``pid`` in bytes (0 if it is gone or the kernel does not say)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _vm(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes; (0, 0) if it is gone or has no memory (a zombie)."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss, hwm


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return b""


_OWN_CMDLINE = _cmdline(os.getpid())


#: The largest share of the time the sampler spends reading Pss (it runs on the job's cores)
PSS_SHARE = 0.02


def sample_tree(root: int, hwm: dict[int, int], with_pss: bool = True) -> tuple[int, int]:
    """(summed VmRSS, summed Pss) in bytes of ``root`` and its descendants now (Pss 0 unless
    ``with_pss``); records each one's VmHWM in ``hwm``.

    Until ``root`` has exec'd it is a fork of this harness (same command line): its memory is ours,
    not the command's, so it is not counted (nor are the descendants it cannot have yet).
    """
    if _cmdline(root) == _OWN_CMDLINE:
        return 0, 0
    total = pss = 0
    stack = [root]
    while stack:
        p = stack.pop()
        rss, high = _vm(p)
        total += rss
        if rss and with_pss:
            pss += _pss(p)
        if high:
            hwm[p] = max(hwm.get(p, 0), high)
        stack.extend(_children(p))
    return total, pss


@dataclass
class ProcResult:
    argv: list[str]
    returncode: int
    wall_s: float
    peak_tree_rss: int  # bytes, sampled sum of VmRSS over the process tree
    max_single_rss: int  # bytes, the largest VmHWM (high-water mark) seen of any one process
    stdout: str
    stderr: str
    peak_tree_pss: int = 0  # bytes, sampled sum of Pss over the process tree

    def check(self) -> ProcResult:
        if self.returncode != 0:
            tail = "\n".join((self.stderr or self.stdout).strip().splitlines()[-25:])
            raise CommandFailed(f"{' '.join(self.argv)} exited {self.returncode}:\n{tail}")
        return self


def run_measured(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float | None = None,
    interval: float = 0.05,
) -> ProcResult:
    """Run ``argv`` to completion in a fresh process (its own session) and measure it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        peak = peak_pss = 0
        hwm: dict[int, int] = {}
        done = threading.Event()

        def sample() -> None:
            nonlocal peak, peak_pss
            pss_due = 0.0
            while not done.is_set():
                now = time.monotonic()
                with_pss = now >= pss_due
                spent = time.thread_time()
                rss, pss = sample_tree(proc.pid, hwm, with_pss)
                if with_pss:  # the next Pss once this one's cost is PSS_SHARE of the time since
                    pss_due = now + (time.thread_time() - spent) / PSS_SHARE
                peak, peak_pss = max(peak, rss), max(peak_pss, pss)
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timer = None
        if timeout:
            # Kill the whole session we started (the command and its workers), by its id.
            timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
            timer.start()
        try:
            _, status = os.waitpid(proc.pid, 0)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            if timer:
                timer.cancel()
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ProcResult(
            list(argv), proc.returncode, wall, peak, max(hwm.values(), default=0), out.read(), err.read(), peak_pss
        )


@dataclass
class Run:
    """One timed repeat."""

    wall_s: float  # of the full job (extrapolated when the row is)
    measured_wall_s: float  # of the process actually run
    peak_tree_rss: int
    max_single_rss: int
    phases: dict[str, float] = field(default_factory=dict)  # as the child reported them
    peak_tree_pss: int = 0


@dataclass
class Measurement:
    """One table row: ``engine`` doing ``workload`` in ``variant``, over timed repeats.

    ``bar_evals`` is bars x combos of the *full* job (what the throughput is quoted for).
    ``extrapolated`` rows measured a stated subset and scaled its per-task time to the full job
    (``Run.wall_s`` = measured wall − task time + task time x scale).
    """

    engine: str
    workload: str
    variant: str
    bar_evals: int
    runs: list[Run] = field(default_factory=list)
    extrapolated: str = ""  # e.g. "from 1 symbol x 90 combos (x20)"
    answers: dict[TaskKey, dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)
    procs: int = 1  # processes doing the work
    derived_from: str = ""  # set when the runs are another row's, recomputed (not measured again)

    @property
    def wall(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)

    @property
    def wall_range(self) -> tuple[float, float]:
        return min(r.wall_s for r in self.runs), max(r.wall_s for r in self.runs)

    @property
    def throughput(self) -> float:
        """Bar-evaluations per second at the median wall time."""
        return self.bar_evals / self.wall if self.bar_evals else float("nan")

    @property
    def peak_rss(self) -> int:
        """The largest sampled tree RSS over the repeats (bytes)."""
        return max(max(r.peak_tree_rss, r.max_single_rss) for r in self.runs)

    @property
    def peak_pss(self) -> int:
        """The largest sampled tree Pss over the repeats, or a single process's own high-water
        mark where that is more (bytes): the memory the job took from the machine."""
        return max(max(r.peak_tree_pss, r.max_single_rss) for r in self.runs)

    def phase_medians(self) -> dict[str, float]:
        keys = sorted({k for r in self.runs for k in r.phases})
        return {k: statistics.median(r.phases[k] for r in self.runs if k in r.phases) for k in keys}


def measure_repeats(
    m: Measurement,
    make: Callable[[int], tuple[list[str], dict[str, str] | None, Path | None]],
    repeats: int,
    *,
    collect: Callable[[int, ProcResult], tuple[dict[str, float], dict[TaskKey, dict[str, Any]] | None]]
    | None = None,
    scale: float = 1.0,
    timeout: float | None = None,
    progress: Callable[[str], None] = print,
) -> Measurement:
    """Run ``make(i) -> (argv, env, cwd)`` ``repeats`` times in fresh processes, appending to ``m.runs``.

    ``collect(i, result) -> (phases, answers)`` reads what the child wrote (its ``tasks_s`` phase is
    the part scaled by ``scale`` for extrapolated rows). Answers of repeat 0 are kept on ``m``; a
    later repeat whose answers differ adds a note (the engine is not deterministic).
    """
    for i in range(repeats):
        argv, env, cwd = make(i)
        res = run_measured(argv, env=env, cwd=cwd, timeout=timeout).check()
        phases, answers = collect(i, res) if collect else ({}, None)
        wall = res.wall_s
        if scale != 1.0:
            task_s = phases.get("tasks_s")
            if task_s is None:
                raise ValueError(f"{m.engine}: an extrapolated row needs the child's tasks_s phase")
            wall = res.wall_s - task_s + task_s * scale
        m.runs.append(Run(wall, res.wall_s, res.peak_tree_rss, res.max_single_rss, phases, res.peak_tree_pss))
        if answers is not None:
            if m.answers is None:
                m.answers = answers
            elif answers != m.answers:
                m.notes.append(f"repeat {i} gave different answers from repeat 0")
        progress(
            f"  {m.engine} {m.workload} [{m.variant}] repeat {i + 1}/{repeats}: {res.wall_s:.2f} s"
            + (f" (-> {wall:.1f} s extrapolated)" if scale != 1.0 else "")
            + f", peak {res.peak_tree_rss / 2**20:.0f} MB"
        )
    return m
