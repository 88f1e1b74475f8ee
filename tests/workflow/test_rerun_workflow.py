"""Killed runs and reruns: SIGKILL the whole run during registration and again during
training, rerun the same command, and get exactly what an uninterrupted run gives; two clean
runs of the same config on the CPU agree (cluster assignments, CLAMs within 1e-6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import PROJECT_ROOT
from tests.snakemake_runs import TINY, snakemake

pytestmark = pytest.mark.workflow

COMMAND = [
    sys.executable,
    "-m",
    "snakemake",
    "--snakefile",
    str(PROJECT_ROOT / "Snakefile"),
    "--configfile",
    str(TINY),
    "--cores",
    "2",
]


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def assert_same_results(a: Path, b: Path) -> None:
    """Two runs' results/ folders: identical scans, registrations, clusters; CLAMs within 1e-6."""
    for stage in ("nifti", "lungmask", "template", "registered", "downsampled"):
        names = sorted(p.name for p in (a / stage).glob("*.nii.gz"))
        assert names and names == sorted(p.name for p in (b / stage).glob("*.nii.gz")), stage
        for name in names:
            assert np.array_equal(_array(a / stage / name), _array(b / stage / name)), (stage, name)
    for table in ("template/iterations.tsv", "model/features_pretrain.tsv", "model/k_selection.tsv", "clusters.tsv"):
        left = (a / table).read_text()
        if table == "template/iterations.tsv":  # its last column is seconds taken
            left, right = (
                [line.rsplit("\t", 1)[0] for line in t.splitlines()] for t in (left, (b / table).read_text())
            )
            assert left == right, table
        else:
            assert left == (b / table).read_text(), table
    maps = sorted(p.name for p in (a / "clam").glob("*.nii.gz"))
    assert maps and maps == sorted(p.name for p in (b / "clam").glob("*.nii.gz"))
    for name in maps:
        assert np.allclose(_array(a / "clam" / name), _array(b / "clam" / name), rtol=0, atol=1e-6), name


def _kill_when(workdir: Path, ready: Callable[[], bool], what: str, timeout: float = 600.0) -> None:
    """Start the run in its own process group; SIGKILL the whole group once ``ready()``."""
    with open(workdir.parent / f"{workdir.name}-{what}.out", "w") as out:
        proc = subprocess.Popen(
            [*COMMAND, "-d", str(workdir)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                if proc.poll() is not None:
                    pytest.fail(f"the run ended (rc {proc.returncode}) before {what}; see {out.name}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no {what} within {timeout:.0f} s")
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _unfinished(logs: list[Path], done: str) -> list[Path]:
    return [log for log in logs if done not in log.read_text()]


@pytest.mark.slow(seconds=75)  # a whole run, killed twice
def test_killed_twice_then_rerun_equals_an_uninterrupted_run(demo_run: Path, tmp_path: Path) -> None:
    work = tmp_path / "run"
    results = work / "results"

    # 1. Kill everything (snakemake and its jobs) two seconds into the first registration.
    register_logs = results / "logs" / "register"
    started: list[float] = []

    def registering() -> bool:
        if not started and list(register_logs.glob("*.log")):
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > 2.0

    _kill_when(work, registering, "a registration")
    interrupted = _unfinished(sorted(register_logs.glob("*.log")), "register done")
    assert interrupted, "the kill came after the registrations had finished"
    # What a write cut short would leave: a partial file under the final name.
    for log in interrupted:
        (results / "registered" / log.name.replace(".log", ".nii.gz")).write_bytes(b"partial")

    # 2. The same command again: it goes on (no lock or incomplete-file complaint); kill it
    #    in the middle of training, and leave a partial checkpoint behind.
    train_log = results / "logs" / "train.log"
    _kill_when(work, lambda: train_log.is_file() and "pretrain epoch 1/" in train_log.read_text(), "training")
    assert "train done" not in train_log.read_text()
    for log in interrupted:  # the partial registrations were remade, not taken as finished
        _array(results / "registered" / log.name.replace(".log", ".nii.gz"))
    (results / "model").mkdir(exist_ok=True)
    (results / "model" / "cae.pt").write_bytes(b"partial")

    # 3. The same command once more runs to the end, and matches the uninterrupted run.
    done = subprocess.run([*COMMAND, "-d", str(work)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "removed the lock left by an earlier run" in done.stderr
    assert_same_results(demo_run, results)
    assert "Nothing to be done" in snakemake(work, "-n").stdout


@pytest.mark.slow(seconds=60)
def test_two_clean_runs_agree(demo_run: Path, tmp_path: Path) -> None:
    """Reproducibility on the CPU: a second run from scratch in a fresh folder (about 2 min)."""
    snakemake(tmp_path, "--cores", "2")
    assert_same_results(demo_run, tmp_path / "results")
