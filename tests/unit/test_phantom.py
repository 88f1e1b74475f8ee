"""The synthetic chest CT, its DICOM writer and the demo cohort (tiny grids, seconds)."""

from __future__ import annotations

import filecmp
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from lungclam.phantom import (
    ALL_PATTERNS,
    PADDING_HU,
    PATTERNS,
    Phantom,
    demo_subject_ids,
    make_chest_phantom,
    write_demo_cohort,
    write_dicom_series,
    write_localizer,
)
from lungclam.phantom.cohort import _cohort_plan

# 64 x 64 x 40 voxels of 6 mm: the whole anatomy, in a fraction of a second.
TINY = dict(matrix=64, pixel_mm=6.0, slice_mm=6.0, n_slices=40)


@cache
def tiny(pattern: str = "near_normal", seed: int = 0, severity: float = 0.8) -> Phantom:
    """A tiny phantom, cached across tests (treat as read-only)."""
    return make_chest_phantom(np.random.default_rng(seed), pattern, severity, **TINY)


def read_series(folder: Path, series_uid: str) -> sitk.Image:
    """Read one series with GDCM (SimpleITK) and reorient it to LPS."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return sitk.DICOMOrient(reader.Execute(), "LPS")


def headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]


def test_same_seed_same_phantom_other_seed_differs():
    a = make_chest_phantom(np.random.default_rng(5), "perihilar_nodules", 0.5, **TINY)
    b = make_chest_phantom(np.random.default_rng(5), "perihilar_nodules", 0.5, **TINY)
    c = make_chest_phantom(np.random.default_rng(6), "perihilar_nodules", 0.5, **TINY)
    for name in ("hu", "lungs", "disease"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.origin, a.spacing, a.info) == (b.origin, b.spacing, b.info)
    assert not np.array_equal(a.hu, c.hu)


def test_arrays_types_and_grid():
    p = tiny()
    assert p.hu.shape == p.lungs.shape == p.disease.shape == (40, 64, 64)
    assert (p.hu.dtype, p.lungs.dtype, p.disease.dtype) == (np.int16, np.uint8, np.uint8)
    assert p.spacing == (6.0, 6.0, 6.0)
    image = p.image()
    assert image.GetSize() == (64, 64, 40)
    assert image.GetOrigin() == p.origin


def test_two_lungs_right_at_smaller_x_and_inside_the_slab():
    p = tiny()
    assert set(np.unique(p.lungs)) == {0, 1, 2}
    x_right = np.nonzero(p.lungs == 1)[2].mean()
    x_left = np.nonzero(p.lungs == 2)[2].mean()
    assert x_right < x_left
    volume_ml = np.prod(p.spacing) / 1000.0
    right, left = ((p.lungs == label).sum() * volume_ml for label in (1, 2))
    assert 1000 < left < right < 4000  # the right lung is the larger one
    # Margin above the apices and below the bases.
    rows = np.flatnonzero(p.lungs.any(axis=(1, 2)))
    assert rows[0] >= 2 and rows[-1] <= p.hu.shape[0] - 3


def test_healthy_lung_density_and_texture():
    p = tiny("near_normal")
    lung = p.hu[p.lungs > 0].astype(float)
    assert -900 < lung.mean() < -800
    assert 15 < lung.std() < 250  # noise, texture and vessels, not a flat fill


def test_trachea_is_air_but_not_lung():
    p = tiny()
    top = p.hu[-1]  # above the apices: the trachea is the only air inside the body
    body = top > -500
    filled = np.asarray(sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(body.astype(np.uint8)))))
    trachea = (filled > 0) & (top < -800)
    assert trachea.sum() >= 1
    assert not p.lungs[-1].any()


@pytest.mark.parametrize("pattern", [p for p in ALL_PATTERNS if p != "near_normal"])
def test_disease_raises_density_where_it_is_placed(pattern):
    p = tiny(pattern)
    mask = p.disease > 0
    assert mask.any()
    assert not (mask & (p.lungs == 0)).any()  # disease lies inside the lungs
    inside = p.hu[mask].mean()
    outside = p.hu[(p.lungs > 0) & ~mask].mean()
    assert inside > outside + 60


def test_upper_reticulation_is_upper_and_nodules_are_central():
    upper = tiny("upper_reticulation")
    lung_rows = np.flatnonzero(upper.lungs.any(axis=(1, 2)))
    disease_rows = np.flatnonzero(upper.disease.any(axis=(1, 2)))
    assert disease_rows.min() > lung_rows[len(lung_rows) // 2]
    nodules = tiny("perihilar_nodules")
    z = np.nonzero(nodules.disease)[0].mean()
    assert lung_rows[0] + 0.25 * len(lung_rows) < z < lung_rows[-1] - 0.25 * len(lung_rows)


def test_padding_outside_the_field_of_view():
    p = tiny()
    assert (p.hu[:, 0, 0] == PADDING_HU).all()
    assert (p.hu[:, -1, -1] == PADDING_HU).all()
    centre_row = p.hu[:, 32, :]
    assert centre_row.min() >= -1024  # the inscribed circle touches the edges mid-row
    assert p.hu.max() <= 3071


def test_unknown_pattern_is_refused():
    with pytest.raises(ValueError, match="unknown pattern"):
        make_chest_phantom(np.random.default_rng(0), "emphysema", 0.5, **TINY)


@pytest.mark.parametrize(("feet_first", "flip_columns"), [(False, False), (True, False), (True, True)])
def test_dicom_series_round_trips(tmp_path, feet_first, flip_columns):
    p = tiny("upper_reticulation")
    paths = write_dicom_series(
        p, tmp_path, subject="s01", feet_first=feet_first, flip_columns=flip_columns,
        shuffle=True, rng=np.random.default_rng(1),
    )  # fmt: skip
    assert len(paths) == p.hu.shape[0]
    uid = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    image = read_series(tmp_path, uid)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), p.hu)
    np.testing.assert_allclose(image.GetOrigin(), p.origin, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), p.spacing, atol=1e-6)
    # InstanceNumber runs with z head-first and against it feet-first.
    order = sorted(headers(tmp_path), key=lambda ds: int(ds.InstanceNumber))
    z = [float(ds.ImagePositionPatient[2]) for ds in order]
    assert z == sorted(z, reverse=feet_first)
    assert order[0].PatientPosition == ("FFS" if feet_first else "HFS")


def test_dicom_headers_carry_fake_identity_and_ct_attributes(tmp_path):
    p = tiny()
    paths = write_dicom_series(
        p, tmp_path, subject="s07", patient_name="DEMO^SUBJECT07", patient_id="MRN0007",
        birth_date="19650302", sex="F", study_date="20200115", shuffle=True, rng=np.random.default_rng(0),
    )  # fmt: skip
    ds = pydicom.dcmread(paths[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert str(ds.PatientName) == "DEMO^SUBJECT07"
    assert (ds.PatientID, ds.PatientBirthDate, ds.PatientAge) == ("MRN0007", "19650302", "054Y")
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert (ds.Modality, ds.Manufacturer) == ("CT", "lungclam phantom")
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    assert ds.ConvolutionKernel and ds.SeriesDescription
    # Shuffled names do not follow slice order.
    names = [path.name for path in paths]
    assert names != sorted(names)
    # UIDs are deterministic: the same subject key gives the same UIDs.
    again = write_dicom_series(p, tmp_path / "again", subject="s07")
    assert pydicom.dcmread(again[0]).SOPInstanceUID == ds.SOPInstanceUID
    assert pydicom.dcmread(again[0]).StudyInstanceUID == ds.StudyInstanceUID


def test_localizer_is_a_separate_series_in_the_same_study(tmp_path):
    p = tiny()
    ct = write_dicom_series(p, tmp_path, subject="s01", shuffle=True, rng=np.random.default_rng(0))
    loc = pydicom.dcmread(write_localizer(p, tmp_path, subject="s01", shuffle=True, rng=np.random.default_rng(1)))
    first = pydicom.dcmread(ct[0], stop_before_pixels=True)
    assert "LOCALIZER" in loc.ImageType
    assert loc.SeriesInstanceUID != first.SeriesInstanceUID
    assert loc.SeriesNumber != first.SeriesNumber
    assert loc.StudyInstanceUID == first.StudyInstanceUID
    assert [float(v) for v in loc.ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
    assert loc.pixel_array.shape == (p.hu.shape[0], p.hu.shape[2])
    assert loc.pixel_array.max() > 0
    assert len(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(tmp_path))) == 2


def test_cohort_plan_is_balanced():
    plan = _cohort_plan(30, seed=0, patterns=PATTERNS)
    assert plan["pattern"].value_counts().to_dict() == dict.fromkeys(PATTERNS, 10)
    assert plan["feet_first"].sum() == 10 and plan["localizer"].sum() == 10
    assert plan["subject"].tolist() == demo_subject_ids(30)
    assert plan["severity"].between(0, 1).all()
    assert not plan.equals(_cohort_plan(30, seed=1, patterns=PATTERNS))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_cohort(out, n_subjects=4, seed=3, **TINY)
    return out


def test_demo_cohort_sheets_and_files(cohort):
    samples = pd.read_csv(cohort / "samples.tsv", sep="\t", dtype=str)
    clinical = pd.read_csv(cohort / "clinical.tsv", sep="\t", dtype={"subject": str, "scadding": str})
    truth = pd.read_csv(cohort / "truth.tsv", sep="\t", dtype={"subject": str})
    subjects = demo_subject_ids(4)
    assert list(samples.columns) == ["subject", "dicom"]
    assert samples["subject"].tolist() == subjects
    assert list(clinical.columns) == [
        "subject", "age", "sex", "race", "bmi", "scadding", "fev1_pct", "fvc_pct",
        "dlco_pct", "cd4", "crp", "sobq", "sf12_physical",
    ]  # fmt: skip
    assert set(clinical["sex"]) <= {"F", "M"}
    assert set(clinical["scadding"]) <= {"0", "I", "II", "III", "IV"}
    assert list(truth.columns) == ["subject", "pattern", "severity", "lung_mask", "disease_mask"]
    assert set(truth["pattern"]) == set(PATTERNS)
    for subject, folder in zip(samples["subject"], samples["dicom"], strict=True):
        files = list((cohort / folder).iterdir())
        assert len(files) >= TINY["n_slices"]
        assert all(pydicom.misc.is_dicom(f) for f in files)
    for _, row in truth.iterrows():
        assert (cohort / row["lung_mask"]).is_file() and (cohort / row["disease_mask"]).is_file()


def test_demo_truth_masks_sit_on_the_ct_grid(cohort):
    truth = pd.read_csv(cohort / "truth.tsv", sep="\t", dtype={"subject": str})
    for _, row in truth.iterrows():
        folder = cohort / "dicom" / row["subject"]
        ct_uid = next(ds.SeriesInstanceUID for ds in headers(folder) if "AXIAL" in ds.ImageType)
        ct = read_series(folder, ct_uid)
        mask = sitk.ReadImage(str(cohort / row["lung_mask"]))
        assert mask.GetSize() == ct.GetSize()
        np.testing.assert_allclose(mask.GetOrigin(), ct.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(mask.GetSpacing(), ct.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(mask.GetDirection(), ct.GetDirection(), atol=1e-6)
        lungs = sitk.GetArrayFromImage(mask) > 0
        assert sitk.GetArrayFromImage(ct)[lungs].mean() < -600


def test_demo_dicom_keeps_fake_names_and_mixes_layouts(cohort):
    all_headers = [ds for s in demo_subject_ids(4) for ds in headers(cohort / "dicom" / s)]
    assert all(str(ds.PatientName).startswith("DEMO^SUBJECT") for ds in all_headers)
    assert all(ds.PatientID and ds.PatientBirthDate for ds in all_headers)
    positions = {ds.PatientPosition for ds in all_headers}
    assert positions == {"HFS", "FFS"}  # round(4 / 3) = 1 subject is feet-first


def test_demo_cohort_is_byte_for_byte_deterministic_in_worker_processes_too(cohort, tmp_path):
    """The same cohort again, drawn by two worker processes (subjects finish out of order)."""
    write_demo_cohort(tmp_path, n_subjects=4, seed=3, workers=2, **TINY)
    compare = filecmp.dircmp(cohort, tmp_path)
    assert not compare.diff_files and not compare.left_only and not compare.right_only
    for sub in (*(f"dicom/{s}" for s in demo_subject_ids(4)), "truth"):
        left = sorted((cohort / sub).iterdir())
        right = sorted((tmp_path / sub).iterdir())
        assert [p.name for p in left] == [p.name for p in right]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(left, right, strict=True))
