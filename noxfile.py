"""nox sessions: tests, lint, typecheck, bench."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff", "import-linter")
    session.run("ruff", "check", "backtest", "strategies", "tests", "benchmarks", "noxfile.py")
    session.run("lint-imports")  # the layer contracts in pyproject.toml


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", "backtest")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks against the peers (never part of tests or CI). bt is installed as the README
    installs it (``pip install .``), not editable: an editable install puts a finder in front of
    every import of bt's modules, which users do not pay."""
    session.install(".")
    session.run("python", "benchmarks/run.py", *session.posargs)
