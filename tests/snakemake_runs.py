"""Real snakemake runs on the tiny config, and directories that a test session builds once.

The tiny config (tests/configs/tiny.yaml) shrinks the phantom, the grids and the model so
that the whole workflow -- DICOM writing, conversion, resampling, segmentation, template,
SyN, coarse grid, CAE training, choice of K, clustering, CLAM -- runs for real in about a
minute or two per run on two cores.

``make test`` runs the suite in several pytest-xdist worker processes; :func:`build_once`
lets them share one build of an expensive directory (the tiny demo run) instead of each
making its own.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY = PROJECT_ROOT / "tests" / "configs" / "tiny.yaml"
#: Held around the tests' apt-get installs (Slurm, chromium): pytest-xdist's workers would
#: otherwise race for dpkg's lock, and the loser would skip its test.
APT_GET_LOCK = Path(tempfile.gettempdir()) / "lungclam-tests-apt-get.lock"
#: The tests that run snakemake in the demo run's folder (a dry run, the report) or copy
#: that folder (the split viewer). Under pytest-xdist's ``--dist loadgroup`` they run on one
#: worker, one after another, so that none copies the folder while another writes in it;
#: the other tests only read the demo run's results, and run on any worker.
IN_DEMO_FOLDER = pytest.mark.xdist_group("demo_folder")


def snakemake_command(workdir: Path, *args: str, configfiles: tuple[Path, ...] = ()) -> list[str]:
    """The real snakemake CLI on this project's Snakefile in ``workdir``, with the tiny
    config (and ``configfiles`` over it, in order) and ``args``."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(PROJECT_ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(TINY),
        *map(str, configfiles),
        *args,
    ]


def snakemake(
    workdir: Path, *args: str, check: bool = True, configfiles: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess:
    """Run :func:`snakemake_command`; with ``check``, a failed run fails the test with its
    output's tail."""
    done = subprocess.run(
        snakemake_command(workdir, *args, configfiles=configfiles), capture_output=True, text=True, timeout=900
    )
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
    return done


def planned_jobs(output: str) -> list[tuple[str, str | None]]:
    """(rule, subject) of every job a dry run lists."""
    jobs: list[tuple[str, str | None]] = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", output):
        match = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block.strip())
        if not match:
            continue
        subject = re.search(r"wildcards: .*?subject=([A-Za-z0-9_-]+)", block)
        jobs.append((match.group(1), subject.group(1) if subject else None))
    return jobs


@contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (POSIX advisory; closing the file on
    exit, or the holding process dying, releases it)."""
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The directory ``name``, made by ``build(directory)`` once per test session.

    Under pytest-xdist every worker is its own session, so the directory lives in the
    folder above the workers' own temporary folders, and a file lock makes the other
    workers wait for the first one's build instead of repeating it. A build that raised is
    not retried: the others fail at once with its error. A build cut short (its worker
    killed) left no ``.built`` marker and is made again from scratch.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    directory, built, failed = root / name, root / f"{name}.built", root / f"{name}.failed"
    with exclusive(root / f"{name}.lock"):
        if failed.exists():
            pytest.fail(f"building {name} failed in another worker:\n{failed.read_text()}")
        if not built.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            try:
                build(directory)
            except BaseException:
                failed.write_text(traceback.format_exc()[-8000:])
                raise
            built.touch()
    return directory
