"""The whole tree is formatted and linted: ruff (lint and format) on the Python, snakefmt on
the Snakefiles, with the settings in pyproject.toml (`make lint` runs the same)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SNAKEFILES = ["Snakefile", "workflow/rules"]


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "--no-cache", "."],
        ["ruff", "format", "--check", "--no-cache", "."],
        ["snakefmt", "--check", *SNAKEFILES],
    ],
    ids=["ruff-check", "ruff-format", "snakefmt"],
)
def test_tree_is_clean(command: list[str]) -> None:
    tool = BIN / command[0]
    assert tool.is_file(), f"{command[0]} is not installed in {BIN}: run make setup (it is a test extra)"
    done = subprocess.run([str(tool), *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"{' '.join(command)} found problems; fix them or run `make format`:\n{done.stdout}{done.stderr}"
    )
