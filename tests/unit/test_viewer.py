"""Viewer page: volumes re-encoded faithfully with nothing of their headers but the
affine, the listing of subjects and clusters, the checks on its inputs, and an inline
page that no embedded text can break out of."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from lungclam import viewer as V

SHAPE = (10, 12, 14)  # (z, y, x), SimpleITK order
FAKE_NIIVUE = "window.niivue = {}; const tag = '</script><!-- x';"


def _write(array: np.ndarray, path, spacing=(6.0, 6.0, 6.0), origin=(-40.0, -30.0, -200.0)) -> None:
    """As the pipeline writes images: SimpleITK, LPS, float32, gzipped NIfTI."""
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path), useCompression=True)


@pytest.fixture()
def run(tmp_path):
    """A small run's model-grid outputs: template, labelled mask (1 = right lung at small
    LPS x), 3 subjects in 2 clusters with scans and CLAMs, cluster and population means."""
    rng = np.random.default_rng(0)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2:8, 3:9, 1:6] = 1
    mask[2:8, 3:9, 8:13] = 2
    _write(np.where(mask > 0, -850.0, -1024.0), tmp_path / "grid_template.nii.gz")
    _write(mask, tmp_path / "grid_mask.nii.gz")
    subjects = ["s1", "s2", "s3"]
    for i, s in enumerate(subjects):
        _write(np.where(mask > 0, -850.0 + rng.normal(0, 40, SHAPE), -1024.0), tmp_path / f"scan_{s}.nii.gz")
        _write(np.where(mask > 0, rng.uniform(0, 1, SHAPE), 0.0), tmp_path / f"clam_{s}.nii.gz")
    for k in (1, 2):
        _write(np.where(mask > 0, rng.uniform(0, 1, SHAPE), 0.0), tmp_path / f"cluster_{k}_mean.nii.gz")
    _write(np.where(mask > 0, 0.5, 0.0), tmp_path / "population_mean.nii.gz")
    table = pd.DataFrame({"subject": subjects, "cluster": [1, 2, 1], "q_1": [0.9, 0.2, 0.6], "q_2": [0.1, 0.8, 0.4]})
    table.to_csv(tmp_path / "clusters.tsv", sep="\t", index=False)
    return tmp_path


def _inputs(run, assignments=None, **changes) -> V.ViewerInputs:
    assignments = V.read_assignments(run / "clusters.tsv") if assignments is None else assignments
    fields = dict(
        template=run / "grid_template.nii.gz",
        mask=run / "grid_mask.nii.gz",
        cluster_means={k: run / f"cluster_{k}_mean.nii.gz" for k in (1, 2)},
        population_mean=run / "population_mean.nii.gz",
        scans={s: run / f"scan_{s}.nii.gz" for s in assignments["subject"]},
        clams={s: run / f"clam_{s}.nii.gz" for s in assignments["subject"]},
        assignments=assignments,
    )
    fields.update(changes)
    return V.ViewerInputs(**fields)


def test_encode_volume_keeps_values_and_affine_and_nothing_else(run):
    source = nib.load(str(run / "clam_s1.nii.gz"))
    source.header["descrip"] = b"PATIENT^NAME 19700101"  # text that must not travel
    nib.save(source, str(run / "with_text.nii.gz"))
    for path, kind, tolerance in (
        (run / "scan_s1.nii.gz", "ct", 0.5),
        (run / "with_text.nii.gz", "importance", 0.5 / 255 + 1e-6),
    ):
        text, shape, affine = V.encode_volume(path, kind)
        decoded = V.decode_volume(text)
        original = nib.load(str(path))
        assert shape == original.shape == decoded.shape
        np.testing.assert_allclose(decoded.affine, original.affine, atol=1e-4)
        np.testing.assert_allclose(affine, original.affine, atol=1e-6)
        assert np.abs(decoded.get_fdata() - original.get_fdata()).max() <= tolerance
        assert decoded.header["descrip"].tobytes().strip(b"\0") == b""
        assert not decoded.header.extensions
    assert V.decode_volume(V.encode_volume(run / "scan_s1.nii.gz", "ct")[0]).get_data_dtype() == np.int16
    mask = V.decode_volume(V.encode_volume(run / "grid_mask.nii.gz", "mask")[0]).get_fdata()
    assert set(np.unique(mask)) == {0.0, 1.0}
    # the same file gives the same text (gzip without a time stamp)
    assert V.encode_volume(run / "scan_s1.nii.gz", "ct")[0] == V.encode_volume(run / "scan_s1.nii.gz", "ct")[0]


def test_encode_volume_rejects_what_it_cannot_show(run, tmp_path):
    _write(np.zeros((5, 6)), tmp_path / "flat.nii.gz")
    with pytest.raises(ValueError, match="3D"):
        V.encode_volume(tmp_path / "flat.nii.gz", "ct")
    bad = np.zeros(SHAPE)
    bad[1, 1, 1] = np.nan
    _write(bad, tmp_path / "nan.nii.gz")
    with pytest.raises(ValueError, match="non-finite"):
        V.encode_volume(tmp_path / "nan.nii.gz", "importance")
    with pytest.raises(ValueError, match="kind"):
        V.encode_volume(run / "scan_s1.nii.gz", "rgb")


def test_read_assignments_takes_confidence_only_when_present(run, tmp_path):
    plain = V.read_assignments(run / "clusters.tsv")
    assert list(plain.columns) == ["subject", "cluster", "q_1", "q_2"]
    table = pd.read_csv(run / "clusters.tsv", sep="\t")
    table["confidence"] = [0.9, 0.7, 0.5]
    table["extra"] = 1
    table = table[["subject", "q_2", "cluster", "q_1", "confidence", "extra"]]  # any column order
    table.to_csv(tmp_path / "with_confidence.tsv", sep="\t", index=False)
    assert list(V.read_assignments(tmp_path / "with_confidence.tsv").columns) == [
        "subject",
        "cluster",
        "q_1",
        "q_2",
        "confidence",
    ]
    table.drop(columns=["q_1", "q_2"]).to_csv(tmp_path / "no_q.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match="q_1..q_K"):
        V.read_assignments(tmp_path / "no_q.tsv")


def _data_of(page: str) -> dict:
    block = re.search(r'<script type="application/json" id="lungclam-data">(.*?)</script>', page, re.S)
    return json.loads(block.group(1))


def test_page_lists_subjects_by_cluster_and_embeds_every_volume(run):
    page = V.build_page(_inputs(run), FAKE_NIIVUE)
    data = _data_of(page)
    assert [(s["id"], s["cluster"], s["q"]) for s in data["subjects"]] == [
        ("s1", 1, [0.9, 0.1]),
        ("s2", 2, [0.2, 0.8]),
        ("s3", 1, [0.6, 0.4]),
    ]
    assert data["clusters"] == [{"k": 1, "n": 2}, {"k": 2, "n": 1}]
    assert data["has_confidence"] is False and "confidence" not in data["subjects"][0]
    assert set(data["volumes"]) == {
        "template",
        "mask",
        "population",
        "cluster/1",
        "cluster/2",
        *(f"subject/{s}/{p}" for s in ("s1", "s2", "s3") for p in ("scan", "clam")),
    }
    # each subject's CLAM is its own file's values
    for s in ("s1", "s3"):
        shown = V.decode_volume(data["volumes"][f"subject/{s}/clam"]).get_fdata()
        assert np.abs(shown - nib.load(str(run / f"clam_{s}.nii.gz")).get_fdata()).max() <= 0.5 / 255 + 1e-6
    # no request can leave the page, and the vendored script is inlined, not linked
    assert "default-src 'none'" in page
    assert not re.search(r"<script[^>]*\bsrc=", page) and "<link" not in page


def test_page_shows_confidence_when_the_table_has_it(run):
    assignments = V.read_assignments(run / "clusters.tsv").assign(confidence=[0.95, 0.5, float("nan")])
    data = _data_of(V.build_page(_inputs(run, assignments), FAKE_NIIVUE))
    assert data["has_confidence"] is True
    assert [s["confidence"] for s in data["subjects"]] == [0.95, 0.5, None]


def test_inlined_text_cannot_close_its_script_element(run):
    page = V.build_page(_inputs(run), FAKE_NIIVUE)
    # three scripts (NiiVue, data, the page's own) and nothing else closes one
    assert len(re.findall(r"</script", page, re.I)) == 3
    assert "<!-- x" not in page and "<\\/script><\\!-- x" in page


def test_page_refuses_inputs_that_do_not_fit(run, tmp_path):
    assignments = V.read_assignments(run / "clusters.tsv")
    with pytest.raises(ValueError, match="s2"):
        V.build_page(_inputs(run, scans={"s1": run / "scan_s1.nii.gz", "s3": run / "scan_s3.nii.gz"}), FAKE_NIIVUE)
    _write(np.zeros((10, 12, 15)), tmp_path / "off_grid.nii.gz")
    with pytest.raises(ValueError, match="not on the model grid"):
        V.build_page(
            _inputs(
                run,
                clams={
                    **{s: run / f"clam_{s}.nii.gz" for s in assignments["subject"]},
                    "s2": tmp_path / "off_grid.nii.gz",
                },
            ),
            FAKE_NIIVUE,
        )
    _write(np.zeros(SHAPE), tmp_path / "shifted.nii.gz", origin=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="not on the model grid"):
        V.build_page(_inputs(run, population_mean=tmp_path / "shifted.nii.gz"), FAKE_NIIVUE)
    with pytest.raises(ValueError, match=r"clusters \[2\]"):
        V.build_page(_inputs(run, cluster_means={1: run / "cluster_1_mean.nii.gz"}), FAKE_NIIVUE)


def test_start_point_is_in_the_right_lung(run, tmp_path):
    x, y, z = V.start_point(run / "grid_mask.nii.gz")
    # back to the LPS index the pipeline wrote: label 1 (the right lung) holds the point
    image = sitk.ReadImage(str(run / "grid_mask.nii.gz"))
    index = image.TransformPhysicalPointToIndex((-x, -y, z))  # RAS -> LPS
    assert sitk.GetArrayFromImage(image)[index[2], index[1], index[0]] == 1
    # a binary mask: the half towards the patient's right (small LPS x) is taken
    _write((sitk.GetArrayFromImage(image) > 0).astype(np.uint8), tmp_path / "binary.nii.gz")
    x2, _, _ = V.start_point(tmp_path / "binary.nii.gz")
    assert x2 == pytest.approx(x)


def test_write_viewer_writes_the_page_whole(run, tmp_path):
    niivue = tmp_path / "niivue.js"
    niivue.write_text(FAKE_NIIVUE)
    out = tmp_path / "viewer" / "index.html"
    size = V.write_viewer(_inputs(run), niivue, out)
    assert out.stat().st_size == size
    assert V.read_page_data(out)["clusters"] == [{"k": 1, "n": 2}, {"k": 2, "n": 1}]
    assert [p.name for p in out.parent.iterdir()] == ["index.html"]  # no temporary left


# --- a large cohort: an index plus one page per subject (split viewer) ---------------------


def _hrefs(page: str) -> list[str]:
    """Every link of a page: the static ones and those its script builds from its data."""
    return re.findall(r'<a [^>]*href="([^"]+)"', page) + [s["href"] for s in _data_of(page)["subjects"] if "href" in s]


def test_split_threshold_is_respected(run, tmp_path):
    assert not V.is_split(3, None) and not V.is_split(3, 3) and V.is_split(3, 2)
    with pytest.raises(ValueError, match="at least 1"):
        V.is_split(3, 0)
    niivue = tmp_path / "niivue-9.9.9.umd.js"
    niivue.write_text(FAKE_NIIVUE)
    out = tmp_path / "at_limit" / "index.html"
    size = V.write_viewer(_inputs(run), niivue, out, max_subjects_per_page=3)
    # up to the limit: today's single page, byte for byte, and nothing else
    assert out.read_text(encoding="utf-8") == V.build_page(_inputs(run), FAKE_NIIVUE)
    assert [p.name for p in out.parent.iterdir()] == ["index.html"] and out.stat().st_size == size
    split = tmp_path / "above" / "index.html"
    V.write_viewer(_inputs(run), niivue, split, max_subjects_per_page=2)
    assert sorted(str(p.relative_to(split.parent)) for p in split.parent.rglob("*")) == [
        "index.html",
        "subjects",
        "subjects/niivue-9.9.9.umd.js",
        "subjects/s1.html",
        "subjects/s2.html",
        "subjects/s3.html",
    ]
    # the subject pages' NiiVue is the vendored file, unchanged
    assert (split.parent / "subjects" / niivue.name).read_bytes() == niivue.read_bytes()


def test_split_index_holds_the_template_and_links_every_subject(run, tmp_path):
    pages = V.build_split_pages(_inputs(run), FAKE_NIIVUE, "niivue.umd.js")
    assert set(pages) == {"index.html", "subjects/s1.html", "subjects/s2.html", "subjects/s3.html"}
    index = _data_of(pages["index.html"])
    assert index["page"] == "index"
    assert set(index["volumes"]) == {"template", "mask", "population", "cluster/1", "cluster/2"}
    assert [(s["id"], s["cluster"], s["q"], s["href"]) for s in index["subjects"]] == [
        ("s1", 1, [0.9, 0.1], "subjects/s1.html"),
        ("s2", 2, [0.2, 0.8], "subjects/s2.html"),
        ("s3", 1, [0.6, 0.4], "subjects/s3.html"),
    ]
    assert index["clusters"] == [{"k": 1, "n": 2}, {"k": 2, "n": 1}]
    # the index stands alone (as in the report): NiiVue inlined, no script from a file
    assert "<script>window.niivue" in pages["index.html"]
    assert not re.search(r"<script[^>]*\bsrc=", pages["index.html"])


def test_each_subject_page_embeds_only_its_own_volumes(run):
    assignments = V.read_assignments(run / "clusters.tsv").assign(confidence=[0.95, 0.5, 0.8])
    pages = V.build_split_pages(_inputs(run, assignments), FAKE_NIIVUE, "niivue.umd.js")
    mask = nib.load(str(run / "grid_mask.nii.gz")).get_fdata() > 0
    for subject, cluster, confidence in (("s1", 1, 0.95), ("s2", 2, 0.5), ("s3", 1, 0.8)):
        page = pages[f"subjects/{subject}.html"]
        data = _data_of(page)
        assert data["page"] == "subject"
        assert set(data["volumes"]) == {"mask", f"subject/{subject}/scan", f"subject/{subject}/clam"}
        assert [(s["id"], s["cluster"], s["confidence"]) for s in data["subjects"]] == [(subject, cluster, confidence)]
        for part, path, tolerance in (
            ("scan", f"scan_{subject}.nii.gz", 0.5),
            ("clam", f"clam_{subject}.nii.gz", 0.5 / 255 + 1e-6),
        ):
            shown = V.decode_volume(data["volumes"][f"subject/{subject}/{part}"]).get_fdata()
            assert np.abs(shown - nib.load(str(run / path)).get_fdata()).max() <= tolerance
        assert np.array_equal(V.decode_volume(data["volumes"]["mask"]).get_fdata() > 0, mask)
        # no other subject's ID in the page's data (beyond the volumes, checked above);
        # the page's links to its neighbours in the cluster are tested below
        listing = json.dumps({k: v for k, v in data.items() if k != "volumes"})
        assert not any(o in listing for o in {"s1", "s2", "s3"} - {subject})
        # NiiVue from its own folder only, and the policy still admits no network scheme
        assert re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", page) == ["niivue.umd.js"]
        csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
        assert "default-src 'none'" in csp and "http" not in csp and "*" not in csp


def test_split_pages_link_each_other_correctly(run, tmp_path):
    niivue = tmp_path / "niivue-9.9.9.umd.js"
    niivue.write_text(FAKE_NIIVUE)
    out = tmp_path / "viewer" / "index.html"
    V.write_viewer(_inputs(run), niivue, out, max_subjects_per_page=1)
    index_links = _hrefs(out.read_text(encoding="utf-8"))
    assert index_links == ["subjects/s1.html", "subjects/s2.html", "subjects/s3.html"]
    for href in index_links:  # each link opens the page of the subject it names
        target = (out.parent / href).resolve()
        assert [s["id"] for s in V.read_page_data(target)["subjects"]] == [Path(href).stem]
    expected = {"s1": ["../index.html", "s3.html"], "s2": ["../index.html"], "s3": ["../index.html", "s1.html"]}
    for subject, links in expected.items():  # back to the index; previous / next in the cluster
        page = out.parent / "subjects" / f"{subject}.html"
        assert sorted(_hrefs(page.read_text(encoding="utf-8"))) == sorted(links)
        assert all((page.parent / href).resolve().is_file() for href in links)
        assert (page.parent / links[0]).resolve() == out.resolve()


def test_rewriting_the_viewer_leaves_no_stale_subject_page(run, tmp_path):
    niivue = tmp_path / "niivue-9.9.9.umd.js"
    niivue.write_text(FAKE_NIIVUE)
    out = tmp_path / "viewer" / "index.html"
    subjects = out.parent / "subjects"
    V.write_viewer(_inputs(run), niivue, out, max_subjects_per_page=1)
    (subjects / "notes.txt").write_text("kept")  # not the viewer's: left alone
    # a smaller cohort, still split: the dropped subject's page goes
    fewer = V.read_assignments(run / "clusters.tsv").iloc[:2]
    V.write_viewer(_inputs(run, fewer), niivue, out, max_subjects_per_page=1)
    assert sorted(p.name for p in subjects.iterdir()) == ["niivue-9.9.9.umd.js", "notes.txt", "s1.html", "s2.html"]
    # back to one page: no subject page of the split run stays to be opened by mistake
    V.write_viewer(_inputs(run), niivue, out, max_subjects_per_page=5)
    assert [p.name for p in subjects.iterdir()] == ["notes.txt"]
    (subjects / "notes.txt").unlink()
    V.write_viewer(_inputs(run), niivue, out, max_subjects_per_page=5)
    assert not subjects.exists()


def test_split_refuses_a_subject_id_that_cannot_name_a_page(run):
    assignments = V.read_assignments(run / "clusters.tsv")
    assignments.loc[1, "subject"] = "../s2"
    inputs = _inputs(
        run,
        assignments,
        scans={"s1": run / "scan_s1.nii.gz", "../s2": run / "scan_s2.nii.gz", "s3": run / "scan_s3.nii.gz"},
        clams={"s1": run / "clam_s1.nii.gz", "../s2": run / "clam_s2.nii.gz", "s3": run / "clam_s3.nii.gz"},
    )
    with pytest.raises(ValueError, match=r"'\.\./s2'.*cannot name a viewer page"):
        V.build_split_pages(inputs, FAKE_NIIVUE, "niivue.umd.js")
    with pytest.raises(ValueError, match="plain .js file name"):
        V.build_split_pages(_inputs(run), FAKE_NIIVUE, "../niivue.js")
