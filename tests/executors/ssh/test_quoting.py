"""Remote command lines pass through every common login shell unchanged (sshd hands the command to
the user's shell): run here through real bash, dash, zsh and fish, no SSH needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from backtest.executors.ssh.connect import quote_argv, sh_argv
from backtest.executors.ssh.remote import agent_argv

SHELLS = ["bash", "dash", "zsh", "fish"]
ECHO = "import json, sys; print(json.dumps(sys.argv[1:]))"
ARGS = ["plain", "a b", "$HOME", "~/x", "*", "(paren)", "semi;colon", "a&&b", "{1,2}", "%self",
        "#hash", "new\nline", "!bang", "tab\there", "ütf-8", "", "--flag=v", "it's", "'", "\\",
        "back\\slash", "\\'", "'\\", "\\\\n", '"dq"', "\\$HOME", "a'b\\c\"d$e`f"]


def login_shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} must be installed in CI (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")
    return path


def through(shell: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run([shell, "-c", quote_argv(argv)], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("name", SHELLS)
def test_every_word_arrives_as_written(name: str) -> None:
    done = through(login_shell(name), [sys.executable, "-c", ECHO, *ARGS])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ARGS


@pytest.mark.parametrize("name", SHELLS)
def test_code_with_quotes_and_backslashes_runs_as_written(name: str) -> None:
    source = 'import sys\nprint("it\'s a \\\\ backslash", sys.argv[1:])\n'
    done = through(login_shell(name), [sys.executable, "-c", source, "x y"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == "it's a \\ backslash ['x y']\n"


@pytest.mark.parametrize("name", SHELLS)
def test_the_agent_and_sh_scripts_run_under_every_shell(name: str) -> None:
    shell = login_shell(name)
    done = through(shell, agent_argv(sys.executable, "no-such-command"))
    assert done.returncode == 2 and "unknown command 'no-such-command'" in done.stderr
    done = through(shell, sh_argv("i=0; while [ $i -lt 3 ]; do i=$((i+1)); done; echo $i"))
    assert (done.returncode, done.stdout) == (0, "3\n")
