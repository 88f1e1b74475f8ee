"""The HTML report opens in headless Chromium and shows its figures. Needs Debian's
``chromium``: installed with apt-get when missing and possible (root, as on CI), else the
test is skipped with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.snakemake_runs import APT_GET_LOCK, IN_DEMO_FOLDER, exclusive, snakemake

pytestmark = pytest.mark.workflow

sys.path.insert(0, str(PROJECT_ROOT / "tools"))
import report_screenshot  # noqa: E402


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium's path; installed from Debian's packages when missing and this is root
    with apt-get (as on CI); otherwise the test is skipped with the reason."""
    found = report_screenshot.find_chromium()
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with exclusive(APT_GET_LOCK):
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
            done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    found = report_screenshot.find_chromium()
    if done.returncode != 0 or not found:
        pytest.skip(f"could not install chromium: {done.stderr[-500:]}")
    return found


@IN_DEMO_FOLDER
@pytest.mark.parametrize(
    "category, item", [("CLAM", "results/figures/cluster_means.png"), ("QC", "results/figures/qc_contact_sheet.png")]
)
def test_report_opens_and_shows_a_figure(
    chromium: str, demo_run: Path, tmp_path: Path, category: str, item: str
) -> None:
    report = demo_run / "report.html"
    if not report.exists():
        snakemake(demo_run.parent, "--report", str(report))
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "tools" / "report_screenshot.py"),
            str(report),
            "--category",
            category,
            "--item",
            item,
            "--out",
            str(shot),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert shot.read_bytes()[:4] == b"\x89PNG"
