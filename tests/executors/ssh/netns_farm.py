"""A farm of real sshd servers, one network namespace per host, for the ssh tests.

Recipe: a blackhole route for 10.200.0.0/16 first, so that no packet to these addresses
can ever leave the machine; then per farm a bridge with 10.200.X.1/24 (X unique per farm, so farms
can coexist) and per host a network namespace with a veth into that bridge, address
10.200.X.(10+i), its own Unix user and home, its own host key, and ``sshd -D -e -f CONF -p 22``
started inside with ``ip netns exec`` (Popen, no inherited pipes).

Faults: ``kill`` (sshd and every process in the namespace), ``freeze``/``thaw`` (SIGSTOP/SIGCONT
every process in the namespace: the kernel still ACKs TCP), ``cut``/``mend`` (the host's veth
down/up), and ``silent_address`` (an address in the /24 whose frames go to a MAC nobody has, so a
SYN is never answered).

Teardown kills each namespace's processes, ``ss -K`` in it, deletes the veth, the namespace, the
user and the bridge. Each farm records its owner pid under ``/run/bt-test-farms``; a later farm
tears down the remains of farms whose owner died (a test run killed mid-way).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET_PREFIX = "10.200"
STATE_DIR = Path("/run/bt-test-farms")
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# Login shells a host's user may have. bash is the default: it is what user accounts get on most
# Linux machines, and it execs the last command of ``-c`` in place (so the launcher is already a
# session leader). fish does not read POSIX sh syntax.
SHELLS = ("bash", "sh", "zsh", "fish")


def shell_path(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"login shell {name} is not installed (apt-get install -y {name})")
    return path


def missing_requirements() -> str | None:
    """Why a farm cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "ssh farm tests need root (network namespaces, users, sshd)"
    if not Path(SSHD).exists():
        return "sshd is not installed (apt-get install -y openssh-server)"
    for tool in ("ip", "ss", "ssh-keygen", "useradd", "userdel"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def sh(*argv: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: the name of the secret every host's sshd puts in its sessions' environment
FARM_SECRET = "BT_FARM_SECRET_TOKEN"


@dataclass
class Host:
    index: int
    ns: str
    veth_root: str
    veth_ns: str
    address: str
    user: str
    home: Path
    dir: Path
    host_key: Path
    conf: Path
    pidfile: Path
    log: Path
    shell: str = "bash"
    proc: subprocess.Popen[bytes] | None = None

    def pids(self) -> list[int]:
        out = sh("ip", "netns", "pids", self.ns, check=False).stdout
        return [int(p) for p in out.split() if p.strip().isdigit()]

    def user_processes(self) -> list[str]:
        """Command lines of the processes in the namespace that run as this host's user."""
        import pwd

        uid = pwd.getpwnam(self.user).pw_uid
        found = []
        for pid in self.pids():
            try:
                if os.stat(f"/proc/{pid}").st_uid != uid:
                    continue
                cmdline = (
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
            found.append(f"{pid} {cmdline.strip()}")
        return found

    def line(self, **options: object) -> str:
        """This host as a hosts-file line, e.g. ``user@10.200.7.11 key=/tmp/.../client_key``."""
        opts = " ".join(f"{k}={v}" for k, v in options.items())
        return f"{self.user}@{self.address} {opts}".strip()


@dataclass
class Farm:
    """``Farm.start(n)`` makes n hosts; use as a context manager or call ``close()``."""

    octet: int
    dir: Path
    bridge: str
    client_key: Path
    known_hosts: Path
    hosts: list[Host] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)
    max_sessions: int = 10
    _closed: bool = False

    # -- creation -------------------------------------------------------------------------------

    @classmethod
    def start(cls, n_hosts: int, *, max_sessions: int = 10, shells: tuple[str, ...] = ("bash",)) -> Farm:
        """``n_hosts`` hosts; ``max_sessions`` is each sshd's MaxSessions (10: sshd's default);
        host i's user logs in with ``shells[i % len(shells)]`` (bash unless told otherwise)."""
        reason = missing_requirements()
        if reason:
            raise RuntimeError(reason)
        sh("ip", "route", "replace", "blackhole", f"{SUBNET_PREFIX}.0.0/16")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with open(STATE_DIR / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            reap_dead_farms()
            octet = _free_octet()
            farm_dir = Path(tempfile.mkdtemp(prefix=f"btfarm{octet}-"))
            farm_dir.chmod(0o755)
            farm = cls(
                octet=octet,
                dir=farm_dir,
                bridge=f"btf{octet}",
                client_key=farm_dir / "client_key",
                known_hosts=farm_dir / "known_hosts",
                max_sessions=max_sessions,
            )
            farm._record()
        try:
            farm._build(n_hosts, shells)
        except BaseException:
            farm.close()
            raise
        return farm

    def _record(self) -> None:
        state = {"owner": os.getpid(), "octet": self.octet, "dir": str(self.dir), "hosts": []}
        (STATE_DIR / f"{self.octet}.json").write_text(json.dumps(state))

    def _record_hosts(self) -> None:
        state = {
            "owner": os.getpid(),
            "octet": self.octet,
            "dir": str(self.dir),
            "hosts": [{"ns": h.ns, "veth": h.veth_root, "user": h.user} for h in self.hosts],
        }
        (STATE_DIR / f"{self.octet}.json").write_text(json.dumps(state))

    def _build(self, n_hosts: int, shells: tuple[str, ...]) -> None:
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bt-test-client", "-f", str(self.client_key))
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{SUBNET_PREFIX}.{self.octet}.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i in range(n_hosts):
            self.add_host(shell=shells[i % len(shells)])
        self.write_known_hosts()

    def add_host(self, shell: str = "bash") -> Host:
        i = len(self.hosts) + 1
        hdir = self.dir / f"h{i}"
        home = hdir / "home"
        (home / ".ssh").mkdir(parents=True)
        host = Host(
            index=i,
            ns=f"btf{self.octet}-h{i}",
            veth_root=f"btf{self.octet}r{i}",
            veth_ns=f"btf{self.octet}n{i}",
            address=f"{SUBNET_PREFIX}.{self.octet}.{10 + i}",
            user=f"btf{self.octet}u{i}",
            home=home,
            dir=hdir,
            host_key=hdir / "ssh_host_ed25519_key",
            conf=hdir / "sshd_config",
            pidfile=hdir / "sshd.pid",
            log=hdir / "sshd.log",
            shell=shell,
        )
        self.hosts.append(host)
        self._record_hosts()
        # user with its own home; '*' password: unlocked for sshd without PAM, no password login
        sh("userdel", "-f", host.user, check=False)
        sh("useradd", "-M", "-N", "-d", str(home), "-s", shell_path(shell), "-p", "*", host.user)
        pub = Path(str(self.client_key) + ".pub").read_text()
        (home / ".ssh" / "authorized_keys").write_text(pub)
        sh("chown", "-R", f"{host.user}:", str(home))
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.ns, "-f", str(host.host_key))
        host.conf.write_text(
            "\n".join(
                [
                    f"ListenAddress {host.address}",
                    f"HostKey {host.host_key}",
                    f"PidFile {host.pidfile}",
                    "AuthorizedKeysFile .ssh/authorized_keys",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "MaxStartups 200",
                    f"MaxSessions {self.max_sessions}",
                    "UseDNS no",
                    "PrintMotd no",
                    # a secret in every session's environment, as a cloud machine's might have: the
                    # sandbox tests check that no strategy sees it
                    f"SetEnv {FARM_SECRET}=s3cr3t",
                    "LogLevel VERBOSE",
                    f"AllowUsers {host.user}",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        # network namespace and veth into the bridge
        sh("ip", "netns", "add", host.ns)
        sh("ip", "link", "add", host.veth_root, "type", "veth", "peer", "name", host.veth_ns)
        sh("ip", "link", "set", host.veth_ns, "netns", host.ns)
        sh("ip", "link", "set", host.veth_root, "master", self.bridge)
        sh("ip", "link", "set", host.veth_root, "up")
        nsx = ("ip", "netns", "exec", host.ns)
        sh(*nsx, "ip", "link", "set", "lo", "up")
        sh(*nsx, "ip", "addr", "add", f"{host.address}/24", "dev", host.veth_ns)
        sh(*nsx, "ip", "link", "set", host.veth_ns, "up")
        self.start_sshd(host)
        return host

    def start_sshd(self, host: Host) -> None:
        with open(host.log, "ab") as log:
            host.proc = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, SSHD, "-D", "-e", "-f", str(host.conf), "-p", "22"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if host.proc.poll() is not None:
                raise RuntimeError(f"sshd for {host.ns} exited: {host.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((host.address, 22), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd for {host.ns} did not listen within 10 s: {host.log.read_text()[-2000:]}")

    def write_known_hosts(self) -> None:
        lines = []
        for h in self.hosts:
            kind, key = Path(str(h.host_key) + ".pub").read_text().split()[:2]
            lines.append(f"{h.address} {kind} {key}\n")
        self.known_hosts.write_text("".join(lines))

    def hosts_file(self, lines: list[str] | None = None, name: str = "farm.txt") -> Path:
        """Write a hosts file (default: every host with the client key) and return its path."""
        if lines is None:
            lines = [h.line(key=self.client_key) for h in self.hosts]
        path = self.dir / name
        path.write_text("\n".join(lines) + "\n")
        return path

    # -- faults ---------------------------------------------------------------------------------

    def kill(self, host: Host) -> None:
        """Crash the host: SIGKILL its sshd and every process in its namespace."""
        for _ in range(5):
            pids = host.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if host.proc is not None:
            with contextlib.suppress(Exception):
                host.proc.wait(timeout=5)

    def freeze(self, host: Host) -> None:
        """SIGSTOP every process of the host; its kernel still answers TCP.

        Repeats until no new process shows up: sshd forks a session's child just after
        authentication, so one listing taken right after a login can miss it."""
        stopped: set[int] = set()
        stable = 0
        while stable < 3:
            new = set(host.pids()) - stopped
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= new
            stable = 0 if new else stable + 1
            time.sleep(0.05)

    def thaw(self, host: Host) -> None:
        for pid in host.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def cut(self, host: Host) -> None:
        """Cut the host's link: its packets go nowhere, nothing is answered or refused."""
        sh("ip", "link", "set", host.veth_root, "down")

    def mend(self, host: Host) -> None:
        sh("ip", "link", "set", host.veth_root, "up")

    def silent_address(self) -> str:
        """An address in the farm's /24 that never answers (frames go to a MAC nobody has)."""
        n = 200 + len(self.silent)
        address = f"{SUBNET_PREFIX}.{self.octet}.{n}"
        mac = f"02:00:00:00:{self.octet:02x}:{n:02x}"
        sh("ip", "neigh", "replace", address, "lladdr", mac, "dev", self.bridge, "nud", "permanent")
        self.silent.append(address)
        return address

    def exec_in(self, host: Host, *argv: str, user: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host's namespace, as its user by default (test inspection)."""
        prefix = ["ip", "netns", "exec", host.ns]
        if user:
            prefix += ["runuser", "-u", host.user, "--", "env", f"HOME={host.home}"]
        return sh(*prefix, *argv, check=False)

    # -- teardown -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        teardown(
            self.octet,
            [(h.ns, h.veth_root, h.user) for h in self.hosts],
            self.dir,
        )

    def __enter__(self) -> Farm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_namespace(ns: str) -> None:
    for _ in range(10):
        out = sh("ip", "netns", "pids", ns, check=False).stdout
        pids = [int(p) for p in out.split() if p.strip().isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def teardown(octet: int, hosts: list[tuple[str, str, str]], farm_dir: Path | None) -> None:
    """Remove everything a farm made; every step tolerates what is already gone."""
    for ns, veth, user in hosts:
        _kill_namespace(ns)
        sh("ip", "netns", "exec", ns, "ss", "-K", check=False)
        sh("ip", "link", "del", veth, check=False)
        sh("ip", "netns", "del", ns, check=False)
        sh("userdel", "-f", user, check=False)
    sh("ip", "link", "del", f"btf{octet}", check=False)
    if farm_dir is not None and farm_dir.exists():
        # homes may hold bootstrapped venvs (~1 GB of small files): delete them in the background
        trash = farm_dir.with_name(f".trash-{farm_dir.name}")
        try:
            farm_dir.rename(trash)
        except OSError:
            trash = farm_dir
        subprocess.Popen(
            ["rm", "-rf", str(trash)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    with contextlib.suppress(FileNotFoundError):
        (STATE_DIR / f"{octet}.json").unlink()


def reap_dead_farms() -> None:
    """Tear down farms whose owning process is gone (a killed test run)."""
    for state_file in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(int(state.get("owner", 0))):
            continue
        teardown(
            int(state["octet"]),
            [(h["ns"], h["veth"], h["user"]) for h in state.get("hosts", [])],
            Path(state["dir"]) if state.get("dir") else None,
        )


def _free_octet() -> int:
    used = {int(p.stem) for p in STATE_DIR.glob("*.json") if p.stem.isdigit()}
    addrs = sh("ip", "-o", "-4", "addr", "show", check=False).stdout
    links = sh("ip", "-o", "link", "show", check=False).stdout
    candidates = [x for x in range(1, 250) if x not in used]
    random.shuffle(candidates)
    for x in candidates:
        if f" {SUBNET_PREFIX}.{x}." in addrs or f" btf{x}:" in links or f" btf{x}r" in links:
            continue
        return x
    raise RuntimeError("no free 10.200.X.0/24 for a test farm")
