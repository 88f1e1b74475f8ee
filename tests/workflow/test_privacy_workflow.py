"""No identifying DICOM value reaches any output, log or figure of a run."""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

import pydicom
import pytest

from tests.snakemake_runs import IN_DEMO_FOLDER

pytestmark = pytest.mark.workflow

IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "ReferringPhysicianName",
    "InstitutionName",
)


def _identifying_values(dicom_root: Path) -> set[str]:
    values: set[str] = set()
    for path in dicom_root.rglob("*"):
        if path.is_file():
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except pydicom.errors.InvalidDicomError:
                continue
            for keyword in IDENTIFYING:
                value = str(ds.get(keyword, "") or "")
                if len(value) >= 6:  # short values (e.g. an 8-digit date is fine) would match by chance
                    values.add(value)
                    values.update(part for part in value.split("^") if len(part) >= 6)
    return values


def test_no_identifier_in_outputs_or_logs(demo_run: Path) -> None:
    values = _identifying_values(demo_run / "demo" / "dicom")
    assert any(v.startswith("DEMO^") for v in values)  # the phantom does write fake identifiers
    scanned = 0
    for path in demo_run.rglob("*"):
        if not path.is_file() or (demo_run / "demo") in path.parents:
            continue  # the demo's own DICOM input is where they belong
        data = path.read_bytes()
        scanned += 1
        for value in values:
            assert value.encode() not in data, f"{value!r} found in {path}"
    assert scanned > 50


def test_no_identifier_in_the_viewer_volumes(demo_run: Path) -> None:
    """The viewer page holds its volumes base64-encoded and gzipped, where a plain search
    of its bytes would miss a value: decode each and search that too."""
    from lungclam.viewer import read_page_data

    values = _identifying_values(demo_run / "demo" / "dicom")
    page = demo_run / "viewer" / "index.html"
    volumes = read_page_data(page)["volumes"]
    assert volumes  # the page is written and holds its volumes
    for key, text in volumes.items():
        data = gzip.decompress(base64.b64decode(text))
        for value in values:
            assert value.encode() not in data, f"{value!r} found in {page}, volume {key}"


@IN_DEMO_FOLDER
def test_no_identifier_in_the_split_viewer(demo_run: Path, split_viewer: Path) -> None:
    """A large cohort's viewer (index plus a page per subject): every page, searched as it
    is and with each embedded volume decoded."""
    from lungclam.viewer import read_assignments, read_page_data

    values = _identifying_values(demo_run / "demo" / "dicom")
    pages = sorted(split_viewer.rglob("*.html"))
    assert len(pages) == 1 + len(read_assignments(demo_run / "clusters.tsv"))  # the index and every subject's
    for page in pages:
        raw = page.read_bytes()
        volumes = read_page_data(page)["volumes"]
        assert volumes
        for value in values:
            assert value.encode() not in raw, f"{value!r} found in {page}"
            for key, text in volumes.items():
                assert value.encode() not in gzip.decompress(base64.b64decode(text)), (
                    f"{value!r} found in {page}, volume {key}"
                )
