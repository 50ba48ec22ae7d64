"""A strategy that tries, by its ``mode`` parameter, each way out of the sandbox; shared by the
local and the SSH sandbox tests. ``arg`` says where (an address, a path, a marker)."""

ESCAPES = """
import os
import socket
import time


class Escape(Strategy):
    mode = "ok"
    arg = ""

    def signals(self, bars):
        m = self.mode
        if m == "net":
            host, port = self.arg.split(":")
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(b"escaped")
        elif m == "read":
            print(open(self.arg).read())
        elif m == "write":
            with open(self.arg, "w") as fh:
                fh.write("escaped")
        elif m == "scratch":  # what strategies may do: write and read back under $HOME and the temp folder
            import tempfile

            for folder in (os.environ["HOME"], tempfile.gettempdir()):
                path = os.path.join(folder, "note.txt")
                with open(path, "w") as fh:
                    fh.write("kept")
                assert open(path).read() == "kept"
            if self.arg:  # a file from the last shard must be gone
                assert not os.path.exists(os.path.join(os.environ["HOME"], self.arg)), "scratch kept across shards"
            with open(os.path.join(os.environ["HOME"], "left-" + bars.symbol), "w") as fh:
                fh.write("x")
        elif m == "forks":
            for _ in range(200):
                if os.fork() == 0:
                    time.sleep(120)
                    os._exit(0)
        elif m == "daemon":  # double fork, setsid: a daemon that would outlive its worker
            pid = os.fork()
            if pid == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv("/bin/sleep", ["sleep", self.arg])
                os._exit(0)
            os.waitpid(pid, 0)
        elif m == "daemon-hang":  # a daemon, then a task that overruns --timeout: its worker is killed
            if os.fork() == 0:
                os.setsid()
                os.execv("/bin/sleep", ["sleep", self.arg])
            time.sleep(120)
        elif m == "memscan":  # the secret "s3cr3t-<arg>" anywhere in this process's memory
            tail, head, hits = self.arg.encode(), b"s3cr3t-", 0
            with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
                for line in maps:
                    parts = line.split()
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    if "r" not in parts[1] or hi - lo > 1 << 30:
                        continue
                    try:
                        mem.seek(lo)
                        chunk = mem.read(hi - lo)
                    except (OSError, ValueError, OverflowError):
                        continue
                    at = chunk.find(tail)
                    while at >= 0:
                        hits += chunk[at - len(head):at] == head
                        at = chunk.find(tail, at + 1)
            raise RuntimeError(f"memory hits={hits}")
        elif m == "memory":
            import numpy

            hoard = numpy.ones(20_000_000_000 // 8)
            hoard[::4096] = 2.0
        elif m == "env":
            seen = sorted(k for k in os.environ if "SECRET" in k or "TOKEN" in k or k == "SSH_AUTH_SOCK")
            try:
                parent = open(f"/proc/{os.getppid()}/environ").read()
                leaked = "s3cr3t" in parent
            except OSError:
                leaked = None
            raise RuntimeError(f"saw {seen}; parent's environ leaked={leaked}; HOME={os.environ['HOME']}")
        return np.where(bars.close > bars.close.mean(), 1.0, 0.0)
"""
