"""Content-addressed shipping into a real host's cache: verified, deduplicated, resent on damage."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_farm import Farm

from backtest.errors import HostError
from backtest.executors.ssh.connect import SSHSettings, connect, exec_command
from backtest.executors.ssh.hostsfile import HostSpec
from backtest.executors.ssh.ship import remote_have, ship

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def conn(farm: Farm) -> Iterator[object]:
    host = farm.hosts[0]
    c = connect(
        HostSpec(host.address, user=host.user, key=str(farm.client_key)),
        SSHSettings(known_hosts=farm.known_hosts),
    )
    yield c
    c.close()


def make_files(folder: Path, tag: str) -> list[tuple[Path, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(40):  # many small compressible files (CSV-like)
        path = folder / f"small{i}.csv"
        path.write_text("".join(f"{tag},{i},{j},{j * 1.5:.2f}\n" for j in range(200 + i)))
        files.append(path)
    big = folder / "random.bin"  # incompressible
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    files.append(big)
    text = folder / "big.csv"  # large and compressible
    text.write_text("".join(f"2024-01-01T00:{i % 60:02d},{tag},{i},{i * 0.25}\n" for i in range(300_000)))
    files.append(text)
    empty = folder / "empty"
    empty.write_bytes(b"")
    files.append(empty)
    return [(p, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]


def remote_sha256(conn: object, shas: list[str]) -> dict[str, str]:
    script = (
        "import hashlib, json, os, sys\n"
        "root = os.path.expanduser('~/.cache/bt/objects')\n"
        "out = {}\n"
        "for sha in json.load(sys.stdin):\n"
        "    with open(os.path.join(root, sha[:2], sha), 'rb') as fh:\n"
        "        out[sha] = hashlib.sha256(fh.read()).hexdigest()\n"
        "print(json.dumps(out))\n"
    )
    done = exec_command(conn, ["python3", "-c", script], input=json.dumps(shas).encode())  # type: ignore[arg-type]
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_ships_verifies_and_never_sends_twice(conn: object, tmp_path: Path) -> None:
    files = make_files(tmp_path / "a", "a")
    shas = [sha for _, sha in files]
    first = ship(conn, files)  # type: ignore[arg-type]
    assert sorted(first.sent) == sorted(shas) and not first.present and not first.resent
    raw = sum(p.stat().st_size for p, _ in files)
    assert first.bytes_raw == raw
    assert first.bytes_wire < raw * 0.6, "compressible files were not compressed"
    print(
        f"shipped {raw / 1e6:.1f} MB ({first.bytes_wire / 1e6:.1f} MB on the wire) in {first.seconds:.2f} s"
    )
    assert remote_sha256(conn, shas) == {sha: sha for sha in shas}

    again = ship(conn, files + files[:3])  # type: ignore[arg-type]
    assert sorted(again.present) == sorted(shas)
    assert again.sent == [] and again.bytes_wire == 0

    more = make_files(tmp_path / "b", "b")[:5]
    mixed = ship(conn, files[:10] + more)  # type: ignore[arg-type]
    assert sorted(mixed.sent) == sorted(sha for _, sha in more)
    assert len(mixed.present) == 10


def test_corruption_in_transit_is_detected_and_resent(conn: object, tmp_path: Path) -> None:
    files = make_files(tmp_path / "c", "c")
    victims = {files[0][1], files[-3][1]}  # one small compressed file, the big random one
    calls: list[tuple[str, int]] = []

    def flip_a_bit_on_first_attempt(sha: str, attempt: int, chunk: bytes) -> bytes:
        if sha in victims and attempt == 1 and chunk:
            calls.append((sha, attempt))
            return bytes([chunk[0] ^ 0x01]) + chunk[1:]
        return chunk

    report = ship(conn, files, tamper=flip_a_bit_on_first_attempt)  # type: ignore[arg-type]
    assert {sha for sha, _ in calls} == victims
    assert set(report.resent) == victims
    assert set(report.sent) | set(report.present) == {sha for _, sha in files}
    assert victims <= set(report.sent)
    assert remote_sha256(conn, list(victims)) == {sha: sha for sha in victims}


def test_corruption_every_time_gives_up_with_a_clear_error(conn: object, tmp_path: Path) -> None:
    path = tmp_path / "doomed.txt"
    path.write_text("doomed\n" * 1000)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(HostError, match=r"1 file\(s\) arrived corrupted 3 times: .*doomed.txt"):
        ship(conn, [(path, sha)], tamper=lambda s, a, chunk: chunk[:-1])  # type: ignore[arg-type]
    assert remote_have(conn, [sha]) == {}  # type: ignore[arg-type]


def test_damaged_object_on_the_host_is_replaced(conn: object, tmp_path: Path) -> None:
    path = tmp_path / "victim.csv"
    path.write_text("x,y\n" * 50_000)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    ship(conn, [(path, sha)])  # type: ignore[arg-type]
    # truncate the stored object on the host (a disk filled up, someone edited it)
    done = exec_command(conn, f"truncate -s 100 ~/.cache/bt/objects/{sha[:2]}/{sha}")  # type: ignore[arg-type]
    assert done.returncode == 0
    report = ship(conn, [(path, sha)])  # type: ignore[arg-type]
    assert report.sent == [sha]
    assert remote_sha256(conn, [sha]) == {sha: sha}


def test_everything_stays_under_the_cache_dir(farm: Farm, conn: object) -> None:
    home = farm.hosts[0].home
    written = {p.relative_to(home).parts[0] for p in home.rglob("*") if p.is_file()}
    assert written <= {".cache", ".ssh"}
    assert not list((home / ".cache" / "bt" / "objects").rglob("*.tmp-*"))


def test_the_cache_is_trimmed_oldest_use_first_and_never_under_a_worker(conn: object, tmp_path: Path) -> None:
    import time

    from backtest.executors.ssh.ship import trim_cache

    def size_on_host() -> int:
        script = ("import os\nroot = os.path.expanduser('~/.cache/bt/objects')\n"
                  "print(sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs))")
        done = exec_command(conn, ["python3", "-c", script])  # type: ignore[arg-type]
        return int(done.stdout)

    trim_cache(conn, 0)  # start empty  # type: ignore[arg-type]
    assert size_on_host() == 0
    old = [(p, s) for p, s in make_files(tmp_path / "old", "old") if p.stat().st_size > 1_000_000]
    ship(conn, old)  # type: ignore[arg-type]
    time.sleep(1.1)  # file times have a second's resolution on some file systems
    new = [(p, s) for p, s in make_files(tmp_path / "new", "new") if p.stat().st_size > 1_000_000]
    ship(conn, new)  # type: ignore[arg-type]
    time.sleep(1.1)
    remote_have(conn, [old[0][1]])  # asked for again: used now  # type: ignore[arg-type]
    sizes = {s: p.stat().st_size for p, s in old + new}
    keep = sizes[old[0][1]] + sum(sizes[s] for _, s in new)
    said = trim_cache(conn, keep)  # type: ignore[arg-type]
    assert said["left"] <= keep and said["freed"] == sum(sizes.values()) - said["left"]
    left = remote_have(conn, list(sizes))  # type: ignore[arg-type]
    assert old[0][1] in left and all(s in left for _, s in new)  # what was used last stays
    assert all(s not in left for _, s in old[1:])  # the rest of the old is out
    # a worker running here (a live process group recorded by the agent) stops any trimming
    script = ("import os, sys\nprocs = os.path.expanduser('~/.cache/bt/procs')\nos.makedirs(procs, exist_ok=True)\n"
              "open(os.path.join(procs, str(os.getpgid(int(sys.argv[1])))), 'w').close()")
    sleeper = exec_command(conn, ["sh", "-c", "setsid sleep 30 </dev/null >/dev/null 2>&1 & echo $!"])  # type: ignore[arg-type]
    pid = sleeper.stdout.decode().strip()
    exec_command(conn, ["python3", "-c", script, pid])  # type: ignore[arg-type]
    try:
        assert "skipped" in trim_cache(conn, 0)  # type: ignore[arg-type]
        assert size_on_host() == said["left"]
    finally:
        exec_command(conn, ["sh", "-c", f"kill {pid}; rm -rf ~/.cache/bt/procs"])  # type: ignore[arg-type]
    assert trim_cache(conn, 0)["left"] == 0  # type: ignore[arg-type]
    # a run does it in its first call to the host, the probe (no extra round trip)
    from backtest.executors.ssh.connect import quote_argv
    from backtest.executors.ssh.remote import agent_argv

    ship(conn, new)  # type: ignore[arg-type]
    done = exec_command(conn, quote_argv(agent_argv("python3", "probe", "no-env", "no-code", "0")))  # type: ignore[arg-type]
    said = json.loads(done.stdout)
    assert said["trimmed"] == {"freed": sum(sizes[s] for _, s in new), "left": 0} and said["env"] is None
