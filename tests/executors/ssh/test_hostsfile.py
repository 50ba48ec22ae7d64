"""Hosts files and ssh:// URLs (pure parsing: no sshd needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backtest.errors import UsageError
from backtest.executors.ssh.hostsfile import HostSpec, parse_hosts, parse_ssh_url, read_hosts_file


def test_full_syntax(tmp_path: Path) -> None:
    path = tmp_path / "farm.txt"
    path.write_text(
        "# my farm\n"
        "\n"
        "gpu-box\n"
        "alice@10.0.0.7:2222   cores=8   # the big one\n"
        "bob@old-server python=/opt/py311/bin/python3 key=~/.ssh/id_farm\n"
        "[fe80::1]:2200\n"
        "carol@[::1]\n"
    )
    specs = read_hosts_file(path)
    assert specs == [
        HostSpec("gpu-box", line=3),
        HostSpec("10.0.0.7", user="alice", port=2222, cores=8, line=4),
        HostSpec("old-server", user="bob", python="/opt/py311/bin/python3", key="~/.ssh/id_farm", line=5),
        HostSpec("fe80::1", port=2200, line=6),
        HostSpec("::1", user="carol", line=7),
    ]
    assert [s.name for s in specs] == [
        "gpu-box",
        "alice@10.0.0.7:2222",
        "bob@old-server",
        "[fe80::1]:2200",
        "carol@[::1]",
    ]
    assert specs[0].python_command == "python3"


def test_every_bad_line_is_named_once() -> None:
    text = (
        "good-host\n"
        "alice@host:99999\n"  # 2: bad port
        "host cores=0\n"  # 3: cores
        "host2 core=4\n"  # 4: unknown option, did you mean
        "host3 cores\n"  # 5: not name=value
        "@host4\n"  # 6: empty user
        "host5 key=\n"  # 7: empty value
        "fe80::1\n"  # 8: IPv6 without brackets
        "good-host\n"  # 9: duplicate of line 1
        "cores=4\n"  # 10: option instead of host
        "host6 python=a python=b\n"  # 11: option twice
        "ho$t\n"  # 12: bad host name
    )
    with pytest.raises(UsageError) as err:
        parse_hosts(text, source="farm.txt")
    msg = str(err.value)
    assert msg.startswith("farm.txt: 11 bad lines: ")
    for number, fragment in [
        (2, "bad port '99999'"),
        (3, "cores=0 is not a whole number"),
        (4, "unknown option 'core'. Did you mean \"cores\"?"),
        (5, "'cores' is not an option"),
        (6, "empty user name"),
        (7, "option 'key' has no value"),
        (8, "IPv6 address 'fe80::1' must be in brackets"),
        (9, "good-host is already listed as line 1"),
        (10, "must start with [user@]host[:port]"),
        (11, "option 'python' given twice"),
        (12, "bad host name 'ho$t'"),
    ]:
        assert f"line {number}: {fragment}" in msg, (number, msg)
    assert "line 1:" not in msg


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n   \n")
    with pytest.raises(UsageError, match="no hosts"):
        read_hosts_file(empty)
    with pytest.raises(UsageError, match="does not exist"):
        read_hosts_file(tmp_path / "nope.txt")


def test_hash_inside_a_value_is_not_a_comment() -> None:
    (spec,) = parse_hosts("h key=/keys/a#1 # comment")
    assert spec.key == "/keys/a#1"


def test_ssh_url() -> None:
    assert parse_ssh_url("ssh://h1,alice@h2:2222") == [
        HostSpec("h1", line=1),
        HostSpec("h2", user="alice", port=2222, line=2),
    ]
    with pytest.raises(UsageError, match="names no hosts"):
        parse_ssh_url("ssh://")
    with pytest.raises(UsageError, match="1 bad host: host 2: bad port"):
        parse_ssh_url("ssh://h1,h2:x")
