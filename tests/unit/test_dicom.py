"""Tests of lungclam.dicom: series discovery, choice, conversion and sidecar.

Synthetic series are written here with pydicom (small, explicit VR little endian) so the
expected array and geometry are known exactly; the real DICOM beside the project checks
vendors, JPEG 2000, gantry tilt and the dicom2nifti "bad" examples.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from scipy import ndimage

from lungclam import dicom
from lungclam.errors import SubjectError

METHODS = ["dicom2nifti", "simpleitk"]
IDENTIFYING = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-12345",
    "PatientBirthDate": "19600101",
    "PatientAddress": "1 Main Street",
    "OtherPatientIDs": "OTHER-999",
    "AccessionNumber": "ACC-777",
    "InstitutionName": "Test Hospital",
    "ReferringPhysicianName": "Who^Doctor",
    "StudyDate": "20200202",
    "AcquisitionDate": "20200202",
}

# The synthetic truth: an LPS grid (x, y, z) = (16, 14, 8) voxels, identity direction.
SIZE = (16, 14, 8)
SPACING = (0.7, 0.8, 2.5)
ORIGIN = np.array([-5.0, 10.0, -100.0])


def truth_array(seed: int = 0) -> np.ndarray:
    """Known HU values (z, y, x), with a patch of scanner padding (-2048) kept as is."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-1024, 3000, size=SIZE[::-1]).astype(np.int16)
    values[:, :2, :3] = -2048
    return values


def write_slice(path: Path, stored: np.ndarray, ipp, iop, spacing_xy, series_uid: str, **fields) -> None:
    """Write one CT slice; ``stored`` are raw values (HU = stored - 1024)."""
    sop_class = fields.pop("sop_class", CTImageStorage)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = fields.pop("sop_uid", generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = fields.pop("study_uid", "1.2.3.4")
    ds.SeriesInstanceUID = series_uid
    ds.Modality = fields.pop("modality", "CT")
    ds.ImageType = fields.pop("image_type", ["ORIGINAL", "PRIMARY", "AXIAL"])
    ds.Manufacturer = "LungclamTest"
    ds.ManufacturerModelName = "Synth 1"
    ds.ConvolutionKernel = "B30f"
    ds.SeriesDescription = fields.pop("description", "synthetic chest")
    ds.SeriesNumber = fields.pop("series_number", 2)
    ds.InstanceNumber = fields.pop("instance", 1)
    ds.SliceThickness = 2.5
    for keyword, value in IDENTIFYING.items():
        setattr(ds, keyword, value)
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.PixelSpacing = [float(spacing_xy[1]), float(spacing_xy[0])]  # DICOM: row, column spacing
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_truth_series(folder: Path, truth: np.ndarray, pose: str = "hfs", **fields) -> list[Path]:
    """Write ``truth`` (z, y, x; LPS identity grid) as axial slices with random file names.

    ``pose`` "hfs": rows along +x; instance numbers count up from the feet.
    ``pose`` "ffs": rows along -x (image flipped left-right, normal pointing to the feet),
    instance numbers count down, as a feet-first scan would store them.
    """
    uid = fields.pop("series_uid", generate_uid())
    nz, ny, nx = truth.shape
    paths = []
    for z in range(nz):
        pixels = truth[z] + 1024
        if pose == "hfs":
            iop, ipp = (1, 0, 0, 0, 1, 0), ORIGIN + [0, 0, z * SPACING[2]]
        else:
            iop = (-1, 0, 0, 0, 1, 0)
            ipp = ORIGIN + [(nx - 1) * SPACING[0], 0, z * SPACING[2]]
            pixels = pixels[:, ::-1]
        instance = z + 1 if pose == "hfs" else nz - z
        path = folder / "deep" / f"{uuid.uuid4().hex[:8]}"
        write_slice(path, pixels, ipp, iop, SPACING[:2], uid, instance=instance, **fields)
        paths.append(path)
    return paths


def assert_matches_truth(image: sitk.Image, truth: np.ndarray) -> None:
    """Values and LPS geometry equal the synthetic truth."""
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-9)


def convert(folder: Path, method: str = "auto") -> tuple[sitk.Image, dicom.SeriesInfo]:
    """find, choose, convert."""
    chosen = dicom.choose_ct_series(dicom.find_series(folder, "s1"), "s1")
    return dicom.convert_series(chosen, "s1", method=method), chosen


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pose", ["hfs", "ffs"])
def test_round_trip_values_and_geometry(tmp_path, method, pose):
    truth = truth_array()
    write_truth_series(tmp_path, truth, pose=pose)
    image, chosen = convert(tmp_path, method)
    assert_matches_truth(image, truth)
    assert chosen.conversion.path == method
    assert not chosen.conversion.resampled


def test_auto_uses_dicom2nifti_and_leaves_its_settings_alone(tmp_path):
    import dicom2nifti.settings as settings

    before = {name: getattr(settings, name) for name in dicom._D2N_SETTINGS}
    write_truth_series(tmp_path, truth_array())
    image, chosen = convert(tmp_path)
    assert chosen.conversion.path == "dicom2nifti"
    assert {name: getattr(settings, name) for name in dicom._D2N_SETTINGS} == before


def test_falls_back_to_simpleitk_when_dicom2nifti_fails(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated dicom2nifti failure")

    monkeypatch.setattr("dicom2nifti.convert_dicom.dicom_array_to_nifti", broken)
    truth = truth_array()
    write_truth_series(tmp_path, truth)
    image, chosen = convert(tmp_path)
    assert chosen.conversion.path == "simpleitk"
    assert "simulated" in chosen.conversion.fallback_reason
    assert_matches_truth(image, truth)


def test_fresh_process_converts(tmp_path):
    write_truth_series(tmp_path / "dcm", truth_array())
    code = (
        "import sys; from pathlib import Path; from lungclam.dicom import convert_subject; "
        "m = convert_subject(Path(sys.argv[1]), 's1', Path(sys.argv[2]), Path(sys.argv[3])); "
        "print(m['conversion']['path'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "dcm"), str(tmp_path / "a.nii.gz"), str(tmp_path / "a.json")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "dicom2nifti"
    written = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), truth_array())


# ------------------------------------------------------- tilt and uneven steps


def linear_hu(points: np.ndarray) -> np.ndarray:
    """A linear HU field of LPS points (mm); linear interpolation reproduces it exactly."""
    return 200.0 + 3.0 * points[..., 0] - 2.0 * points[..., 1] + 4.0 * points[..., 2]


def write_tilted_series(folder: Path, tilt_deg: float, table_steps: list[float]) -> None:
    """Axial slices tilted about x by ``tilt_deg``; the table moves along z by ``table_steps``.

    Pixels hold ``linear_hu`` at their own physical positions (rounded to integers).
    """
    t = np.radians(tilt_deg)
    row, col = np.array([1.0, 0, 0]), np.array([0, np.cos(t), -np.sin(t)])
    rows, cols, dxy = 20, 18, (1.0, 1.2)
    z_positions = np.concatenate([[0.0], np.cumsum(table_steps)])
    uid = generate_uid()
    jj, ii = np.mgrid[0:rows, 0:cols]
    for k, z in enumerate(z_positions):
        ipp = np.array([-10.0, -12.0, 50.0 + z])
        points = ipp + ii[..., None] * dxy[0] * row + jj[..., None] * dxy[1] * col
        stored = np.rint(linear_hu(points)).astype(np.int16) + 1024
        write_slice(folder / f"IM{k:03d}", stored, ipp, (*row, *col), dxy, uid, instance=k + 1)


def interior_error(image: sitk.Image) -> tuple[float, int]:
    """Largest |image - linear_hu| over voxels 2+ voxels away from the padding."""
    values = sitk.GetArrayFromImage(image).astype(float)
    inside = ndimage.binary_erosion(values > -900, iterations=2)
    idx = np.argwhere(inside)[:, ::-1].astype(float)  # x, y, z
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    points = np.asarray(image.GetOrigin()) + (idx * np.asarray(image.GetSpacing())) @ direction.T
    error = np.abs(values[inside] - linear_hu(points))
    return float(error.max()), int(inside.sum())


@pytest.mark.parametrize("method", METHODS)
def test_gantry_tilt_and_uneven_steps_resampled_exactly(tmp_path, method):
    write_tilted_series(tmp_path, tilt_deg=15.0, table_steps=[2.0, 2.0, 2.0, 3.5, 2.0, 2.0, 1.0, 2.0])
    image, chosen = convert(tmp_path, method)
    info = chosen.conversion
    assert info.path == method
    assert info.resampled and info.uneven_steps
    assert info.tilt_deg == pytest.approx(15.0, abs=0.01)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)  # an orthogonal grid
    error, n = interior_error(image)
    assert n > 500
    assert error <= 1.01  # input and output rounding only


def test_uneven_steps_without_tilt_keep_axes(tmp_path):
    # One step of 1.5 x the median (variable pitch, no slice missing) is resampled.
    write_tilted_series(tmp_path, tilt_deg=0.0, table_steps=[2.0, 2.0, 3.0, 2.0, 2.0])
    image, chosen = convert(tmp_path, "simpleitk")
    assert chosen.conversion.tilt_deg == 0.0 and chosen.conversion.uneven_steps
    assert image.GetSize()[2] == 6  # 11 mm at the median step of 2 mm
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-9)
    assert interior_error(image)[0] <= 1.01


@pytest.mark.parametrize("gap_mm", [3.9, 4.0, 5.0])
def test_gap_of_one_missing_slice_or_more_is_refused(tmp_path, gap_mm):
    # One missing slice makes a step of 2 x the median; 3.9 mm is that with 2.5 % jitter.
    write_tilted_series(tmp_path, tilt_deg=0.0, table_steps=[2.0, 2.0, gap_mm, 2.0, 2.0])
    with pytest.raises(SubjectError, match=rf"gap of {gap_mm:.2f} mm between IM002 and IM003.*slices missing"):
        convert(tmp_path)


def test_all_slices_at_one_position_is_not_a_volume(tmp_path):
    truth = truth_array()
    uid = generate_uid()
    for k in range(4):
        write_slice(tmp_path / f"s{k}", truth[k] + 1024, ORIGIN, (1, 0, 0, 0, 1, 0), SPACING[:2], uid)
    with pytest.raises(SubjectError, match="not a volume"):
        convert(tmp_path)


# --------------------------------------------------------- duplicates, mixtures


def test_identical_duplicate_file_is_dropped(tmp_path):
    truth = truth_array()
    paths = write_truth_series(tmp_path, truth)
    shutil.copy(paths[3], tmp_path / "copy_of_slice")
    image, chosen = convert(tmp_path)
    assert chosen.conversion.duplicates_dropped == 1
    assert_matches_truth(image, truth)


def test_different_slices_at_one_position_are_refused(tmp_path):
    truth = truth_array()
    paths = write_truth_series(tmp_path, truth)
    ds = pydicom.dcmread(paths[3])
    write_slice(
        tmp_path / "other_phase",
        truth[3] + 1100,
        ds.ImagePositionPatient,
        ds.ImageOrientationPatient,
        SPACING[:2],
        ds.SeriesInstanceUID,
    )
    with pytest.raises(SubjectError, match="same position.*different pixel data"):
        convert(tmp_path)


def test_mixed_pixel_spacing_is_refused(tmp_path):
    paths = write_truth_series(tmp_path, truth_array())
    ds = pydicom.dcmread(paths[0])
    ds.PixelSpacing = [0.9, 0.9]
    ds.save_as(paths[0])
    with pytest.raises(SubjectError, match="mixed or missing pixel spacing"):
        convert(tmp_path)


def test_mixed_orientation_is_refused(tmp_path):
    paths = write_truth_series(tmp_path, truth_array())
    ds = pydicom.dcmread(paths[0])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.99, -0.141]
    ds.save_as(paths[0])
    with pytest.raises(SubjectError, match="mixed slice orientations"):
        convert(tmp_path)


# -------------------------------------------------------------- series choice


def test_localizer_and_secondary_capture_are_skipped(tmp_path):
    truth = truth_array()
    write_truth_series(tmp_path / "ct", truth, series_number=3)
    scout = generate_uid()
    for k in range(2):  # a coronal localizer
        write_slice(
            tmp_path / "scout" / f"{k}",
            np.zeros((14, 16), np.int16),
            (0, 0, 0),
            (1, 0, 0, 0, 0, -1),
            (1, 1),
            scout,
            image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"],
            series_number=1,
        )
    sc = generate_uid()
    for k in range(12):  # more slices than the CT, but screenshots
        write_slice(
            tmp_path / "sc" / f"{k}",
            np.zeros((14, 16), np.int16),
            (0, 0, k),
            (1, 0, 0, 0, 1, 0),
            (1, 1),
            sc,
            sop_class=SecondaryCaptureImageStorage,
            series_number=99,
        )
    series = dicom.find_series(tmp_path, "s1")
    reasons = {s.uid: s.reason_rejected for s in series}
    assert reasons[scout] == "localizer" and reasons[sc] == "secondary capture"
    chosen = dicom.choose_ct_series(series, "s1")
    assert chosen.series_number == 3
    assert_matches_truth(dicom.convert_series(chosen, "s1"), truth)


def test_most_slices_wins_and_derived_is_a_last_resort(tmp_path):
    truth = truth_array()
    write_truth_series(tmp_path / "short", truth[:5], series_number=2)
    write_truth_series(tmp_path / "long", truth, series_number=3)
    write_truth_series(
        tmp_path / "mpr", np.concatenate([truth, truth]), series_number=4, image_type=["DERIVED", "SECONDARY", "AXIAL"]
    )
    series = dicom.find_series(tmp_path, "s1")
    assert dicom.choose_ct_series(series, "s1").series_number == 3
    only_derived = [s for s in series if s.series_number == 4]
    assert dicom.choose_ct_series(only_derived, "s1").series_number == 4


def test_localizer_only_folder_names_the_series_as_the_console_shows_it(tmp_path):
    """The message gives series number and description (what a user sees on the scanner
    or in a viewer), not only a 60-character UID."""
    scout = generate_uid()
    for k in range(2):
        write_slice(
            tmp_path / f"{k}",
            np.zeros((14, 16), np.int16),
            (0, 0, 0),
            (1, 0, 0, 0, 0, -1),
            (1, 1),
            scout,
            image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"],
            series_number=1,
            description="Topogram 0.6 T20f",
        )
    with pytest.raises(SubjectError) as err:
        convert(tmp_path)
    assert f"no CT axial series: series 1 'Topogram 0.6 T20f' UID {scout} (localizer)" in str(err.value)


def test_mr_only_is_refused_with_reasons(tmp_path):
    uid = generate_uid()
    for k in range(5):
        write_slice(
            tmp_path / f"mr{k}",
            np.zeros((8, 8), np.int16),
            (0, 0, k),
            (1, 0, 0, 0, 1, 0),
            (1, 1),
            uid,
            modality="MR",
            sop_class=MRImageStorage,
        )
    expected = rf"subject 's1': no CT axial series: series 2 'synthetic chest' UID {uid} \(MR\)"
    with pytest.raises(SubjectError, match=expected) as err:
        convert(tmp_path)
    assert err.value.path == str(tmp_path)


def test_empty_folder_and_missing_folder_are_refused(tmp_path):
    with pytest.raises(SubjectError, match="no files in the DICOM folder"):
        convert(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(SubjectError, match=r"no DICOM files: 1 file\(s\)"):
        convert(tmp_path)
    with pytest.raises(SubjectError, match="does not exist"):
        dicom.find_series(tmp_path / "nope", "s1")


def test_non_dicom_files_are_skipped_and_counted(tmp_path):
    truth = truth_array()
    write_truth_series(tmp_path, truth)
    (tmp_path / "deep" / "README.txt").write_text("scanner export notes")
    (tmp_path / "thumbs.db").write_bytes(b"\x00" * 400)
    series = dicom.find_series(tmp_path, "s1")
    assert series.n_non_dicom == 2 and len(series) == 1
    assert_matches_truth(dicom.convert_series(dicom.choose_ct_series(series, "s1"), "s1"), truth)


@pytest.mark.parametrize("method", ["auto", "simpleitk"])
def test_truncated_pixel_data_names_the_file(tmp_path, method):
    # Decision: a damaged slice fails the subject (naming the file) rather than being
    # dropped, which would leave an unnoticed hole in the volume.
    paths = write_truth_series(tmp_path, truth_array())
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[:-100])
    with pytest.raises(SubjectError, match=rf"{paths[5].name}: pixel data truncated"):
        convert(tmp_path, method)


def test_truncated_header_names_the_file(tmp_path):
    paths = write_truth_series(tmp_path, truth_array())
    paths[2].write_bytes(paths[2].read_bytes()[:200])
    with pytest.raises(SubjectError, match=rf"(truncated|corrupt) DICOM file {paths[2].name}"):
        dicom.find_series(tmp_path, "s1")


# -------------------------------------------------------------------- outputs


def test_convert_subject_writes_nifti_and_clean_sidecar(tmp_path):
    truth = truth_array()
    write_truth_series(tmp_path / "dcm", truth)
    out_nii, out_json = tmp_path / "out" / "s1.nii.gz", tmp_path / "out" / "s1.json"
    dicom.convert_subject(tmp_path / "dcm", "s1", out_nii, out_json)
    assert_matches_truth(sitk.ReadImage(str(out_nii)), truth)
    text = out_json.read_text()
    meta = json.loads(text)
    for keyword, value in IDENTIFYING.items():
        assert keyword not in meta
        assert value not in text
    assert "Date" not in text
    assert meta["Manufacturer"] == "LungclamTest" and meta["ConvolutionKernel"] == "B30f"
    assert meta["PixelSpacing"] == [0.8, 0.7]
    assert meta["image"]["size"] == list(SIZE)
    assert meta["conversion"]["path"] == "dicom2nifti"
    assert sorted(p.name for p in out_nii.parent.iterdir()) == ["s1.json", "s1.nii.gz"]  # no temporaries left


# ------------------------------------------------------------------ real data


def _convert_real(folder: Path, subject: str, method: str = "auto") -> tuple[sitk.Image, dicom.SeriesInfo, list]:
    series = dicom.find_series(folder, subject)
    chosen = dicom.choose_ct_series(series, subject)
    return dicom.convert_series(chosen, subject, method=method), chosen, series


@pytest.mark.realdata
@pytest.mark.parametrize(
    "subject, n_slices, spacing",
    [
        ("Lung_Dx-A0001", 64, (0.841796875, 0.841796875, 5.0)),
        ("Lung_Dx-A0002", 30, (0.646484375, 0.646484375, 8.0)),
    ],
)
def test_real_lung_studies_pick_one_series(shared_data, subject, n_slices, spacing):
    image, chosen, series = _convert_real(shared_data / "real-ct" / "lung-pet-ct-dx" / subject, subject)
    assert len(series) == 2 and all(s.reason_rejected is None for s in series)
    assert chosen.series_number == min(s.series_number for s in series)  # tie: lower number
    assert image.GetSize() == (512, 512, n_slices)
    np.testing.assert_allclose(image.GetSpacing(), spacing, rtol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-9)
    values = sitk.GetArrayViewFromImage(image)
    assert values.min() >= -1024 and 1000 < values.max() < 4000
    assert -1000 < np.median(values) < 100


@pytest.mark.realdata
def test_real_jpeg2000_matches_reference_grid(shared_data):
    base = shared_data / "real-ct" / "j2k-abdomen"
    image, chosen, series = _convert_real(base / "dicom", "j2k")
    assert chosen.headers[0].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    seg = sitk.DICOMOrient(sitk.ReadImage(str(base / "example_seg_dicom.nii.gz")), "LPS")
    assert image.GetSize() == seg.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(image.GetSpacing(), seg.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), seg.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), seg.GetDirection(), atol=1e-6)
    hu, labels = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(seg)
    assert 30 < np.median(hu[labels == 5]) < 150  # liver
    assert 30 < np.median(hu[labels == 1]) < 150  # spleen
    assert hu.min() == -1024 and np.median(hu[labels == 0]) < -500


@pytest.mark.realdata
@pytest.mark.parametrize("method", METHODS)
def test_real_tilted_head_agrees_with_dcm2niix(shared_data, method):
    base = shared_data / "real-ct" / "tilted-head-ge"
    image, chosen, _ = _convert_real(base / "dicom", "head", method)
    info = chosen.conversion
    assert info.resampled and info.uneven_steps and info.tilt_deg == pytest.approx(18.5, abs=0.05)
    reference = sitk.ReadImage(str(base / "reference_dcm2niix" / "_2_Tilt_Eq_1.nii.gz"))
    # Same axes (row, tilted column, slice normal) once both are in LPS order.
    np.testing.assert_allclose(image.GetDirection(), sitk.DICOMOrient(reference, "LPS").GetDirection(), atol=1e-3)
    np.testing.assert_allclose(image.GetSpacing()[:2], reference.GetSpacing()[:2], atol=1e-4)
    # The slab covers the same physical box within one slice step: the grids differ by
    # design (slice spacing 4.0/4.22 mm vs dcm2niix's 2.62 mm; sub-pixel row offsets).
    np.testing.assert_allclose(_bbox(image), _bbox(reference), atol=max(image.GetSpacing()[2], 1.0))
    # Content: ours resampled onto dcm2niix's grid, compared where both hold tissue or air
    # (the -1500 outside the scan circle and our -1024 fill are left out). Measured:
    # r = 0.9995 (simpleitk path), 0.996 (dicom2nifti path, whose 3D interpolation runs
    # along the sheared slice axis); shifting either by 0.5 mm lowers r, so the geometry
    # is right to well under a voxel.
    moved = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, -5000.0)
    ours, theirs = sitk.GetArrayFromImage(moved), sitk.GetArrayFromImage(reference).astype(np.float32)
    both = (ours > -1400) & (theirs > -1400)
    assert both.mean() > 0.3
    assert np.corrcoef(ours[both], theirs[both])[0, 1] > 0.99
    assert np.median(np.abs(ours[both] - theirs[both])) < 5.0


def _bbox(image: sitk.Image) -> np.ndarray:
    """Physical min and max corner (voxel centres) of an image, (2, 3)."""
    size = np.asarray(image.GetSize()) - 1
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(a * size[0]), float(b * size[1]), float(c * size[2])])
        for a in (0, 1)
        for b in (0, 1)
        for c in (0, 1)
    ]
    return np.array([np.min(corners, axis=0), np.max(corners, axis=0)])


@pytest.mark.realdata
@pytest.mark.parametrize("method", METHODS)
def test_bad_dicom_gantrytilting_is_tilt_corrected(shared_data, method):
    image, chosen, _ = _convert_real(shared_data / "bad-dicom" / "gantrytilting", "gt", method)
    assert chosen.conversion.tilt_deg == pytest.approx(14.0, abs=0.05) and chosen.conversion.resampled
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)
    assert image.GetSize()[0] == 512 and image.GetSize()[1] > 512  # widened for the shear


@pytest.mark.realdata
def test_bad_dicom_notavolume_is_refused(shared_data):
    folder = shared_data / "bad-dicom" / "notavolume"
    with pytest.raises(SubjectError, match="not a volume: all 4 slices at one position"):
        _convert_real(folder, "nv")


@pytest.mark.realdata
def test_bad_dicom_sliceincrement_is_refused_naming_the_gap(shared_data):
    # Steps 5, 5, 10 mm: the 10 mm step is one missing slice. Interpolating it would
    # invent a slice of anatomy, so the subject fails, naming the files on either side.
    with pytest.raises(
        SubjectError,
        match=r"gap of 10\.00 mm between IM-0001-0009-0001\.dcm and "
        r"IM-0001-0010-0001\.dcm .*slices missing",
    ):
        _convert_real(shared_data / "bad-dicom" / "sliceincrement", "si")
