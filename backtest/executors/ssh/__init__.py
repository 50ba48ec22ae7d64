"""The SSH executor (``ssh://`` and ``--hosts FILE``) and its transport: hosts files, verified
connections, bootstrap, content-addressed shipping, remote worker processes.

``executor.SSHExecutor`` drives the farm; per host it uses::

    from backtest.executors.ssh.bootstrap import bootstrap
    from backtest.executors.ssh.connect import SSHSettings, connect
    from backtest.executors.ssh.hostsfile import read_hosts_file
    from backtest.executors.ssh.ship import ship
    from backtest.executors.ssh.stream import open_stream

    specs = read_hosts_file("farm.txt")                      # or parse_ssh_url("ssh://h1,h2")
    conn = connect(spec, SSHSettings(accept_new_hosts=...))  # HostError on any failure
    env = bootstrap(conn, spec)                              # RemoteEnv: .cores, .worker_argv()
    ship(conn, [(path, sha256), ...], python=spec.python_command)   # into ~/.cache/bt/objects
    proc = open_stream(conn, env.worker_argv(), python=spec.python_command)   # per core

Modules: ``executor`` (the executor), ``channel`` (a remote worker as the pool's channel),
``hostsfile`` (parsing), ``connect`` (SSH), ``environment`` (fingerprint, pins,
wheels), ``bootstrap``, ``ship``, ``stream`` (remote processes), ``check`` (``bt hosts
check``), ``agent`` (the host-side script). Import from the modules; fabric and paramiko load
only when ``connect`` is imported, the executor's machinery only when ``executor`` is.
"""
