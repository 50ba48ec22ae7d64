"""SSH farm benchmark: 3 network-namespace hosts against the local executor, same job.

    python benchmarks/bench_ssh.py                       # 20 symbols x 1-minute bars x 252 days
    python benchmarks/bench_ssh.py --cores 1 --repeat 3 --grid "fast=5:50:5" --grid "slow=20:400:20"
    python benchmarks/bench_ssh.py --coordinator         # can one coordinator feed a large farm? (8 hosts x 8)
    python benchmarks/bench_ssh.py --store               # coordinator CPU: hosts fetching the bars from S3, or shipped them

Needs root, sshd and iproute2 (the test farm of ``tests/executors/ssh/netns_farm.py``). Every host runs in a
namespace of this same machine, so the farm and the local executor share the same CPUs: the
ratio of their throughputs measures what the farm costs (SSH encryption both ways, sshd, shipping,
dispatch), not what it gains. Target: farm throughput >= 85 % of local.

Printed:
- wall time and tasks/s of the job on ``local://N`` and on the farm, first with the hosts' data
  caches empty (the partitions are shipped) and then warm; result files checked byte-identical;
- per-shard overhead: from handing a shard to a worker until its ``shard_done`` arrives, minus
  the time the worker itself spent on it (median, p90). On the main job this includes streaming
  the shard's results (~6 MB a shard); on a job of tiny shards (daily bars, results of a few KB)
  it is the dispatch round trip itself;
- recovery from a killed host: the job again with one host killed at about 40 % of it: how long
  until the loss is noticed, and the extra wall time against the undisturbed run;
- warm hosts: the time from first contact to the first result of a small job on hosts with no
  copy of bt (it is shipped, unpacked, and its kernels compiled, once per host), on the same hosts
  again, and after bt changed outside its kernels (a new copy, the compiled kernels carried over).
  ``--warm-only`` measures just this.

``--coordinator`` (``coordinator_scale``) asks instead how many worker cores one coordinator can
keep busy. With ``--hosts`` namespace hosts of ``cores=--cores`` workers each (8 x 8 = 64 workers)
started once and kept for every job, it runs jobs of cheap tasks (sma_cross on 500 daily bars, and
on sma_grid's minute bars) cut into shards of 1 to 90 tasks, every result file written anew, and
measures the coordinator's own CPU (getrusage: the hosts share this machine's cores, so wall-clock
rates understate). Printed:
- the farm's start (coordinator CPU and memory a worker) and the coordinator's CPU while every worker
  is idle (heartbeats and pings, per worker-second);
- per job and round: shards, tasks, MB of results, coordinator CPU (less the idle rate), and the
  shards/s, tasks/s and MB/s it dispatched;
- the fit CPU = c + a·shards + t·tasks + b·MB over those runs;
- where the CPU goes: per thread (/proc/self/task) while idle and on the two extreme jobs, and the
  top functions by py-spy (``pip install py-spy``; else cProfile, main thread only);
- for sma_grid's shards as a farm plans them (compute a shard measured on ``local://2``): how many
  worker cores one coordinator core keeps busy (target >= 500), and what limits it first —
  the coordinator's CPU, a 1 or 10 Gb/s link, heartbeats.

``--store`` (``store_or_shipped``) asks what the coordinator saves when the hosts fetch the bars
from an object store themselves instead of being shipped them. With ``--hosts`` namespace hosts of
``cores=--cores`` workers each (default 8 x 1), one job (``--symbols`` symbols of one-minute bars x
``--days`` days; ``--grid``, default two combos a symbol, so that the bars, not the results, are most
of what moves) runs alternately with the bars on moto's S3 server on the farm's bridge, which the
hosts reach with keys of their own, and with the same bars in a local store whose partitions the
coordinator ships; ``--repeat`` rounds of both, every host's cache emptied before each run and a
new executor each time (the coordinator's memory of file hashes too: a ``bt run`` is a new process).
Printed per run and as the mean of the rounds: the coordinator's CPU for the job (from submitting
to the last result, less its idle rate with every worker up), per shard and per MB of bars the
hosts received (shipped, or fetched by them), and the ratio of shipping to fetching; result files
checked byte-identical.

Hosts run the coordinator's exact Python with bt's environment pre-built (``tests/executors/ssh/farmenv``),
so no host bootstraps inside a timed run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests" / "executors" / "ssh"), str(HERE.parent / "tests")]


class ShardTimes:
    """Per-shard overhead of a StreamPool executor (local or SSH), measured in the coordinator:
    how much longer a worker takes per shard than the shard's own compute time (which the worker
    reports). For a worker's first shard that is from sending it until its ``shard_done``, minus
    the compute time; for each next one, from the previous ``shard_done`` of the same worker —
    workers are sent their next shard while they compute (``pool.PREFETCH``), so this is the gap a
    worker really sees between two shards."""

    def __init__(self, ex: Any) -> None:
        self.sent: dict[str, float] = {}
        self.last_done: dict[str, float] = {}
        self.overhead: list[float] = []
        self.first: float | None = None
        self.last: float | None = None
        self.coordinator_cpu = 0.0
        orig_send, orig_handle = ex.send_shard, ex._handle

        def send_shard(slot: Any, spec: Any) -> None:
            self.sent.setdefault(slot.label, time.perf_counter())
            orig_send(slot, spec)

        def handle(gen: int, msg: dict[str, Any] | None, body: Any) -> None:
            if msg is not None and msg.get("t") == "shard_done":
                slot = ex._slot_of(gen)
                if slot is not None:
                    now = time.perf_counter()
                    since = self.last_done.get(slot.label, self.sent.get(slot.label))
                    if since is not None:
                        self.overhead.append(now - since - msg["seconds"])
                    self.last_done[slot.label] = now
            orig_handle(gen, msg, body)

        ex.send_shard, ex._handle = send_shard, handle


def timed_run(prep: Any, ex: Any, on_progress: Any = None) -> tuple[float, Any, ShardTimes]:
    """Start the executor and run the job; ``times.first``/``times.last``: when the first and
    the last result came in (seconds from the start)."""
    from backtest.run import execute

    times = ShardTimes(ex)
    t0 = time.perf_counter()
    cpu0 = _cpu()

    def progress(p: Any) -> None:
        if p.computed and times.first is None:
            times.first = time.perf_counter() - t0
        if p.computed:
            times.last = time.perf_counter() - t0
        if on_progress is not None:
            on_progress(p)

    ex.start(prep.job.strategy)
    summary = execute(prep, progress, ex)
    seconds = time.perf_counter() - t0
    times.coordinator_cpu = _cpu() - cpu0
    assert summary.status == "done" and summary.failed == 0, summary
    return seconds, summary, times


def _cpu() -> float:
    """CPU seconds used by this process (the coordinator) so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def steady(tasks: int, times: ShardTimes) -> str:
    """Tasks/s between the first and the last result: throughput without start-up and shutdown."""
    assert times.first is not None and times.last is not None
    return f"{tasks / (times.last - times.first):.0f} tasks/s from the first result (at {times.first:.2f} s) on"


def results(root: Path) -> dict[str, bytes]:
    from backtest.store.results import ResultStore

    store = ResultStore(root)
    return {k: store.read_bytes(k) for k in store.keys()}


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    return f"median {statistics.median(values) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms (n={len(values)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--days", type=int, default=252)
    ap.add_argument("--grid", action="append", default=None,
                    help='a --param of the job (default: "fast=5:50:5" "slow=20:200:20", sma_cross\'s grid)')
    ap.add_argument("--cores", type=int, default=None, help="workers per host (default: what each reports)")
    ap.add_argument("--local", type=int, default=None, help="local workers (default: one per core)")
    ap.add_argument("--repeat", type=int, default=2, help="timed warm runs of each (the best is kept); --coordinator, --store: rounds")
    ap.add_argument("--warm-only", action="store_true", help="only the first-result times of fresh and warm hosts")
    ap.add_argument("--coordinator", action="store_true",
                    help="only how many worker cores one coordinator can feed (--hosts hosts, --cores each, default 8)")
    ap.add_argument("--store", action="store_true",
                    help="only the coordinator's CPU with hosts fetching the bars from S3 against shipped them "
                         "(--hosts hosts, --cores each, default 1)")
    ap.add_argument("--hosts", type=int, default=8, help="namespace hosts of --coordinator and --store")
    args = ap.parse_args()
    if args.coordinator:
        coordinator_scale(args)
        return
    if args.store:
        store_or_shipped(args)
        return

    import farmenv
    from netns_farm import Farm, missing_requirements

    from backtest.data import Store
    from backtest.data.demo import write_demo
    from backtest.executors.base import ExecutorOptions
    from backtest.executors.local import LocalExecutor, cores
    from backtest.executors.ssh.connect import SSHSettings
    from backtest.executors.ssh.executor import SSHExecutor
    from backtest.executors.ssh.hostsfile import parse_hosts
    from backtest.run import RunRequest, prepare

    reason = missing_requirements()
    if reason:
        sys.exit(f"bench_ssh: {reason}")
    local_n = args.local or cores()
    grid = args.grid or ["fast=5:50:5", "slow=20:200:20"]
    sma = HERE.parent / "strategies" / "sma_cross.py"
    work = Path(tempfile.mkdtemp(prefix="bt-bench-ssh-"))
    print(f"data: {args.symbols} symbols x 1-minute bars x {args.days} days; grid {' '.join(grid)}; "
          f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    roots = {name: work / name for name in ("local", "farm", "tiny")}
    for name, root in roots.items():
        if name == "tiny":
            write_demo(Store(root), symbols=3, freq="1d", days=500)
        else:
            write_demo(Store(root), symbols=args.symbols, freq="1min", days=args.days)
    req = RunRequest(strategy=sma, params=grid)

    def plan(root: Path, force: bool) -> Any:
        return prepare(RunRequest(**{**req.__dict__, "force": force}), root)

    def tiny_overhead(make: Any) -> list[float]:
        """Per-shard overhead on small shards (3 symbols of daily bars), the second of two runs."""
        for _ in range(2):
            prep = prepare(RunRequest(strategy=sma, params=grid, force=True), roots["tiny"])
            _, _, times = timed_run(prep, make())
        return times.overhead

    python = farmenv.shared_python()
    env_dirs = farmenv.prebuilt(python)
    if args.warm_only:
        warm_hosts(python, env_dirs, roots["tiny"], sma, grid, args.cores)
        shutil.rmtree(work, ignore_errors=True)
        return

    # local --------------------------------------------------------------------------------------
    local_best = None
    for i in range(args.repeat + 1):  # the first one warms the page cache and numba's cache
        local = LocalExecutor(ExecutorOptions(data_root=roots["local"], workers=local_n))
        seconds, summary, times = timed_run(plan(roots["local"], force=i > 0), local)
        if i > 0 and (local_best is None or seconds < local_best[0]):
            local_best = (seconds, summary, times)
    assert local_best is not None
    tasks = local_best[1].computed
    print(f"tasks: {tasks} in {len(plan(roots['local'], True).shards)} shards")
    print(f"local://{local_n}: {local_best[0]:.2f} s, {tasks / local_best[0]:.0f} tasks/s "
          f"({steady(tasks, local_best[2])}); per-shard overhead {ms(local_best[2].overhead)}; "
          f"coordinator CPU {local_best[2].coordinator_cpu:.2f} s")
    tiny_local = tiny_overhead(lambda: LocalExecutor(ExecutorOptions(data_root=roots["tiny"], workers=local_n)))

    # farm ---------------------------------------------------------------------------------------
    with Farm.start(3) as farm:
        for host in farm.hosts:
            farmenv.provision(host, *env_dirs)
        lines = [h.line(key=farm.client_key, python=python, **({"cores": args.cores} if args.cores else {}))
                 for h in farm.hosts]

        def farm_executor(root: Path = roots["farm"]) -> SSHExecutor:
            return SSHExecutor(parse_hosts("\n".join(lines)), ExecutorOptions(data_root=root),
                               settings=SSHSettings(known_hosts=farm.known_hosts))

        ex = farm_executor()
        seconds, summary, times = timed_run(plan(roots["farm"], force=False), ex)
        workers = len(ex._slots)
        shipped = sum(r.bytes_wire for h in ex.hosts for r in h.objects.reports)
        files = sum(len(r.sent) for h in ex.hosts for r in h.objects.reports)
        print(f"farm, 3 hosts, {workers} workers, host data caches empty: {seconds:.2f} s, "
              f"{tasks / seconds:.0f} tasks/s ({seconds and local_best[0] / seconds:.0%} of local); "
              f"shipped {files} partitions, {shipped / 1e6:.1f} MB on the wire")
        assert results(roots["farm"]) == results(roots["local"]), "farm results differ from local ones"
        print("result files: byte-identical to the local run's")
        best = None
        for _ in range(args.repeat):
            ex = farm_executor()
            run = timed_run(plan(roots["farm"], force=True), ex)
            if best is None or run[0] < best[0]:
                best = run
        assert best is not None
        ratio = local_best[0] / best[0]
        lt, ft = local_best[2], best[2]
        assert lt.first is not None and lt.last is not None and ft.first is not None and ft.last is not None
        steady_ratio = (lt.last - lt.first) / (ft.last - ft.first)
        print(f"farm, host caches warm: {best[0]:.2f} s, {tasks / best[0]:.0f} tasks/s = {ratio:.0%} of local "
              f"(target >= 85 %); {steady(tasks, ft)} = {steady_ratio:.0%} of local's; "
              f"per-shard overhead {ms(ft.overhead)}; coordinator CPU {ft.coordinator_cpu:.2f} s")

        tiny_farm = tiny_overhead(lambda: farm_executor(roots["tiny"]))
        print(f"per-shard overhead on tiny shards (dispatch round trip): local {ms(tiny_local)}; "
              f"farm {ms(tiny_farm)}")

        # a host killed at about 40 % of the job -------------------------------------------------
        victim = farm.hosts[1]
        ex = farm_executor()
        killed: list[float] = []
        noticed: list[float] = []
        name = ex.hosts[1].name
        seen = [0]

        def on_progress(p: Any) -> None:
            if not killed and p.computed >= 0.4 * tasks:
                farm.kill(victim)
                killed.append(time.perf_counter())
                seen[0] = len(p.notes)
            elif killed and not noticed and any(n.startswith(name) for n in p.notes[seen[0]:]):
                noticed.append(time.perf_counter())

        seconds, summary, _ = timed_run(plan(roots["farm"], force=True), ex, on_progress)
        assert killed and noticed, "the host was not killed or its loss not noticed"
        print(f"farm with a host killed at 40 %: {seconds:.2f} s (+{seconds - best[0]:.2f} s against undisturbed); "
              f"loss noticed after {(noticed[0] - killed[0]) * 1000:.0f} ms; "
              f"{summary.computed} tasks, each recorded once")
        assert results(roots["farm"]) == results(roots["local"])
    warm_hosts(python, env_dirs, roots["tiny"], sma, grid, args.cores)
    shutil.rmtree(work, ignore_errors=True)


def warm_hosts(python: str, env_dirs: Any, root: Path, sma: Path, grid: list[str], cores: int | None) -> None:
    """From first contact to the first result, on 3 hosts without a copy of bt, again on the same
    hosts, and after bt changed outside its kernels (a new code key: a new copy on every host)."""
    import hashlib

    import farmenv
    from netns_farm import Farm

    from backtest.executors.base import ExecutorOptions
    from backtest.executors.ssh import environment
    from backtest.executors.ssh.connect import SSHSettings
    from backtest.executors.ssh.executor import SSHExecutor
    from backtest.executors.ssh.hostsfile import parse_hosts
    from backtest.run import RunRequest, prepare

    with Farm.start(3) as farm:
        for host in farm.hosts:
            farmenv.provision(host, *env_dirs)
            farm.exec_in(host, "sh", "-c", 'rm -rf "$HOME/.cache/bt/code"')  # no copy of bt, no kernels
        lines = [h.line(key=farm.client_key, python=python, **({"cores": cores} if cores else {})) for h in farm.hosts]

        def first_result(label: str) -> None:
            ex = SSHExecutor(parse_hosts("\n".join(lines)), ExecutorOptions(data_root=root),
                             settings=SSHSettings(known_hosts=farm.known_hosts))
            seconds, summary, times = timed_run(prepare(RunRequest(strategy=sma, params=grid, force=True), root), ex)
            print(f"warm hosts: first result {times.first:.2f} s after first contact, {label} "
                  f"(job of {summary.computed} tasks: {seconds:.2f} s)")

        first_result("on hosts without a copy of bt (shipped, unpacked, kernels compiled once per host)")
        first_result("on the same hosts again")
        real = environment.code_key()
        environment.code_key = lambda: hashlib.sha256(b"elsewhere" + real.encode()).hexdigest()  # type: ignore[assignment]
        environment.fingerprint.cache_clear()
        try:
            first_result("after bt changed outside its kernels (a new copy, the kernels carried over)")
        finally:
            environment.code_key = lambda: real  # type: ignore[assignment]
            environment.fingerprint.cache_clear()


# one coordinator, many hosts (--coordinator) ------------------------------------------------------
LINK_MB_S = {"1 Gb/s": 125.0, "10 Gb/s": 1250.0}  # line rates: what a link carries at best
TARGET_CORES = 500


class Tally:
    """Counts what one started pool handles, job by job: shards sent and ended, result bytes
    received, the compute seconds each worker reports per shard (``shard_done``), and the span
    from the first shard sent to the last one ended. Wraps the executor once, so that one executor
    can run many jobs (``ShardTimes`` wraps it per run)."""

    def __init__(self, ex: Any) -> None:
        self.sent = self.results = self.bytes = 0
        self.compute: list[float] = []
        self.first_sent: float | None = None
        self.last_done: float | None = None
        orig_send, orig_handle = ex.send_shard, ex._handle

        def send_shard(slot: Any, spec: Any) -> None:
            if self.first_sent is None:
                self.first_sent = time.perf_counter()
            self.sent += 1
            orig_send(slot, spec)

        def handle(gen: int, msg: dict[str, Any] | None, body: Any) -> None:
            if msg is not None:
                kind = msg.get("t")
                if kind == "result":
                    self.bytes += len(body)
                    self.results += 1
                elif kind == "shard_done":
                    self.compute.append(msg["seconds"])
                    self.last_done = time.perf_counter()
            orig_handle(gen, msg, body)

        ex.send_shard, ex._handle = send_shard, handle

    def reset(self) -> None:
        self.sent = self.results = self.bytes = 0
        self.compute = []
        self.first_sent = self.last_done = None

    @property
    def span(self) -> float:
        assert self.first_sent is not None and self.last_done is not None
        return self.last_done - self.first_sent


class ThreadCPU:
    """CPU seconds of this process's threads between ``start`` and ``stop``, grouped by what the
    thread does: read from /proc/self/task for the threads alive at ``stop``; a thread started
    meanwhile that ends before ``stop`` (a run's result-file writer) reports its own CPU time as it
    ends. Python names its threads; the others are native ones (DuckDB's, say)."""

    def __init__(self) -> None:
        self.base: dict[int, float] = {}
        self.ended: dict[int, tuple[str, float]] = {}
        self._run: Any = None

    @staticmethod
    def _now() -> dict[int, float]:
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
        return out

    @staticmethod
    def group(thread: Any) -> str:
        import paramiko

        name = thread.name
        if isinstance(thread, paramiko.Transport):
            return "paramiko transports (receive, decrypt, MAC)"
        for prefix, what in (("MainThread", "main loop (events, dispatch, catalog)"),
                             ("bt-read-", "frame readers (one a worker)"),
                             ("bt-results", "result-file writer"),
                             ("bt-ssh-write-", "frame writers (one a worker)"),
                             ("bt-ssh-ship-", "shard shippers (one a worker)")):
            if name.startswith(prefix):
                return what
        if "_drain_stderr" in name:
            return "stderr drains (one a worker)"
        return "other Python threads"

    def start(self) -> None:
        import threading

        self.base, self.ended = self._now(), {}
        self._run = run = threading.Thread.run
        ended = self.ended

        def counted(thread: Any) -> None:
            try:
                run(thread)
            finally:
                ended[threading.get_native_id()] = (ThreadCPU.group(thread), time.thread_time())

        threading.Thread.run = counted  # type: ignore[method-assign,assignment]

    def stop(self) -> list[tuple[str, float]]:
        import threading

        threading.Thread.run = self._run  # type: ignore[method-assign]
        now = self._now()
        names = {t.native_id: self.group(t) for t in threading.enumerate()}
        groups: dict[str, float] = {}
        for tid, cpu in now.items():
            what = names.get(tid, "native threads (DuckDB, ...)")
            groups[what] = groups.get(what, 0.0) + cpu - self.base.get(tid, 0.0)
        for tid, (what, cpu) in self.ended.items():
            if tid not in now:
                groups[what] = groups.get(what, 0.0) + cpu - self.base.get(tid, 0.0)
        return sorted(groups.items(), key=lambda kv: -kv[1])


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Profile:
    """Where this process's CPU goes while a job runs: py-spy (every thread, on-CPU samples only)
    when it is installed, else cProfile (the main thread only)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.tool = _py_spy()
        self.proc: Any = None
        self.prof: Any = None
        self.said = ""

    def __enter__(self) -> Profile:
        import subprocess

        if self.tool:
            self.proc = subprocess.Popen([self.tool, "record", "--pid", str(os.getpid()), "--rate", "100",
                                          "--nonblocking", "--format", "raw", "-o", str(self.out)],
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            time.sleep(1.0)  # py-spy attaches
        else:
            import cProfile

            self.prof = cProfile.Profile()
            self.prof.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
            err = self.proc.communicate(timeout=60)[0].decode(errors="replace")
            self.said = " ".join("Samples:" + ln.split("Samples:", 1)[1] for ln in err.splitlines() if "Samples:" in ln)
        elif self.prof is not None:
            self.prof.disable()

    def top(self, n: int = 5) -> list[str]:
        """The top ``n`` costs: py-spy's samples attributed to the innermost frame of bt's or
        paramiko's code on the stack (what bt or paramiko was doing, including the C or library
        code it called), then the leaf functions; or cProfile's top functions by own time."""
        if self.prof is not None:
            import pstats

            stats = pstats.Stats(self.prof)
            rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:n]  # type: ignore[attr-defined]
            total = sum(v[2] for v in stats.stats.values()) or 1.0  # type: ignore[attr-defined]
            return [f"{fn}:{line} {Path(path).name} {tt:.2f} s own ({tt / total:.0%}, main thread only)"
                    for (path, line, fn), (_, _, tt, _, _) in rows]
        if not self.out.exists():
            return [f"py-spy wrote nothing ({self.said})"]
        ours: dict[str, int] = {}
        leaf: dict[str, int] = {}
        total = 0
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            k = int(count)
            total += k
            frames = [_frame(f) for f in stack.split(";")]
            leaf[frames[-1][0]] = leaf.get(frames[-1][0], 0) + k
            mine = next((f for f, path in reversed(frames) if "backtest/" in path or "paramiko/" in path),
                        frames[-1][0])
            ours[mine] = ours.get(mine, 0) + k
        total = total or 1
        out = [f"{name}: {k / total:.0%}" for name, k in sorted(ours.items(), key=lambda kv: -kv[1])[:n]]
        lines = [f"  by bt/paramiko function (incl. what it calls): {'; '.join(out)}"]
        out = [f"{name}: {k / total:.0%}" for name, k in sorted(leaf.items(), key=lambda kv: -kv[1])[:n]]
        lines.append(f"  by leaf function (own time): {'; '.join(out)}")
        lines.append(f"  ({total} on-CPU samples of every thread, py-spy at 100 Hz; {self.said})")
        return lines


def _frame(text: str) -> tuple[str, str]:
    """('func (file.py)', path) of a py-spy raw frame 'func (path:line)'."""
    fn, _, where = text.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    return f"{fn} ({Path(path).name})", path


def coordinator_scale(args: Any) -> None:
    """How many worker cores one coordinator can keep busy: its CPU per shard, per task and per MB
    of results, measured on ``--hosts`` namespace hosts of ``--cores`` workers each (8 x 8) with
    jobs of cheap tasks, then set against the compute a worker spends on one sma_grid shard."""
    import farmenv
    import numpy as np
    from netns_farm import Farm, missing_requirements

    from backtest.data import Store
    from backtest.data.demo import bar_times, demo_bars, trading_days, write_demo
    from backtest.data.freq import parse_freq
    from backtest.executors import REMOTE_PLANNED_WORKERS
    from backtest.executors.base import ExecutorOptions
    from backtest.executors.local import LocalExecutor
    from backtest.executors.ssh.connect import SSHSettings
    from backtest.executors.ssh.executor import WORKERS_PER_CONNECTION, SSHExecutor
    from backtest.executors.ssh.hostsfile import parse_hosts
    from backtest.plan import make_shards
    from backtest.run import RunRequest, execute, prepare

    reason = missing_requirements()
    if reason:
        sys.exit(f"bench_ssh: {reason}")
    n_hosts, host_cores = args.hosts, args.cores or 8
    sma = HERE.parent / "strategies" / "sma_cross.py"
    grid = ["fast=5:50:5", "slow=20:200:20"]
    work = Path(tempfile.mkdtemp(prefix="bt-bench-coord-"))
    root = work / "root"
    store = Store(root)
    minute = write_demo(store, symbols=20, freq="1min", days=252)  # sma_grid's data
    daily = [f"DAY{i:02d}" for i in range(20)]
    times = bar_times(trading_days(2015, 2024, 500), parse_freq("1d"))
    for i, sym in enumerate(daily):
        b = demo_bars(times, np.random.default_rng([7, i]))
        store.import_arrays(sym, b["ts"], b["open"], b["high"], b["low"], b["close"], b["volume"])
    print(f"machine: {os.cpu_count()} cores, load {_load()}; strategy sma_cross, grid {' '.join(grid)} "
          f"(90 combos); data: 20 symbols x 98 280 minute bars (sma_grid's), 20 symbols x 500 daily bars")

    # the job shapes: (name, symbols, params, workers the shards are sized for)
    sma_grid = f"sma_grid (minute bars, shards as planned for a farm: {REMOTE_PLANNED_WORKERS} workers)"
    shapes = [
        ("one task (daily)", daily[:1], ["fast=10", "slow=20"], 1),
        ("daily bars, 2-task shards", daily, grid, 225),
        ("daily bars, 90-task shards", daily, grid, 8),
        ("minute bars, 7-task shards", minute, grid, 64),
        (sma_grid, minute, grid, REMOTE_PLANNED_WORKERS),
    ]

    aside = itertools.count()

    def plan(shape: tuple[str, list[str], list[str], int], root: Path = root) -> Any:
        _, symbols, params, workers = shape
        prep = prepare(RunRequest(strategy=sma, params=params, symbols=symbols, force=True), root)
        prep.shards = make_shards(prep.job, prep.tasks, prep.parts, workers)
        return prep

    def ready(ex: Any, tally: Tally, shape: Any, root: Path = root) -> Any:
        """A planned job, with no result file stored (the coordinator writes every file anew). The
        last job's files are moved aside, not deleted: deleting ~90 MB of files while the next job
        runs would load this machine's disk and CPU."""
        prep = plan(shape, root)
        clear(ex, tally, root)
        return prep

    def clear(ex: Any, tally: Tally, root: Path = root) -> None:
        if (root / "results").exists():
            os.rename(root / "results", root.parent / f"old-results-{next(aside)}")
        ex._done_keys.clear()  # the pool drops a key it has seen: the same tasks again are new here
        tally.reset()

    def measure(ex: Any, tally: Tally, prep: Any, idle_rate: float = 0.0) -> dict[str, Any]:
        ru0, t0 = _rusage(), time.perf_counter()
        summary = execute(prep, None, ex)
        wall, ru = time.perf_counter() - t0, _rusage()
        user, system = ru[0] - ru0[0], ru[1] - ru0[1]
        assert summary.status == "done" and summary.failed == 0 and summary.computed == len(prep.tasks), summary
        assert len(tally.compute) == len(prep.shards)
        return {"shards": len(prep.shards), "tasks": len(prep.tasks), "mb": tally.bytes / 1e6, "wall": wall,
                "span": tally.span, "cpu": user + system, "system": system, "net": user + system - idle_rate * wall,
                "compute": list(tally.compute)}

    # the compute a worker spends on one sma_grid shard: local://2, this machine otherwise idle, the
    # store in memory (/dev/shm) so that the local workers' own result files cost next to nothing
    # (a remote worker streams its results instead of writing them) -------------------------------
    shm = Path("/dev/shm")
    local_root = Path(tempfile.mkdtemp(prefix="bt-bench-coord-", dir=shm if shm.is_dir() else work)) / "root"
    shutil.copytree(root, local_root)
    local = LocalExecutor(ExecutorOptions(data_root=local_root, workers=2))
    local_tally = Tally(local)
    local.start(plan(shapes[-1]).job.strategy)
    close_local = _keep_open(local)
    local_runs = []
    for i in range(4):  # the first one starts the workers and warms the page cache
        r = measure(local, local_tally, ready(local, local_tally, shapes[-1], local_root))
        if i:
            local_runs.append(r)
            print(f"local://2 (store in {local_root.parent.parent}), {sma_grid}: {r['shards']} shards of "
                  f"{r['tasks'] // r['shards']} tasks, {r['wall']:.2f} s; a worker's compute a shard "
                  f"{statistics.mean(r['compute']):.3f} s mean, {statistics.median(r['compute']):.3f} s median; "
                  f"coordinator CPU {r['cpu']:.2f} s (the workers store the files, send metrics only)")
    close_local()
    shutil.rmtree(local_root.parent, ignore_errors=True)
    compute_per_shard = min(statistics.mean(r["compute"]) for r in local_runs)  # the least disturbed run
    local_cpu = statistics.mean(r["cpu"] / r["shards"] for r in local_runs)

    python = farmenv.shared_python()
    env_dirs = farmenv.prebuilt(python)
    with Farm.start(n_hosts) as farm:
        for host in farm.hosts:
            farmenv.provision(host, *env_dirs)
        lines = [h.line(key=farm.client_key, python=python, cores=host_cores) for h in farm.hosts]
        ex = SSHExecutor(parse_hosts("\n".join(lines)), ExecutorOptions(data_root=root),
                         settings=SSHSettings(known_hosts=farm.known_hosts))
        tally = Tally(ex)
        threads = ThreadCPU()

        # start: connect, bootstrap, every worker up --------------------------------------------------
        avail0 = _mem_available()
        cpu0, t0 = _cpu(), time.perf_counter()
        ex.start(plan(shapes[0]).job.strategy)
        close = _keep_open(ex)
        want = n_hosts * host_cores
        _until_up(ex, want, close)
        up_cpu, up_wall = _cpu() - cpu0, time.perf_counter() - t0
        used = (avail0 - _mem_available()) / 2**20
        print(f"load {_load()}; farm: {n_hosts} hosts x cores={host_cores} = {len(ex._slots)} workers up in {up_wall:.1f} s "
              f"({n_hosts * -(-host_cores // WORKERS_PER_CONNECTION)} SSH connections, an SSH channel a worker); "
              f"coordinator CPU {up_cpu:.2f} s for it ({up_cpu / want * 1000:.0f} ms a worker); "
              f"memory {used / 1024:.1f} GiB ({used / want:.0f} MiB a worker with its sshd and launcher)")

        # every host holds every partition (shipping is not what is measured here)
        files = list(dict.fromkeys(f for s in (plan(sh) for sh in shapes) for sh_ in s.shards
                                   for f in sh_.spec.partitions()))
        for h in ex.hosts:
            h.objects.ensure(files)

        idle_rate = _idle_rate(ex, 5.0)
        print(f"coordinator idle with {want} workers: {idle_rate * 1000:.0f} ms CPU a second "
              f"({idle_rate / want * 1e6:.0f} µs per worker-second: a heartbeat a second from each, a ping every "
              f"2 s to each)")

        for shape in shapes:  # warm-up: the workers load the strategy and the data; nothing timed
            measure(ex, tally, ready(ex, tally, shape))
        runs = []
        for i in range(args.repeat):
            print(f"round {i + 1}, load {_load()} (dispatch rates are wall-clock: the hosts share this machine's cores)")
            for shape in shapes:
                r = {"shape": shape[0], **measure(ex, tally, ready(ex, tally, shape), idle_rate)}
                runs.append(r)
                print(f"  {r['shape']}: {r['shards']} shards, {r['tasks']} tasks, {r['mb']:.1f} MB of results; "
                      f"{r['wall']:.2f} s; coordinator CPU {r['cpu']:.2f} s ({r['system']:.2f} s of it system), "
                      f"{r['net']:.2f} s less idle; {r['shards'] / r['span']:.0f} shards/s, "
                      f"{r['tasks'] / r['span']:.0f} tasks/s, {r['mb'] / r['span']:.1f} MB/s")

        # where the coordinator's CPU goes: idle, and the two extremes ------------------------------
        threads.start()
        rate = _idle_rate(ex, 5.0)
        profiles: list[tuple[str, list[tuple[str, float]], int, list[str]]]
        profiles = [(f"idle, {want} workers (5 s, {rate * 1000:.0f} ms CPU a second)", threads.stop(), 0, [])]
        for shape in (shapes[1], shapes[-1]):  # each twice in a row, for more samples
            preps = [plan(shape), plan(shape)]
            with Profile(work / f"profile-{len(profiles)}.txt") as prof:
                threads.start()
                done = []
                for prep in preps:
                    clear(ex, tally)
                    done.append(measure(ex, tally, prep))
                split = threads.stop()
            n_shards = sum(r["shards"] for r in done)
            profiles.append((f"{shape[0]}, twice ({n_shards} shards, {sum(r['mb'] for r in done):.0f} MB, "
                             f"coordinator CPU {sum(r['cpu'] for r in done):.2f} s)", split, n_shards, prof.top()))
        close()

    # the figures ------------------------------------------------------------------------------------
    x = np.array([[1.0, r["shards"], r["tasks"], r["mb"]] for r in runs])
    y = np.array([r["net"] for r in runs])
    (c0, a, t, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    print(f"\ncoordinator CPU = c + a·shards + t·tasks + b·MB, fitted to the {len(runs)} runs "
          f"(each run's CPU less the idle rate x its wall time):")
    print(f"  c = {c0 * 1000:.0f} ms a job (recording the run in the catalog, ending it)")
    print(f"  a = {a * 1000:.2f} ms a shard (dispatch: spec, send, shard_done): "
          f"{1 / a:.0f} shards per CPU-second")
    print(f"  t = {t * 1000:.2f} ms a task (its result frame and event, its result file, its catalog rows): "
          f"{1 / t:.0f} tasks per CPU-second")
    print(f"  b = {b * 1000:.1f} ms a MB of results (received over SSH, framed, written): {1 / b:.0f} MB per "
          f"CPU-second")
    print("  (t and b trade places from run to run: a task's share is mostly its result file, whose cost on this\n"
          "  VM's disk swings with the load; the CPU measured a sma_grid shard, below, is the steadier figure)")
    print("  measured / fitted: " + "; ".join(f"{r['net']:.2f} / {fit:.2f} s"
                                              for r, fit in zip(runs, x @ np.array([c0, a, t, b]), strict=True)))
    for name, split, _, top in profiles:
        print(f"\nprofile, {name}:")
        print("  by thread: " + "; ".join(f"{what} {cpu:.2f} s" for what, cpu in split if cpu >= 0.005))
        for line in top:
            print(line if line.startswith("  ") else f"  {line}")

    grid_runs = [r for r in runs if r["shape"] == sma_grid]
    shards = grid_runs[0]["shards"]
    tasks_per_shard = grid_runs[0]["tasks"] / shards
    mb_per_shard = statistics.mean(r["mb"] for r in grid_runs) / shards
    direct = statistics.mean(r["net"] for r in grid_runs) / shards
    model = a + t * tasks_per_shard + b * mb_per_shard
    per_worker_s = idle_rate / want
    mb_per_core_s = mb_per_shard / compute_per_shard

    def cores_for(cost: float) -> float:
        """Workers one coordinator core keeps busy: each takes cost/compute of it, and its idle share."""
        return 1.0 / (cost / compute_per_shard + per_worker_s)

    n_direct, n_model = cores_for(direct), cores_for(model)
    print(f"\nsma_grid's shards on a farm: {shards} shards of {tasks_per_shard:.0f} tasks, {mb_per_shard:.2f} MB of "
          f"results each ({mb_per_shard / tasks_per_shard * 1000:.0f} KB a task); a worker computes one in "
          f"{compute_per_shard * 1000:.0f} ms (local://2, the best run's mean): a busy worker core returns {mb_per_core_s:.0f} MB/s")
    print(f"coordinator CPU a shard: {direct * 1000:.0f} ms measured on the sma_grid job, {model * 1000:.0f} ms "
          f"from the fit (a {a * 1000:.1f} + {tasks_per_shard:.0f} tasks x t = {t * tasks_per_shard * 1000:.0f} + "
          f"{mb_per_shard:.2f} MB x b = {b * mb_per_shard * 1000:.0f} ms); and {per_worker_s * 1e6:.0f} µs per "
          f"worker-second, idle or not")
    verdict = "met" if min(n_direct, n_model) >= TARGET_CORES else "NOT MET"
    print(f"=> one coordinator core keeps {n_direct:.1f} worker cores busy on sma_grid's shards ({n_model:.1f} from "
          f"the fit); target >= {TARGET_CORES}: {verdict}")
    costs = sorted([("per MB", b * mb_per_shard), ("per task", t * tasks_per_shard), ("per shard", a)],
                   key=lambda kv: -kv[1])
    by_group = dict(profiles[-1][1])
    total = sum(by_group.values()) or 1.0
    by_thread = ", ".join(f"{what.split(' (')[0]} {cpu / total:.0%}" for what, cpu in profiles[-1][1][:4])
    writer = by_group.get("result-file writer", 0.0) / profiles[-1][2]
    print(f"what limits first:\n  1. the coordinator's CPU, at {n_direct:.1f} cores: of its cost a shard, "
          + ", ".join(f"{name} {cost / model:.0%}" for name, cost in costs)
          + f"; by thread (sma_grid's profile): {by_thread} (result files: {writer / tasks_per_shard * 1e6:.0f} µs "
          f"a file)")
    links = ", ".join(f"{mb / mb_per_core_s:.0f} cores on {name} ({mb:.0f} MB/s)" for name, mb in LINK_MB_S.items())
    print(f"  2. the network, even for a coordinator that cost nothing: {links}; {TARGET_CORES} busy cores would "
          f"return {TARGET_CORES * mb_per_core_s:.0f} MB/s of results")
    print(f"  3. heartbeats and pings: a whole coordinator core at {1 / per_worker_s:.0f} workers with no work at all")
    print(f"  with metrics only (result files kept where they are made, as local workers do): the local "
          f"coordinator spent {local_cpu * 1000:.1f} ms a shard, which would feed {cores_for(local_cpu):.0f} cores")
    print(f"  at this cost a shard, {TARGET_CORES} cores need {TARGET_CORES * model:.0f} s of compute a shard "
          f"({TARGET_CORES * model / compute_per_shard:.0f}x sma_grid's); and a job planned for "
          f"{REMOTE_PLANNED_WORKERS} workers (sma_grid: {shards} shards) occupies at most {shards} workers anyway")
    shutil.rmtree(work, ignore_errors=True)


# hosts fetching from an object store, or shipped the bars (--store) ---------------------------------
def store_or_shipped(args: Any) -> None:
    """The coordinator's CPU a shard and a MB of bars when the hosts fetch the bars from an object
    store themselves, against when it ships them from a local store (see the module docstring)."""
    import farmenv
    from netns_farm import SUBNET_PREFIX, Farm, missing_requirements
    from s3server import S3Server

    from backtest import paths
    from backtest.data import Store
    from backtest.data.demo import write_demo
    from backtest.executors.base import ExecutorOptions
    from backtest.executors.ssh import ship
    from backtest.executors.ssh.connect import SSHSettings
    from backtest.executors.ssh.executor import SSHExecutor
    from backtest.executors.ssh.hostsfile import parse_hosts
    from backtest.run import RunRequest, execute, prepare

    reason = missing_requirements()
    if reason:
        sys.exit(f"bench_ssh: {reason}")
    n_hosts, host_cores = args.hosts, args.cores or 1
    grid = args.grid or ["fast=10,20", "slow=100"]
    sma = HERE.parent / "strategies" / "sma_cross.py"
    work = Path(tempfile.mkdtemp(prefix="bt-bench-store-"))
    roots = {"shipped": work / "local", "fetched": work / "store"}
    write_demo(Store(roots["shipped"], uri=None), symbols=args.symbols, freq="1min", days=args.days)
    python = farmenv.shared_python()
    env_dirs = farmenv.prebuilt(python)
    aside = itertools.count()
    with Farm.start(n_hosts) as farm:
        for host in farm.hosts:
            farmenv.provision(host, *env_dirs)
        farmenv.aws_credentials(farm)
        hosts_file = farm.hosts_file([h.line(key=farm.client_key, python=python, cores=host_cores)
                                      for h in farm.hosts])
        server = S3Server(f"{SUBNET_PREFIX}.{farm.octet}.1")
        try:
            os.environ.update(server.env())  # the coordinator's keys and the endpoint
            uri = f"s3://{server.bucket()}/bench"
            paths.set_root(roots["fetched"])  # the store is configured for this data root only
            paths.set_store(uri)
            store = Store(roots["fetched"])
            write_demo(store, symbols=args.symbols, freq="1min", days=args.days)
            size = {p.sha256: p.size for sym in store.symbols() for p in store.partitions(sym)}
            print(f"machine: {os.cpu_count()} cores, load {_load()}; data: {args.symbols} symbols x 1-minute bars x "
                  f"{args.days} days ({sum(size.values()) / 1e6:.1f} MB of partitions); grid {' '.join(grid)}; "
                  f"farm: {n_hosts} hosts x cores={host_cores}; S3: moto on {server.endpoint}")

            def one(how: str) -> dict[str, Any]:
                root = roots[how]
                if (root / "results").exists():  # every result file written anew
                    os.rename(root / "results", work / f"old-results-{next(aside)}")
                for host in farm.hosts:  # nothing fetched or shipped before
                    shutil.rmtree(host.home / ".cache" / "bt" / "objects", ignore_errors=True)
                ship._SHA_CACHE.clear()
                prep = prepare(RunRequest(strategy=sma, params=grid, hosts=hosts_file, force=True), root)
                ex = SSHExecutor(parse_hosts(hosts_file.read_text()), ExecutorOptions(data_root=root),
                                 settings=SSHSettings(known_hosts=farm.known_hosts))
                ex.start(prep.job.strategy)
                close = _keep_open(ex)
                try:
                    _until_up(ex, n_hosts * host_cores, close)
                    idle = _idle_rate(ex, 2.0)
                    ru0, t0 = _rusage(), time.perf_counter()
                    summary = execute(prep, None, ex)
                    wall, ru = time.perf_counter() - t0, _rusage()
                finally:
                    close()
                assert summary.status == "done" and summary.failed == 0, summary
                if how == "fetched" and not all(h.objects.direct for h in ex.hosts):
                    sys.exit("bench_ssh: a host did not fetch from the store: "
                             + "; ".join(f"{h.name}: {h.objects.direct_reason}" for h in ex.hosts))
                shipped = sum(r.bytes_raw for h in ex.hosts for r in h.objects.reports)
                fetched = sum(size[sha] for h in ex.hosts for sha in h.objects.fetched)
                cpu = ru[0] - ru0[0] + ru[1] - ru0[1]
                return {"shards": len(prep.shards), "tasks": len(prep.tasks), "wall": wall, "cpu": cpu,
                        "net": cpu - idle * wall, "mb": (shipped + fetched) / 1e6, "shipped": shipped / 1e6,
                        "fetched": fetched / 1e6, "wire": sum(r.bytes_wire for h in ex.hosts
                                                              for r in h.objects.reports) / 1e6}

            runs: dict[str, list[dict[str, Any]]] = {"fetched": [], "shipped": []}
            for i in range(args.repeat):
                print(f"round {i + 1}, load {_load()}")
                for how in runs:
                    r = one(how)
                    runs[how].append(r)
                    moved = (f"hosts fetched {r['fetched']:.1f} MB" if how == "fetched" else
                             f"shipped {r['shipped']:.1f} MB ({r['wire']:.1f} MB on the wire)")
                    print(f"  {how:7}: {r['shards']} shards, {r['tasks']} tasks, {moved}; {r['wall']:.2f} s; "
                          f"coordinator CPU {r['cpu']:.2f} s, {r['net']:.2f} s less idle = "
                          f"{r['net'] / r['shards'] * 1000:.1f} ms a shard, {r['net'] / r['mb'] * 1000:.1f} ms a MB")
                if i == 0:
                    assert results(roots["fetched"]) == results(roots["shipped"]), "results differ"
                    print("  result files: byte-identical")
        finally:
            server.stop()
    mean = {how: {k: statistics.mean(r[k] for r in rs) for k in ("net", "mb", "shards")} for how, rs in runs.items()}
    print(f"\nmean of {args.repeat} rounds (coordinator CPU less idle):")
    for how, m in mean.items():
        print(f"  {how:7}: {m['net'] / m['shards'] * 1000:.1f} ms a shard, {m['net'] / m['mb'] * 1000:.1f} ms a MB "
              f"of bars ({m['net']:.2f} s for {m['shards']:.0f} shards, {m['mb']:.1f} MB)")
    fetch, shipped = mean["fetched"], mean["shipped"]
    print(f"  shipped / fetched: {shipped['net'] / fetch['net']:.1f}x the coordinator's CPU; shipping itself costs "
          f"{(shipped['net'] - fetch['net']) / shipped['mb'] * 1000:.1f} ms a MB shipped")
    shutil.rmtree(work, ignore_errors=True)


def _until_up(ex: Any, want: int, close: Any) -> None:
    """Poll a started SSH executor until its ``want`` workers are all up and idle."""
    t0 = time.perf_counter()
    while not (len(ex._slots) == want and all(s.state == "idle" for s in ex._slots)):
        notes = [e for e in ex.poll(0.2) if "set aside" in getattr(e, "message", "")]
        if notes or time.perf_counter() - t0 > 600:
            close()
            sys.exit(f"bench_ssh: the farm did not come up: {notes or [s.state for s in ex._slots]}")


def _idle_rate(ex: Any, seconds: float) -> float:
    """Coordinator CPU a second with every worker idle, polled as ``execute`` polls."""
    cpu0, t0 = _cpu(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ex.poll(0.1)
        ex.status()
    return (_cpu() - cpu0) / (time.perf_counter() - t0)


def _load() -> str:
    """This machine's load averages (1, 5 min): anything else running skews wall times."""
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def _rusage() -> tuple[float, float]:
    """User and system CPU seconds of this process so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def _keep_open(ex: Any) -> Any:
    """Let one started executor run several jobs (``execute`` closes its executor at the end);
    returns the real ``close``."""
    real = ex.close
    ex.close = lambda *, cancel=False: None
    return real


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
