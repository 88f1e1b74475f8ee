"""A synthetic chest CT (:class:`~lungclam.phantom.anatomy.Phantom`) written as real DICOM.

:func:`write_dicom_series` writes a phantom as an axial CT series (one file per slice) and
:func:`write_localizer` as a one-image localizer series of the same study. Every UID is
derived from a key, and no clock is read, so the same phantom and arguments give the same
bytes. Coordinates are ITK LPS millimetres; the phantom's arrays are indexed (z, y, x).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from lungclam.phantom.anatomy import AIR_HU, Phantom

#: Fixed acquisition time written into every file: no clock reading, so bytes repeat.
STUDY_TIME = "093000"
_UID_ROOT = "lungclam-phantom"


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for ``value``, exact where it fits."""
    text = repr(float(value))
    if text.endswith(".0"):
        text = text[:-2]
    return text if len(text) <= 16 else format_number_as_ds(float(value))


def _uid(uid_key: str, *parts: object) -> str:
    """A deterministic UID from the subject's key and the object's role."""
    return generate_uid(entropy_srcs=[_UID_ROOT, uid_key, *map(str, parts)])


def _age(birth_date: str, study_date: str) -> str:
    """DICOM age string ('052Y') from two YYYYMMDD dates."""
    years = int(study_date[:4]) - int(birth_date[:4])
    if study_date[4:] < birth_date[4:]:
        years -= 1
    return f"{max(years, 0):03d}Y"


def _file_names(count: int, shuffle: bool, rng: np.random.Generator | None, prefix: str) -> list[str]:
    """One file name per image: ordered (PREFIX0001.dcm) or random hex unrelated to order."""
    if not shuffle:
        return [f"{prefix}{i + 1:04d}.dcm" for i in range(count)]
    if rng is None:
        raise ValueError("shuffle=True needs an rng for the random file names")
    names: list[str] = []
    while len(names) < count:
        name = f"{int(rng.integers(0, 2**48)):012X}"
        if name not in names:
            names.append(name)
    return names


def _patient_study(
    *,
    subject: str,
    uid_key: str,
    patient_name: str | None,
    patient_id: str | None,
    birth_date: str,
    sex: str,
    study_date: str,
) -> Dataset:
    """Patient and study attributes shared by every file of a subject.

    The identifying values are fake but look real on purpose: the pipeline must drop them.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name or f"DEMO^{subject.upper()}"
    ds.PatientID = patient_id or f"LC-{subject}"
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.PatientAge = _age(birth_date, study_date)
    ds.StudyInstanceUID = _uid(uid_key, "study")
    ds.StudyDate = study_date
    ds.StudyTime = STUDY_TIME
    ds.StudyID = "1"
    ds.AccessionNumber = "A" + ds.StudyInstanceUID[-8:]
    ds.StudyDescription = "CT CHEST WITHOUT CONTRAST"
    ds.ReferringPhysicianName = "DEMO^REFERRER"
    ds.InstitutionName = "lungclam demo hospital"
    ds.Manufacturer = "lungclam phantom"
    ds.ManufacturerModelName = "synthetic"
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.FrameOfReferenceUID = _uid(uid_key, "frame")
    ds.PositionReferenceIndicator = ""
    return ds


def _finish(ds: Dataset, sop_uid: str) -> None:
    """Add the SOP identity and file meta information (Explicit VR Little Endian)."""
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta


def _pixel_module(ds: Dataset, pixels: np.ndarray, signed: bool) -> None:
    """Grey-scale 16-bit pixel attributes and data for a (rows, columns) array."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()


def write_dicom_series(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    subject: str,
    series_number: int = 2,
    feet_first: bool = False,
    flip_columns: bool = False,
    shuffle: bool = False,
    rng: np.random.Generator | None = None,
    patient_name: str | None = None,
    patient_id: str | None = None,
    birth_date: str = "19700101",
    sex: str = "O",
    study_date: str = "20200115",
    kernel: str = "B45f",
    uid_key: str | None = None,
) -> list[Path]:
    """Write ``phantom.hu`` as an axial CT series, one file per slice, into ``out_dir``.

    Stored pixels are signed 16-bit with RescaleSlope 1 and RescaleIntercept -1024 (stored =
    HU + 1024), so the whole range -2048..3071 HU, padding included, round-trips exactly.

    Args:
        phantom: the volume; its grid gives ImagePositionPatient, PixelSpacing and the slice
            spacing (SliceThickness = SpacingBetweenSlices = slice spacing, mm).
        out_dir: folder to write into (created; other files there are left alone).
        subject: used for the default fake patient name (``DEMO^SUBJECT``) and ID.
        series_number: SeriesNumber of the CT (the localizer, if any, takes another).
        feet_first: PatientPosition FFS and InstanceNumber 1 at the most superior slice, so
            ImagePositionPatient z decreases with InstanceNumber (HFS: it increases).
        flip_columns: store each slice mirrored left-right with ImageOrientationPatient
            [-1,0,0,0,1,0] (as some scanners do for feet-first); geometry is unchanged.
        shuffle: random hexadecimal file names that do not follow slice order (needs rng).
        rng: source of the shuffled names.
        patient_name, patient_id, birth_date, sex, study_date: fake identifying values.
        kernel: ConvolutionKernel.
        uid_key: key from which all UIDs are derived (default: ``subject``); the same key
            gives the same UIDs, and :func:`write_localizer` with it joins the same study.

    Returns:
        The written paths, in slice order (inferior to superior).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uid_key = uid_key or subject
    nz, ny, nx = phantom.hu.shape
    dx, dy, dz = phantom.spacing
    x0, y0, z0 = phantom.origin
    series_uid = _uid(uid_key, "series", series_number)
    names = _file_names(nz, shuffle, rng, "CT")
    row_x = -1.0 if flip_columns else 1.0
    first_x = x0 + (nx - 1) * dx if flip_columns else x0
    paths = []
    for k in range(nz):
        instance = nz - k if feet_first else k + 1
        ds = _patient_study(
            subject=subject, uid_key=uid_key, patient_name=patient_name, patient_id=patient_id,
            birth_date=birth_date, sex=sex, study_date=study_date,
        )  # fmt: skip
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = f"Chest {_ds(dz)}mm {kernel}"
        ds.ProtocolName = "Chest non-contrast"
        ds.SeriesDate, ds.SeriesTime = study_date, STUDY_TIME
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = instance
        ds.PatientPosition = "FFS" if feet_first else "HFS"
        z = z0 + k * dz
        ds.ImagePositionPatient = [_ds(first_x), _ds(y0), _ds(z)]
        ds.ImageOrientationPatient = [_ds(row_x), "0", "0", "0", "1", "0"]
        ds.SliceLocation = _ds(z)
        ds.PixelSpacing = [_ds(dy), _ds(dx)]
        ds.SliceThickness = _ds(dz)
        ds.SpacingBetweenSlices = _ds(dz)
        ds.KVP = "120"
        ds.ConvolutionKernel = kernel
        ds.ReconstructionDiameter = _ds(nx * dx)
        ds.GantryDetectorTilt = "0"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        pixels = phantom.hu[k, :, ::-1] if flip_columns else phantom.hu[k]
        _pixel_module(ds, pixels.astype(np.int32) + 1024, signed=True)
        _finish(ds, _uid(uid_key, "sop", series_number, instance))
        path = out_dir / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_localizer(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    subject: str,
    series_number: int = 1,
    feet_first: bool = False,
    shuffle: bool = False,
    rng: np.random.Generator | None = None,
    patient_name: str | None = None,
    patient_id: str | None = None,
    birth_date: str = "19700101",
    sex: str = "O",
    study_date: str = "20200115",
    uid_key: str | None = None,
) -> Path:
    """Write a one-image coronal localizer (scout) of ``phantom`` into ``out_dir``.

    The image is the antero-posterior line integral of attenuation relative to water
    (0..400 mm water-equivalent mapped to 0..4095), rows running head to feet
    (ImageOrientationPatient [1,0,0,0,0,-1]), ImageType ORIGINAL\\PRIMARY\\LOCALIZER, in
    the same study as the CT (same ``uid_key``) but its own series UID and number.
    ``feet_first`` only sets PatientPosition (FFS), to match the CT. Identity arguments
    are as in :func:`write_dicom_series`. Returns the written path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uid_key = uid_key or subject
    dx, dy, dz = phantom.spacing
    x0, _, z0 = phantom.origin
    # Padding counts as air; water-equivalent path length in mm along y.
    mu = (np.maximum(phantom.hu.astype(np.float32), AIR_HU) - AIR_HU) / 1000.0
    path_mm = mu.sum(axis=1) * dy  # (z, x)
    pixels = np.clip(np.rint(path_mm[::-1] * 4095.0 / 400.0), 0, 4095).astype(np.uint16)
    ds = _patient_study(
        subject=subject, uid_key=uid_key, patient_name=patient_name, patient_id=patient_id,
        birth_date=birth_date, sex=sex, study_date=study_date,
    )  # fmt: skip
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesInstanceUID = _uid(uid_key, "series", series_number)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "Topogram AP"
    ds.SeriesDate, ds.SeriesTime = study_date, STUDY_TIME
    ds.InstanceNumber = 1
    ds.PatientPosition = "FFS" if feet_first else "HFS"
    z_top = z0 + (phantom.hu.shape[0] - 1) * dz
    ds.ImagePositionPatient = [_ds(x0), "0", _ds(z_top)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.PixelSpacing = [_ds(dz), _ds(dx)]
    ds.KVP = "120"
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    _pixel_module(ds, pixels, signed=False)
    _finish(ds, _uid(uid_key, "sop", series_number, 1))
    path = out_dir / _file_names(1, shuffle, rng, "LOC")[0]
    ds.save_as(path, enforce_file_format=True)
    return path
