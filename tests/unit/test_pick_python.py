"""tools/pick_python.sh: which interpreter `make setup` and the second-Python tests use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = PROJECT_ROOT / "tools" / "pick_python.sh"


def interpreter(minor: int) -> Path:
    """A real CPython 3.minor on this machine (pyenv's or the system's), else skip."""
    for candidate in [
        *sorted(Path.home().glob(f".pyenv/versions/3.{minor}.*/bin/python3.{minor}")),
        Path(f"/usr/bin/python3.{minor}"),
    ]:
        if candidate.is_file():
            return candidate
    pytest.skip(f"no Python 3.{minor} here to build a PATH with")


def pick(tmp_path: Path, links: dict[str, Path], *args: str) -> subprocess.CompletedProcess:
    """Run the script with a PATH holding only ``links`` (name -> interpreter) and sh's tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, target in links.items():
        (bin_dir / name).symlink_to(target)
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("sed", "sort", "ls", "grep", "tr", "dirname", "cat"):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        (tools / tool).symlink_to(found)
    env = {"PATH": f"{bin_dir}:{tools}", "HOME": str(tmp_path)}
    return subprocess.run(["/bin/sh", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_python3_out_of_range_falls_back_to_the_newest_supported(tmp_path: Path):
    old, newer = interpreter(10), interpreter(12)
    done = pick(tmp_path, {"python3": old, "python3.12": newer, "python3.11": interpreter(11)})
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve() == newer.resolve()


def test_python3_in_range_is_taken(tmp_path: Path):
    current = Path(sys.executable).resolve()
    done = pick(tmp_path, {"python3": current, "python3.12": interpreter(12)})
    assert done.returncode == 0, done.stderr
    check = subprocess.run(
        [done.stdout.strip(), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
    )
    assert check.stdout.strip() == str(tuple(sys.version_info[:2]))


def test_no_supported_python_stops_with_one_line_saying_what_to_install(tmp_path: Path):
    done = pick(tmp_path, {"python3": interpreter(10)})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "install python3.13" in done.stderr


def test_a_named_python_out_of_range_is_refused(tmp_path: Path):
    done = pick(tmp_path, {"python3.10": interpreter(10)}, "python3.10")
    assert done.returncode == 1 and "PYTHON=python3.10" in done.stderr


def test_the_second_python_differs_from_the_first(tmp_path: Path):
    first, second = interpreter(11), interpreter(12)
    done = pick(tmp_path, {"python3.11": first, "python3.12": second}, "--other-than", str(first))
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve() == second.resolve()
    alone = pick(tmp_path / "alone", {"python3.11": first}, "--other-than", str(first))
    assert alone.returncode == 1 and "no second Python found" in alone.stderr
