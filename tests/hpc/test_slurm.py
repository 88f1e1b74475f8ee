"""The tiny demo through `snakemake --profile slurm` on a real single-node Slurm.

tests/hpc/slurm.sh installs Debian's munge, MariaDB, slurmdbd, slurmctld and slurmd,
starts them on loopback and stops them by their pids afterwards. The cluster profile is
installed the way users install it (`make slurm-profile`, into a private
XDG_CONFIG_HOME), the run is `snakemake --profile slurm`, and its outputs must equal
those of a local run of the same config (the session's ``demo_run``). Skips, saying
why, where there is no root, no apt-get or no way to install or start the daemons; a
failing or differing run fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from tests.snakemake_runs import APT_GET_LOCK, PROJECT_ROOT, exclusive, snakemake_command

pytestmark = [pytest.mark.hpc, pytest.mark.slow(seconds=420)]

SLURM_SH = PROJECT_ROOT / "tests" / "hpc" / "slurm.sh"
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:]


def _have_daemons() -> bool:
    return all(shutil.which(name) or Path("/usr/sbin", name).exists() for name in DAEMONS)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node Slurm; yields the environment its clients need."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("the Slurm test needs root on Linux (it installs and starts munge, MariaDB and Slurm)")
    if not shutil.which("timeout"):
        pytest.skip("coreutils' timeout is missing")
    if not _have_daemons():
        if not shutil.which("apt-get"):
            pytest.skip("Slurm is not installed and there is no apt-get to install it")
        with exclusive(APT_GET_LOCK):
            done = subprocess.run(
                ["timeout", "-k", "10", "420", str(SLURM_SH), "install"], capture_output=True, text=True
            )
        if done.returncode != 0 or not _have_daemons():
            pytest.skip(
                f"could not install Slurm from Debian's packages (rc {done.returncode}):\n"
                f"{_tail(done.stdout + done.stderr, 1500)}"
            )
    if Path("/etc/slurm/slurm.conf").exists():
        pytest.skip("/etc/slurm/slurm.conf exists: a Slurm is configured on this machine already")
    profile = yaml.safe_load((PROJECT_ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    partition = profile["default-resources"]["slurm_partition"]
    # Under /var/tmp: the slurm and munge users must reach it (pytest's tmp is private).
    state = Path(tempfile.mkdtemp(prefix="lungclam-slurm-", dir="/var/tmp")) / "cluster"
    os.chmod(state.parent, 0o755)
    env = {**os.environ, "SLURM_CONF": str(state / "etc" / "slurm.conf")}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            ["timeout", "-k", "10", "150", str(SLURM_SH), "start", str(state), partition],
            capture_output=True,
            text=True,
        )
        startup_s = time.perf_counter() - started
        if done.returncode != 0:
            logs = (
                "".join(
                    f"\n--- {log.name}\n{_tail(log.read_text(errors='replace'), 800)}"
                    for log in sorted((state / "log").glob("*.log"))
                    if log.is_file()
                )
                if state.exists()
                else ""
            )
            pytest.skip(
                f"could not start the Slurm daemons (rc {done.returncode}):\n"
                f"{_tail(done.stdout + done.stderr, 1500)}{logs}"
            )
        print(f"Slurm start-up: {startup_s:.1f} s")
        yield {"env": env, "state": state, "partition": partition, "startup_s": startup_s}
    finally:
        subprocess.run(
            ["timeout", "-k", "10", "120", str(SLURM_SH), "stop", str(state)], capture_output=True, text=True
        )
        shutil.rmtree(state.parent, ignore_errors=True)


def _start(command: list[str], *, env: dict, cwd: Path, limit_s: int, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            ["timeout", "-k", "15", str(limit_s), *command], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# Wall-clock columns (seconds per epoch or template iteration) differ between any two runs.
TIMING_COLUMNS = ["seconds"]


def _compare_runs(local: Path, remote: Path) -> list[str]:
    """Every table (but its timing columns) and image both runs made, compared; returns
    the differences."""
    differences = []
    tables = sorted(
        p.relative_to(local) for p in local.rglob("*.tsv") if "benchmarks" not in p.parts and "logs" not in p.parts
    )
    images = sorted(p.relative_to(local) for p in local.rglob("*.nii.gz"))
    assert len(tables) > 10 and len(images) > 20, (tables, images)
    for rel in tables + images:
        if not (remote / rel).is_file():
            differences.append(f"{rel}: missing in the Slurm run")
        elif rel.name.endswith(".tsv"):
            a, b = (
                pd.read_csv(run / rel, sep="\t").drop(columns=TIMING_COLUMNS, errors="ignore")
                for run in (local, remote)
            )
            if not a.equals(b):
                differences.append(f"{rel}: tables differ")
        else:
            a, b = _array(local / rel), _array(remote / rel)
            if a.shape != b.shape or not np.array_equal(a, b):
                differences.append(
                    f"{rel}: arrays differ (max |diff| "
                    f"{np.abs(a.astype(float) - b.astype(float)).max() if a.shape == b.shape else 'shape'})"
                )
    return differences


def test_tiny_demo_through_the_slurm_profile_matches_a_local_run(slurm, request, tmp_path) -> None:
    env = dict(slurm["env"])
    # Install the cluster profile the way users do, into a private config folder.
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    done = subprocess.run(["make", "-s", "slurm-profile"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "config" / "snakemake" / "slurm" / "config.yaml").is_file()

    remote = tmp_path / "slurm_run"
    remote.mkdir()
    # A job that asks for more CPUs than the node has pends forever: --cores caps every
    # rule's threads and the width of the grouped preprocessing jobs at the node's CPUs.
    # Status checks every 5 s instead of after 40 s.
    cpus = str(os.cpu_count() or 1)
    through_slurm = (
        "--profile",
        "slurm",
        "--cores",
        cpus,
        "--max-threads",
        cpus,
        "--slurm-init-seconds-before-status-checks",
        "5",
        "--slurm-keep-successful-logs",
    )
    started = time.perf_counter()
    slurm_run = _start(
        snakemake_command(remote, *through_slurm),
        env=env,
        cwd=remote,
        limit_s=1200,
        log=tmp_path / "slurm.log",
    )
    # The local reference run (the session's, shared with the workflow tests) is made, or
    # waited for, while the Slurm run goes on: that run mostly waits for job start-ups and
    # status checks.
    try:
        local_results = request.getfixturevalue("demo_run")
    except BaseException:
        slurm_run.terminate()  # coreutils' timeout passes the TERM on to snakemake
        slurm_run.wait()
        raise
    local_s = time.perf_counter() - started
    slurm_rc = slurm_run.wait()
    slurm_s = time.perf_counter() - started
    slurm_log = (tmp_path / "slurm.log").read_text(errors="replace")
    print(f"Slurm run of the tiny demo: {slurm_s:.1f} s; the local run was ready after {local_s:.1f} s")
    assert slurm_rc == 0, f"snakemake --profile slurm failed (rc {slurm_rc}):\n{_tail(slurm_log, 8000)}"
    assert "Using profiles slurm and workflow specific profile" in slurm_log

    # The jobs really went through Slurm, and its accounting saw each one complete.
    accounting = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobName,State,Partition"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(accounting) >= 15, accounting
    assert all(row.split("|")[1] == "COMPLETED" and row.split("|")[2] == slurm["partition"] for row in accounting), (
        accounting
    )
    slurm_logs = list((remote / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert any("rule_train" in str(p) for p in slurm_logs), slurm_logs
    assert any("group_preprocess" in str(p) for p in slurm_logs), slurm_logs
    assert any("group_to_template" in str(p) for p in slurm_logs), slurm_logs

    differences = _compare_runs(local_results, remote / "results")
    assert not differences, "\n".join(differences)

    # `snakemake score` through the same profile: a study scan under a new ID, scored against
    # the Slurm-made study, gets that subject's study cluster and q.
    scoring = tmp_path / "slurm_score"
    scoring.mkdir()
    sheet = tmp_path / "new.tsv"
    pd.DataFrame({"subject": ["again004"], "dicom": [str(remote / "results" / "demo" / "dicom" / "demo004")]}).to_csv(
        sheet, sep="\t", index=False
    )
    score_run = _start(
        snakemake_command(
            scoring,
            *through_slurm,
            "score",  # after the options: --configfile (in snakemake_command) would take it for a file
            "--config",
            f"study={remote / 'results'}",
            f"samples={sheet}",
        ),
        env=env,
        cwd=scoring,
        limit_s=600,
        log=tmp_path / "slurm_score.log",
    )
    score_rc = score_run.wait()
    assert score_rc == 0, _tail((tmp_path / "slurm_score.log").read_text(errors="replace"), 8000)
    score_logs = list((scoring / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert any("rule_score_assign" in str(p) for p in score_logs), score_logs
    study = pd.read_csv(remote / "results" / "clusters.tsv", sep="\t").set_index("subject")
    scored = pd.read_csv(scoring / "results" / "score" / "clusters.tsv", sep="\t").set_index("subject")
    q_columns = [c for c in scored.columns if c.startswith("q_")]
    assert scored.loc["again004", "cluster"] == study.loc["demo004", "cluster"]
    np.testing.assert_allclose(
        scored.loc["again004", q_columns].to_numpy(float), study.loc["demo004", q_columns].to_numpy(float), atol=1e-5
    )
