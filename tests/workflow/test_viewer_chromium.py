"""The viewer page of the tiny run: it embeds that run's own maps and assignments, and it
opens from file:// in headless Chromium with software WebGL2, with no error and no network
request, draws, changes with the subject or cluster chosen, and says what it shows.
Chromium is Debian's, found or installed by the report test's fixture (skipped with the
reason where neither works).

The same run's viewer split into an index and a page per subject (the ``split_viewer``
fixture: the viewer rule rerun on a copy of the run with viewer.max_subjects_per_page 2):
each page embeds its own part of that run's maps, and the index, followed to a subject's
page and back, passes the same check."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lungclam.viewer import decode_volume, read_assignments, read_page_data
from tests.conftest import PROJECT_ROOT
from tests.snakemake_runs import IN_DEMO_FOLDER
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
    pairs = [
        ("population", "clam/population_mean.nii.gz", 0.5 / 255),
        ("template", "template/grid_template.nii.gz", 0.5),
    ]
    pairs += [(f"cluster/{c['k']}", f"clam/cluster_{c['k']}_mean.nii.gz", 0.5 / 255) for c in data["clusters"]]
    for s in table["subject"]:
        pairs += [
            (f"subject/{s}/clam", f"clam/{s}.nii.gz", 0.5 / 255),
            (f"subject/{s}/scan", f"downsampled/{s}.nii.gz", 0.5),
        ]
    for key, path, tolerance in pairs:
        shown, written = decode_volume(data["volumes"][key]), nib.load(str(demo_run / path))
        np.testing.assert_allclose(shown.affine, written.affine, atol=1e-3, err_msg=key)
        assert np.abs(shown.get_fdata() - written.get_fdata()).max() <= tolerance + 1e-6, key


def test_viewer_opens_offline_and_follows_the_choice(
    chromium: str,
    demo_run: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    shot = tmp_path / "viewer.png"
    outcome = viewer_check.check_viewer(demo_run / "viewer" / "index.html", shot, chromium)
    print(f"viewer: {outcome['page_mb']} MB, first view after {outcome['load_ms']:.0f} ms; screenshot {shot}")
    assert viewer_check.problems(outcome) == []
    shown = [v for v in outcome["views"] if "subject" in v or "cluster" in v]
    assert any("subject" in v for v in shown) and any("cluster" in v for v in shown)
    assert shot.read_bytes()[:4] == b"\x89PNG"


@IN_DEMO_FOLDER
def test_split_viewer_pages_embed_the_runs_own_maps(demo_run: Path, split_viewer: Path) -> None:
    table = read_assignments(demo_run / "clusters.tsv")
    subjects = sorted(p.stem for p in (split_viewer / "subjects").glob("*.html"))
    assert subjects == sorted(table["subject"])
    index = read_page_data(split_viewer / "index.html")
    assert index["page"] == "index"
    assert [(s["id"], s["cluster"], s["href"]) for s in index["subjects"]] == [
        (s, int(k), f"subjects/{s}.html") for s, k in zip(table["subject"], table["cluster"])
    ]
    assert not any(key.startswith("subject/") for key in index["volumes"])
    for key, path, tolerance in (
        ("template", "template/grid_template.nii.gz", 0.5),
        ("population", "clam/population_mean.nii.gz", 0.5 / 255),
    ):
        shown = decode_volume(index["volumes"][key]).get_fdata()
        assert np.abs(shown - nib.load(str(demo_run / path)).get_fdata()).max() <= tolerance + 1e-6, key
    for row in table.itertuples(index=False):
        data = read_page_data(split_viewer / "subjects" / f"{row.subject}.html")
        assert set(data["volumes"]) == {"mask", f"subject/{row.subject}/scan", f"subject/{row.subject}/clam"}
        assert [(s["id"], s["cluster"]) for s in data["subjects"]] == [(row.subject, int(row.cluster))]
        for part, path, tolerance in (
            ("clam", f"clam/{row.subject}.nii.gz", 0.5 / 255),
            ("scan", f"downsampled/{row.subject}.nii.gz", 0.5),
        ):
            shown, source = (
                decode_volume(data["volumes"][f"subject/{row.subject}/{part}"]),
                nib.load(str(demo_run / path)),
            )
            np.testing.assert_allclose(shown.affine, source.affine, atol=1e-3)
            assert np.abs(shown.get_fdata() - source.get_fdata()).max() <= tolerance + 1e-6, (row.subject, part)


@IN_DEMO_FOLDER
def test_split_viewer_opens_offline_and_links_its_pages(
    chromium: str,
    split_viewer: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    shot = tmp_path / "split_viewer.png"
    outcome = viewer_check.check_viewer(split_viewer / "index.html", shot, chromium)
    subject_page = outcome.get("subject_page", {})
    print(
        f"split viewer: index {outcome['page_mb']} MB, first view after {outcome['load_ms']:.0f} ms; "
        f"subject page first view after {subject_page.get('load_ms', -1):.0f} ms; screenshot {shot}"
    )
    assert viewer_check.problems(outcome) == []
    assert outcome["kind"] == "index" and subject_page["kind"] == "subject"
    assert outcome["links"] == {"index_to_subject": True, "subject_to_index": True}
    # the subject page's one file besides itself: the NiiVue copy in its own folder
    assert subject_page["scripts"] == [(split_viewer / "subjects" / "niivue-0.69.0.umd.js").resolve().as_uri()]
    on_subject_page = [v for v in outcome["views"] if "subject" in v]
    assert on_subject_page and all(v["lit_fraction"] >= 0.02 for v in on_subject_page)
    assert shot.read_bytes()[:4] == b"\x89PNG"
