"""The viewer page of the tiny run: it embeds that run's own maps and assignments, and it
opens from file:// in headless Chromium with software WebGL2, with no error and no network
request, draws, changes with the subject or cluster chosen, and says what it shows.
Chromium is Debian's, found or installed by the report test's fixture (skipped with the
reason where neither works)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lungclam.viewer import decode_volume, read_assignments, read_page_data
from tests.conftest import PROJECT_ROOT
from tests.workflow.test_report_chromium import chromium  # noqa: F401  (the fixture)

pytestmark = pytest.mark.workflow

sys.path.insert(0, str(PROJECT_ROOT / "tools"))
import viewer_check  # noqa: E402


def test_viewer_embeds_the_runs_own_maps(demo_run: Path) -> None:
    data = read_page_data(demo_run / "viewer" / "index.html")
    table = read_assignments(demo_run / "clusters.tsv")
    assert [(s["id"], s["cluster"]) for s in data["subjects"]] == list(zip(table["subject"], table["cluster"]))
    q = table[[c for c in table.columns if c.startswith("q_")]].to_numpy()
    np.testing.assert_allclose([s["q"] for s in data["subjects"]], q)
    assert data["has_confidence"] == ("confidence" in table.columns)
    pairs = [("population", "clam/population_mean.nii.gz", 0.5 / 255),
             ("template", "template/grid_template.nii.gz", 0.5)]
    pairs += [(f"cluster/{c['k']}", f"clam/cluster_{c['k']}_mean.nii.gz", 0.5 / 255) for c in data["clusters"]]
    for s in table["subject"]:
        pairs += [(f"subject/{s}/clam", f"clam/{s}.nii.gz", 0.5 / 255),
                  (f"subject/{s}/scan", f"downsampled/{s}.nii.gz", 0.5)]
    for key, path, tolerance in pairs:
        shown, written = decode_volume(data["volumes"][key]), nib.load(str(demo_run / path))
        np.testing.assert_allclose(shown.affine, written.affine, atol=1e-3, err_msg=key)
        assert np.abs(shown.get_fdata() - written.get_fdata()).max() <= tolerance + 1e-6, key


def test_viewer_opens_offline_and_follows_the_choice(chromium: str, demo_run: Path,  # noqa: F811
                                                     tmp_path: Path) -> None:
    shot = tmp_path / "viewer.png"
    outcome = viewer_check.check_viewer(demo_run / "viewer" / "index.html", shot, chromium)
    print(f"viewer: {outcome['page_mb']} MB, first view after {outcome['load_ms']:.0f} ms; screenshot {shot}")
    assert viewer_check.problems(outcome) == []
    shown = [v for v in outcome["views"] if "subject" in v or "cluster" in v]
    assert any("subject" in v for v in shown) and any("cluster" in v for v in shown)
    assert shot.read_bytes()[:4] == b"\x89PNG"
