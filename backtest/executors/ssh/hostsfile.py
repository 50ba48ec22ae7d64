"""Hosts files and ``ssh://`` URLs → ``HostSpec`` s.

A hosts file has one host a line::

    # name            options (all optional)
    gpu-box                                   # user and port from ~/.ssh/config
    alice@10.0.0.7:2222   cores=8
    bob@old-server        python=/opt/py311/bin/python3  key=~/.ssh/id_farm

``[user@]host[:port]`` (an IPv6 address goes in brackets: ``[fe80::1]:22``), then ``cores=N``
(use N workers instead of the cores the host reports), ``python=PATH`` (the Python ≥ 3.11 that
bootstraps the host's environment; default ``python3``), ``key=PATH`` (a private key to try first).
``#`` starts a comment; blank lines are ignored. Every malformed line is reported, with its
number, in one error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from backtest.errors import UsageError, did_you_mean

OPTIONS = ("cores", "python", "key")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_.\-%]+$")
_USER = re.compile(r"^[A-Za-z0-9_.\-$]+$")


@dataclass(frozen=True)
class HostSpec:
    """One host of a farm, as written by the user. ``None`` means "ask ssh config / the host"."""

    host: str
    user: str | None = None
    port: int | None = None
    cores: int | None = None
    python: str | None = None
    key: str | None = None
    line: int | None = None

    @property
    def name(self) -> str:
        """``user@host:port`` as written (what tables and errors show)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{self.user}@{host}" if self.user else host
        return f"{text}:{self.port}" if self.port else text

    @property
    def python_command(self) -> str:
        return self.python or "python3"


def _parse_target(target: str) -> tuple[HostSpec | None, str | None]:
    """``[user@]host[:port]`` → (spec, None) or (None, what is wrong)."""
    user: str | None = None
    rest = target
    if "@" in target:
        user, _, rest = target.rpartition("@")
        if not user:
            return None, f"empty user name in {target!r}"
        if not _USER.match(user):
            return None, f"bad user name {user!r}"
    port_text: str | None = None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            return None, f"unclosed '[' in {target!r}"
        host, after = rest[1:end], rest[end + 1 :]
        if after:
            if not after.startswith(":"):
                return None, f"unexpected {after!r} after ']' in {target!r}"
            port_text = after[1:]
        if not host:
            return None, f"empty host in {target!r}"
    else:
        host = rest
        if rest.count(":") == 1:
            host, port_text = rest.split(":")
        elif rest.count(":") > 1:
            return None, f"IPv6 address {rest!r} must be in brackets, e.g. [{rest}]:22"
        if not host:
            return None, f"empty host in {target!r}"
        if not _HOSTNAME.match(host):
            return None, f"bad host name {host!r}"
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            return None, f"bad port {port_text!r} (a number from 1 to 65535)"
        port = int(port_text)
    return HostSpec(host=host, user=user, port=port), None


def _parse_line(text: str, number: int) -> tuple[HostSpec | None, list[str]]:
    words = text.split()
    spec, problem = _parse_target(words[0])
    problems = [problem] if problem else []
    if "=" in words[0]:
        problems = [f"must start with [user@]host[:port], not the option {words[0]!r}"]
        spec = None
    options: dict[str, str] = {}
    for word in words[1:]:
        name, eq, value = word.partition("=")
        if not eq:
            problems.append(f"{word!r} is not an option (options are name=value: {', '.join(OPTIONS)})")
            continue
        if name not in OPTIONS:
            problems.append(
                f"unknown option {name!r}.{did_you_mean(name, OPTIONS)} Known: {', '.join(OPTIONS)}"
            )
            continue
        if name in options:
            problems.append(f"option {name!r} given twice")
            continue
        if not value:
            problems.append(f"option {name!r} has no value")
            continue
        options[name] = value
    cores: int | None = None
    if "cores" in options:
        if not options["cores"].isdigit() or int(options["cores"]) < 1:
            problems.append(f"cores={options['cores']} is not a whole number ≥ 1")
        else:
            cores = int(options["cores"])
    if problems or spec is None:
        return None, problems
    return (
        HostSpec(
            host=spec.host,
            user=spec.user,
            port=spec.port,
            cores=cores,
            python=options.get("python"),
            key=options.get("key"),
            line=number,
        ),
        [],
    )


def _strip_comment(line: str) -> str:
    # '#' starts a comment at the start of a line or after whitespace; "key=/a#b" keeps its '#'
    match = re.search(r"(^|\s)#", line)
    return line[: match.start()] if match else line


def parse_hosts(text: str, source: str = "hosts file", unit: str = "line") -> list[HostSpec]:
    """Parse hosts-file text; raise one UsageError naming every bad line (``unit``: what a line
    is called in the message: "line" in a file, "host" in an ``ssh://`` URL)."""
    specs: list[HostSpec] = []
    errors: list[str] = []
    seen: dict[tuple[str, str | None, int | None], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        spec, problems = _parse_line(line, number)
        if spec is not None:
            ident = (spec.host, spec.user, spec.port)
            if ident in seen:
                problems = [f"{spec.name} is already listed as {unit} {seen[ident]}"]
            else:
                seen[ident] = number
                specs.append(spec)
        errors.extend(f"{unit} {number}: {p}" for p in problems)
    if errors:
        raise UsageError(
            f"{source}: {len(errors)} bad {unit}{'s' if len(errors) > 1 else ''}: " + "; ".join(errors)
        )
    if not specs:
        raise UsageError(f"{source}: no hosts (one [user@]host[:port] a line)")
    return specs


def read_hosts_file(path: Path | str) -> list[HostSpec]:
    """Read and parse a hosts file; a missing or unreadable file is a UsageError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UsageError(f"hosts file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read hosts file {path}: {exc}") from exc
    return parse_hosts(text, source=str(path))


def parse_ssh_url(url: str) -> list[HostSpec]:
    """``ssh://h1,alice@h2:2222`` → HostSpecs (no per-host options in a URL)."""
    if not url.startswith("ssh://"):
        raise UsageError(f"not an ssh:// URL: {url!r}")
    body = url[len("ssh://") :].strip("/")
    if not body:
        raise UsageError("ssh:// URL names no hosts, e.g. ssh://host1,alice@host2:2222")
    text = "\n".join(part.strip() for part in body.split(","))
    return parse_hosts(text, source=url, unit="host")
