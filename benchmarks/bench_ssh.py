"""SSH farm benchmark: 3 network-namespace hosts against the local executor, same job.

    python benchmarks/bench_ssh.py                       # 20 symbols x 1-minute bars x 252 days
    python benchmarks/bench_ssh.py --cores 1 --repeat 3 --grid "fast=5:50:5" --grid "slow=20:400:20"

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

Hosts run the coordinator's exact Python with bt's environment pre-built (``tests/executors/ssh/farmenv``),
so no host bootstraps inside a timed run.
"""

from __future__ import annotations

import argparse
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

        def send_shard(slot: Any, spec: dict[str, Any]) -> None:
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
    ap.add_argument("--repeat", type=int, default=2, help="timed warm runs of each (the best is kept)")
    ap.add_argument("--warm-only", action="store_true", help="only the first-result times of fresh and warm hosts")
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
