"""The SSH farm: hosts files, verified connections, bootstrap, content-addressed shipping.

Phase 2 (the SSH executor) uses, per host::

    from backtest.farm.bootstrap import bootstrap
    from backtest.farm.connect import SSHSettings, connect
    from backtest.farm.hostsfile import read_hosts_file
    from backtest.farm.ship import ship
    from backtest.farm.stream import open_stream

    specs = read_hosts_file("farm.txt")                      # or parse_ssh_url("ssh://h1,h2")
    conn = connect(spec, SSHSettings(accept_new_hosts=...))  # HostError on any failure
    env = bootstrap(conn, spec)                              # RemoteEnv: .cores, .worker_argv()
    ship(conn, [(path, sha256), ...], python=spec.python_command)   # into ~/.cache/bt/objects
    proc = open_stream(conn, env.worker_argv(), python=spec.python_command)   # per core

Modules: ``hostsfile`` (parsing), ``connect`` (SSH), ``environment`` (fingerprint, pins,
wheels), ``bootstrap``, ``ship``, ``stream`` (remote processes), ``check`` (``bt hosts
check``), ``agent`` (the host-side script). Import from the modules; fabric and paramiko load
only when ``connect`` is imported.
"""

from __future__ import annotations

from backtest.farm.hostsfile import HostSpec, parse_hosts, parse_ssh_url, read_hosts_file

__all__ = ["HostSpec", "parse_hosts", "parse_ssh_url", "read_hosts_file"]
