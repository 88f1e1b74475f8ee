"""The HTML report opens in headless Chromium and shows its figures (needs Debian's
``chromium``; skipped with the reason when it is not installed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.workflow.conftest import snakemake

pytestmark = pytest.mark.workflow

sys.path.insert(0, str(PROJECT_ROOT / "tools"))
import report_screenshot  # noqa: E402


@pytest.mark.skipif(report_screenshot.find_chromium() is None,
                    reason="chromium is not installed (Debian: apt-get install chromium)")
@pytest.mark.parametrize("category, item", [("CLAM", "results/figures/cluster_means.png"),
                                            ("QC", "results/figures/qc_contact_sheet.png")])
def test_report_opens_and_shows_a_figure(demo_run: Path, tmp_path: Path, category: str, item: str) -> None:
    report = demo_run / "report.html"
    if not report.exists():
        snakemake(demo_run.parent, "--report", str(report))
    shot = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "tools" / "report_screenshot.py"), str(report),
                           "--category", category, "--item", item, "--out", str(shot)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert shot.read_bytes()[:4] == b"\x89PNG"
