"""Fixtures for the ssh tests: farms of real sshd servers in network namespaces (netns_farm).

Without root or sshd the farm tests skip with the reason, except in CI (``CI`` set), where they
must run and therefore fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netns_farm import Farm
from sshhelpers import require_farm, start_farm

from backtest.executors.ssh.connect import SSHSettings


@pytest.fixture(scope="module")
def farm() -> Iterator[Farm]:
    """Two hosts shared by a module's tests (tests that break hosts use ``own_farm``)."""
    with start_farm(2) as f:
        yield f


@pytest.fixture
def own_farm() -> Iterator[Farm]:
    """One fresh host for a test that kills, freezes or cuts it."""
    with start_farm(1) as f:
        yield f


@pytest.fixture
def settings(farm: Farm) -> SSHSettings:
    return SSHSettings(known_hosts=farm.known_hosts, connect_timeout=3.0)


# The SSH executor's tests: hosts that run exactly the coordinator's Python, with bt's environment
# and code pre-built and numba's cache warm (see farmenv), so that a host is ready in a second.


@pytest.fixture(scope="session")
def farm_python() -> str:
    require_farm()
    from farmenv import shared_python

    return shared_python()


@pytest.fixture(scope="session")
def prebuilt_env(farm_python: str) -> tuple[Path, Path]:
    from farmenv import prebuilt

    return prebuilt(farm_python)


@pytest.fixture
def ready_farm(prebuilt_env: tuple[Path, Path]) -> Iterator[Farm]:
    """Three fresh hosts that find bt's environment ready (a fault may be done to any of them)."""
    from farmenv import provision

    with start_farm(3) as f:
        for host in f.hosts:
            provision(host, *prebuilt_env)
        yield f
