"""The command-line process keeps freed memory for reuse (nettrim_cli/execution/memory.py)."""

from __future__ import annotations

import platform
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from nettrim_cli.execution.memory import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_glibc_takes_the_thresholds():
    assert keep_freed_memory() is True


def test_the_command_sets_them_before_it_runs():
    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert scripts["project"]["scripts"]["nettrim"] == "nettrim_cli.cli:run"
    done = subprocess.run([sys.executable, "-m", "nettrim_cli", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and not done.stderr
