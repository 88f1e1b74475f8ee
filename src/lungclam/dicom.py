"""DICOM to NIfTI for one subject: find the series, pick the CT, convert, write a sidecar.

The ``convert`` stage calls :func:`convert_subject`. The steps, each usable on its own:

1. :func:`find_series` walks a folder of any layout (:mod:`lungclam.dicom_files`), reads
   headers only and groups the files by SeriesInstanceUID, setting scouts that share the
   CT's UID aside. Every entry is accounted for: only files that are clearly not DICOM
   (no preamble and not a DICOM-looking name) are skipped; see :func:`_read_header`.
   :func:`one_patient_and_study` refuses a folder mixing patients or studies.
2. :func:`choose_ct_series` picks the axial CT series with the most slice positions and
   says why every other series was passed over.
3. :func:`convert_series` checks the slice geometry (one orientation, one pixel spacing,
   no stacked duplicates, slices at more than one position, no large gaps), converts with
   dicom2nifti, and falls back to SimpleITK plus our own resampler if dicom2nifti fails or
   its result disagrees with the headers. The result is int16 HU in LPS orientation.
4. :func:`check_rescale` (before) and :func:`check_hu` (after conversion) refuse values
   that are not HU. :func:`sidecar` lists scanner and geometry facts; never anything that
   identifies the patient (an allow-list, not a block-list).

Series choice: non-CT modalities, Secondary Capture objects, localizers (ImageType
LOCALIZER or PROJECTION IMAGE, or fewer than three slice positions), multi-frame
(enhanced) CT and series whose slice normal is more than 45 degrees from head-feet are
rejected, each with a reason. A CT series marked DERIVED\\SECONDARY (a reformat) is only a
last resort. Files without a SeriesInstanceUID are grouped by series number and folder.

Geometry policy (all distances in mm, measured along the slice normal n = row x column):

- Gantry tilt (slice origins drift within the slice plane from slice to slice) and uneven
  slice steps are resampled onto a regular grid whose axes are the image row, the image
  column and the slice normal. The axes stay orthogonal, so the volume is no longer
  sheared; for a tilted scan they stay rotated by the tilt angle about the patient's
  left-right axis (as dcm2niix does). Values outside the acquired slab are -1024 HU.
- An uneven series is resampled only when no step exceeds ``MAX_GAP_RATIO`` (1.8) times
  the median step. One missing slice makes a step of 2 x the median, so any missing slice
  is refused, naming the files on either side, while variable pitch (the GE tilted head
  in ../shared/data has steps of 1 and 1.75 x its median) and jitter are resampled.
- Two files at one position: the same SOP instance, or identical pixel data, is kept once;
  different pixel data at one position (two phases in one series?) is refused.
- A DICOM-looking file without the preamble, a file with the preamble whose header
  cannot be parsed or is implausible, or whose pixel data is truncated, cannot be decoded
  or decodes beyond BitsStored, fails the subject with that file's name: dropping it
  silently would leave a hole in the volume.
- Values are rounded and clipped to int16; scanner padding (-2048, -3024) is left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from scipy import ndimage

from lungclam import __version__
from lungclam.atomic import atomic_path
from lungclam.dicom_files import list_dicom_folder
from lungclam.errors import SubjectError
from lungclam.imageio import write_image

log = logging.getLogger(__name__)

ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # plus the multi-frame SC variants
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")

AXIAL_MIN_COS = math.cos(math.radians(45.0))  # slice normal within 45 deg of head-feet
MIN_POSITIONS = 3  # one or two slices are a localizer or a test shot, not a volume
MAX_GAP_RATIO = 1.8  # largest step / median step still resampled (a missing slice makes 2)
STEP_TOL_MM = 0.02  # steps this close (or 1% of the step) count as equal
STEP_TOL_REL = 0.01
DUPLICATE_TOL_MM = 0.01  # two slices closer than this along the normal share a position
TILT_TOL_PIXELS = 0.1  # in-plane drift of the slice origins that counts as tilt
ORIENTATION_TOL = 1e-3  # direction cosines that differ by less are the same orientation
PADDING_HU = -1024  # fill value outside the acquired slab after resampling
AIR_HU = (-1100.0, -900.0)  # where air lies in a CT in HU
TISSUE_HU = (-200.0, 200.0)  # fat, water, muscle, blood: most of a body
MIN_AIR_FRACTION = 0.002  # of the voxels above -1500 (scanner padding left out)
MIN_TISSUE_FRACTION = 0.01
INT16_MIN, INT16_MAX = -32768, 32767


# ----------------------------------------------------------------------------- series


@dataclass
class ConversionInfo:
    """What :func:`convert_series` did; read by :func:`sidecar`."""

    path: str  # "dicom2nifti" or "simpleitk"
    fallback_reason: str | None
    n_slices: int  # distinct slice positions used
    duplicates_dropped: int
    step_mm: float  # output slice spacing along the normal
    median_step_mm: float
    min_step_mm: float
    max_step_mm: float
    uneven_steps: bool
    tilt_deg: float  # measured from the slice positions
    resampled: bool
    seconds: float


@dataclass
class SeriesInfo:
    """One DICOM series found in a subject's folder (headers only)."""

    uid: str
    label: str  # the UID, or a stand-in when the files carry none; used in messages
    folder: Path
    modality: str
    description: str
    series_number: int | None
    image_type: tuple[str, ...]
    sop_class_uid: str
    files: list[Path]
    n_positions: int  # distinct ImagePositionPatient values (slices)
    orientation: tuple[float, ...] | None  # most common ImageOrientationPatient
    plane: str  # axial, coronal, sagittal, oblique or unknown
    is_localizer: bool
    is_secondary: bool  # Secondary Capture SOP class, or ImageType DERIVED\SECONDARY
    is_multiframe: bool
    reason_rejected: str | None = None
    headers: list[Dataset] = field(default_factory=list, repr=False)
    conversion: ConversionInfo | None = field(default=None, repr=False)

    @property
    def n_files(self) -> int:
        """Number of files in the series."""
        return len(self.files)

    @property
    def name(self) -> str:
        """How messages name the series: number and description as a scanner console
        shows them (what a user recognises), then the UID (what tells series apart)."""
        parts = [f"series {self.series_number}"] if self.series_number is not None else []
        if self.description:
            parts.append(repr(self.description))
        parts.append(self.label if self.label.startswith("<") else f"UID {self.label}")
        return " ".join(parts)

    @property
    def is_secondary_capture(self) -> bool:
        """True for the Secondary Capture SOP classes (screenshots, never volumes)."""
        return self.sop_class_uid.startswith(SECONDARY_CAPTURE_PREFIX)


class SeriesList(list):
    """The series of one folder, plus what was skipped on the way (for messages)."""

    def __init__(self, items: list[SeriesInfo], folder: Path, n_files: int, n_non_dicom: int, n_non_image: int):
        super().__init__(items)
        self.folder = folder
        self.n_files = n_files  # every regular file seen
        self.n_non_dicom = n_non_dicom  # no DICM preamble: skipped
        self.n_non_image = n_non_image  # DICOMDIR and the like: skipped
        self.skipped: list[Path] = []  # the non-DICOM files, by path


def _text(ds: Dataset, keyword: str) -> str:
    """A header value as a stripped string ('' when absent)."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _floats(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
    """A numeric multi-value header (IOP, IPP, PixelSpacing) as floats, or None."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        values = value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None


def _sop_class(ds: Dataset) -> str:
    """SOPClassUID, taken from the file meta header when the dataset leaves it empty."""
    uid = _text(ds, "SOPClassUID")
    if not uid and getattr(ds, "file_meta", None) is not None:
        uid = _text(ds.file_meta, "MediaStorageSOPClassUID")
    return uid


def _looks_like_dicom_name(path: Path) -> bool:
    """True for a name a DICOM file may carry: no suffix, a numeric suffix (UID-like names
    such as ``CT.1.3.12.2.30000022``), or .dcm/.dicom/.dic/.ima. Hidden files (``.DS_Store``)
    and other suffixes (.txt, .png, .xml, .db, ...) are not DICOM-looking."""
    name = path.name
    if name.startswith("."):
        return False
    suffix = path.suffix.lower()
    return suffix in ("", *DICOM_SUFFIXES) or suffix[1:].isdigit()


def _read_header(path: Path, subject: str | None) -> Dataset | None:
    """Header of one file; None when it is clearly not DICOM; SubjectError when it is broken.

    The intake rule (every file in the folder is accounted for): a file is skipped as not
    DICOM only when it lacks the 'DICM' preamble *and* its name is not DICOM-looking (see
    :func:`_looks_like_dicom_name`). A DICOM-looking file without the preamble (empty, cut
    short, header overwritten), a file that cannot be opened, and a file with the preamble
    whose header cannot be parsed or holds nothing beyond the file meta group all fail the
    subject, naming the file: we cannot tell which series it belonged to, and skipping it
    could leave a slice out of the volume.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError as exc:
        raise SubjectError(subject, f"cannot read {path.name}: {exc.strerror or exc}", path) from exc
    if len(head) < 132 or head[128:132] != b"DICM":
        if not _looks_like_dicom_name(path):
            return None
        size = path.stat().st_size
        raise SubjectError(
            subject,
            f"{path.name} is not a readable DICOM file ({size} bytes, no 'DICM' preamble at byte 128: "
            "empty, truncated or header overwritten?); a file with a DICOM-looking name is never skipped "
            "(remove it, or rename it if it is not an image)",
            path,
        )
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=False)
    except Exception as exc:  # pydicom raises OSError, EOFError, ValueError, ... on damage
        raise SubjectError(subject, f"corrupt DICOM file {path.name}: {_one_line(exc)}", path) from exc
    if len(ds) == 0:
        raise SubjectError(subject, f"truncated DICOM file {path.name}: nothing after the file meta header", path)
    damage = _header_damage(ds)
    if damage:
        raise SubjectError(subject, f"corrupt DICOM header in {path.name}: {damage}", path)
    return ds


def _header_damage(ds: Dataset) -> str | None:
    """What makes a parsed header implausible (bytes overwritten?), or None.

    Every DICOM object names its transfer syntax, SOP class and SOP instance, and stores
    its elements in ascending tag order; garbage parsed as elements breaks one of these.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return "no TransferSyntaxUID (0002,0010) in the file meta header"
    if not _sop_class(ds):
        return "no SOPClassUID (0008,0016)"
    if not (_text(ds, "SOPInstanceUID") or _text(meta, "MediaStorageSOPInstanceUID")):
        return "no SOPInstanceUID (0008,0018)"
    tags = list(ds.keys())
    for before, after in zip(tags, tags[1:]):
        if after <= before:
            return f"elements out of order ({after} after {before})"
    return None


def _syntax_name(ds: Dataset) -> str:
    """The transfer syntax for messages: its name and UID."""
    syntax = _transfer_syntax(ds)
    return "?" if syntax is None else f"{syntax.name} ({syntax})"


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (ITK's span several and start with a source path)."""
    text = " ".join(str(exc).split())
    # "Exception thrown in SimpleITK ...: /path/itkGDCMImageIO.cxx:359: ITK ERROR: GDCMImageIO(0x..): cause"
    if "sitk::ERROR:" in text:
        text = text.split("sitk::ERROR:", 1)[1].strip()
    if "ITK ERROR:" in text:
        text = text.split("ITK ERROR:", 1)[1].strip()
        text = text.split("):", 1)[1].strip() if text.startswith("GDCMImageIO(") and "):" in text else text
    return text or type(exc).__name__


def _transfer_syntax(ds: Dataset) -> pydicom.uid.UID | None:
    """The file's transfer syntax, or None when the file meta header lacks it."""
    meta = getattr(ds, "file_meta", None)
    return None if meta is None else meta.get("TransferSyntaxUID")


def _series_key(ds: Dataset, path: Path, folder: Path) -> tuple[str, str]:
    """(grouping key, label); files without a SeriesInstanceUID group by number and folder."""
    uid = _text(ds, "SeriesInstanceUID")
    if uid:
        return uid, uid
    where = path.parent.relative_to(folder).as_posix()
    number, modality = _text(ds, "SeriesNumber") or "?", _text(ds, "Modality") or "?"
    label = f"<no SeriesInstanceUID: series {number} {modality} in {where}>"
    return label, label


def find_series(folder: Path, subject: str | None = None) -> SeriesList:
    """Group the DICOM files under ``folder`` (any layout, any names) into series.

    Only headers are read. Every entry is accounted for (see :func:`_read_header`): clearly
    non-DICOM files are skipped and counted; a broken or looping link, an unreadable,
    truncated or corrupt DICOM file raises :class:`SubjectError` naming it. Localizer
    images that share the CT's SeriesInstanceUID are split off as a series of their own
    (:func:`_split_scouts`). Each series' ``reason_rejected`` says why it cannot be the CT
    volume (None when it can). Returns a list (sorted by series number, then UID) that also
    carries ``n_files``, ``n_non_dicom``, ``n_non_image`` and ``skipped``.
    """
    folder = Path(folder)
    listing = list_dicom_folder(folder)
    if listing.problems:
        raise SubjectError(subject, _listing_problems(listing.problems, folder), listing.problems[0][0])
    groups: dict[str, tuple[str, list[tuple[Path, Dataset]]]] = {}
    skipped: list[Path] = []
    n_non_image = 0
    for path in listing.files:
        ds = _read_header(path, subject)
        if ds is None:
            skipped.append(path)
            continue
        if _sop_class(ds) == MEDIA_STORAGE_DIRECTORY:
            n_non_image += 1
            continue
        key, label = _series_key(ds, path, folder)
        groups.setdefault(key, (label, []))[1].append((path, ds))
    series = []
    for label, members in groups.values():
        main, scouts = _split_scouts(members)
        series.append(_summarise(label, main, folder))
        if scouts:
            scout_label = f"<{len(scouts)} localizer image(s) in series UID {label}>"
            series.append(_summarise(scout_label, scouts, folder))
            log.warning(
                "%s: %d localizer image(s) set aside: %s",
                series[-2].name,
                len(scouts),
                ", ".join(p.name for p, _ in scouts[:5]),
            )
    series.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.label))
    log.info(
        "%s: %d files, %d series, %d non-DICOM files skipped", folder, len(listing.files), len(series), len(skipped)
    )
    if skipped:
        log.warning(
            "skipped as not DICOM (no preamble, not a DICOM-looking name): %s%s",
            ", ".join(p.name for p in skipped[:10]),
            " ..." if len(skipped) > 10 else "",
        )
    found = SeriesList(series, folder, len(listing.files), len(skipped), n_non_image)
    found.skipped = skipped
    return found


def _listing_problems(problems: list[tuple[Path, str]], folder: Path) -> str:
    """One message for the entries a folder listing could not account for (first four)."""

    def one(path: Path, cause: str) -> str:
        return f"{'DICOM folder' if path == folder else path.relative_to(folder)}: {cause}"

    text = "; ".join(one(path, cause) for path, cause in problems[:4])
    return text + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")


def _is_localizer_image(ds: Dataset) -> bool:
    """ImageType says LOCALIZER or PROJECTION IMAGE (a scout / topogram)."""
    image_type = _text(ds, "ImageType").upper()
    return "LOCALIZER" in image_type or "PROJECTION IMAGE" in image_type


def _split_scouts(members: list[tuple[Path, Dataset]]) -> tuple[list[tuple[Path, Dataset]], list[tuple[Path, Dataset]]]:
    """(images, scouts) of one series: scouts by ImageType, or by plane, never by file name.

    Some scanners give the scout the axial series' UID. When a series mixes them, the
    LOCALIZER / PROJECTION IMAGE files go; and when most images are axial, the coronal or
    sagittal ones go too. A series made only of scouts stays whole (and is rejected as a
    localizer); a slightly different axial orientation stays in (and fails, named, in the
    geometry check).
    """
    scouts = [m for m in members if _is_localizer_image(m[1])]
    if len(scouts) == len(members):
        return members, []
    rest = [m for m in members if not _is_localizer_image(m[1])]
    planes = [_plane(_floats(ds, "ImageOrientationPatient")) for _, ds in rest]
    if Counter(planes).most_common(1)[0][0] == "axial":
        scouts += [m for m, plane in zip(rest, planes) if plane in ("coronal", "sagittal")]
        rest = [m for m, plane in zip(rest, planes) if plane not in ("coronal", "sagittal")]
    return rest, scouts


def _plane(orientation: tuple[float, ...] | None) -> str:
    """Name the plane of a slice orientation by its normal's dominant patient axis."""
    if orientation is None or len(orientation) != 6:
        return "unknown"
    normal = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 0.5:
        return "unknown"
    normal = np.abs(normal / norm)
    axis = int(np.argmax(normal))
    if axis == 2 and normal[2] >= AXIAL_MIN_COS:
        return "axial"
    if normal[axis] < AXIAL_MIN_COS:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _summarise(label: str, members: list[tuple[Path, Dataset]], folder: Path) -> SeriesInfo:
    """Build a :class:`SeriesInfo` from the headers of one series."""
    members.sort(key=lambda m: str(m[0]))
    first = members[0][1]
    headers = [ds for _, ds in members]
    orientations = Counter(_rounded(_floats(ds, "ImageOrientationPatient")) for ds in headers)
    orientation = orientations.most_common(1)[0][0]
    positions = {_rounded(_floats(ds, "ImagePositionPatient"), 2) for ds in headers}
    image_type = tuple(v.strip().upper() for v in _text(first, "ImageType").split("\\") if v.strip())
    sop_class = _sop_class(first)
    number = _text(first, "SeriesNumber")
    info = SeriesInfo(
        uid=_text(first, "SeriesInstanceUID"),
        label=label,
        folder=folder,
        modality=_text(first, "Modality").upper(),
        description=_text(first, "SeriesDescription"),
        series_number=_int_or_none(number),
        image_type=image_type,
        sop_class_uid=sop_class,
        files=[p for p, _ in members],
        n_positions=len(positions - {None}),
        orientation=orientation,
        plane=_plane(orientation),
        is_localizer="LOCALIZER" in image_type or "PROJECTION IMAGE" in image_type,
        is_secondary=sop_class.startswith(SECONDARY_CAPTURE_PREFIX)
        or ("DERIVED" in image_type and "SECONDARY" in image_type),
        is_multiframe=sop_class == ENHANCED_CT_IMAGE_STORAGE or int(first.get("NumberOfFrames", 1) or 1) > 1,
        headers=headers,
    )
    info.reason_rejected = _rejection_reason(info)
    return info


def _int_or_none(text: str) -> int | None:
    """An IS header value as int; None when empty or malformed."""
    try:
        return int(float(text))
    except ValueError:
        return None


def _rounded(values: tuple[float, ...] | None, ndigits: int = 3) -> tuple[float, ...] | None:
    """Round a tuple so near-equal header values compare equal."""
    return None if values is None else tuple(round(v, ndigits) + 0.0 for v in values)


def _rejection_reason(info: SeriesInfo) -> str | None:
    """Why a series cannot be the CT volume, or None when it can."""
    if info.modality != "CT":
        return info.modality or "no modality"
    if info.is_secondary_capture:
        return "secondary capture"
    if info.is_localizer:
        return "localizer"
    if info.is_multiframe:
        return "multi-frame (enhanced) CT, not supported"
    if any("Rows" not in ds for ds in info.headers):
        return "no image data"
    if info.plane != "axial":
        return f"not axial ({info.plane})"
    if info.n_positions == 1 and info.n_files > 1:
        return f"not a volume: all {info.n_files} slices at one position"
    if info.n_positions == 0:
        return f"no ImagePositionPatient in any of its {info.n_files} file(s) (e.g. {info.files[0].name})"
    if info.n_positions < MIN_POSITIONS:
        return f"{info.n_positions} slice position(s), a localizer?"
    return None


def choose_ct_series(series: list[SeriesInfo], subject: str | None) -> SeriesInfo:
    """Pick the axial CT series with the most slice positions.

    Localizers, secondary captures, other modalities, multi-frame objects, non-axial and
    one- or two-slice series are passed over. A CT series marked DERIVED\\SECONDARY (a
    reformat) is used only when no ORIGINAL axial CT exists, with a warning. Ties go to
    the thinner slices, then the lower series number, then the UID, so the choice is
    deterministic. Raises :class:`SubjectError` listing every series and why it was not
    usable when none qualifies.
    """
    folder = getattr(series, "folder", None)
    usable = [s for s in series if s.reason_rejected is None]
    if not usable:
        raise SubjectError(subject, _nothing_usable(series), folder)
    primary = [s for s in usable if not s.is_secondary] or usable
    best = min(primary, key=_preference)
    if best.is_secondary:
        log.warning("no ORIGINAL axial CT; using the derived %s", best.name)
    others = [f"{s.name} ({s.reason_rejected or 'usable, ranked lower'})" for s in series if s is not best]
    log.info("chose %s, %d slices; passed over: %s", best.name, best.n_positions, "; ".join(others) or "none")
    return best


def one_patient_and_study(
    series: SeriesList, subject: str | None, patient_id: str | None = None, study_uid: str | None = None
) -> SeriesList:
    """The series of one patient and one study; refuse a folder that mixes several.

    ``patient_id`` / ``study_uid`` (empty or None: not given) keep only the series with
    that PatientID / StudyInstanceUID. Without them, a folder whose series carry more than
    one PatientID or StudyInstanceUID fails, listing the series of each, because picking
    one would be a guess. PatientIDs identify people, so messages never show them (they
    reach logs and results/failed_subjects.tsv): patients are numbered instead.
    """
    folder = getattr(series, "folder", None)
    kept = list(series)
    for keyword, wanted, column in (
        ("PatientID", patient_id, "patient_id"),
        ("StudyInstanceUID", study_uid, "study_uid"),
    ):
        values: dict[str, list[SeriesInfo]] = {}
        for s in kept:
            values.setdefault(_text(s.headers[0], keyword), []).append(s)
        shown = {v: (f"patient {i}" if keyword == "PatientID" else repr(v)) for i, v in enumerate(values, 1)}
        listed = "; ".join(f"{shown[v]}: " + ", ".join(s.name for s in ss) for v, ss in values.items())
        if wanted:
            if wanted not in values:
                given = "the value" if keyword == "PatientID" else repr(wanted)
                raise SubjectError(
                    subject,
                    f"no series with {given} the samples sheet's {column} column gives "
                    f"for {keyword}; the folder holds {listed}",
                    folder,
                )
            kept = values[wanted]
        elif len(values) > 1:
            raise SubjectError(
                subject,
                f"the folder holds {len(values)} different {keyword}s ({listed}); give the one to use in the "
                f"samples sheet's {column} column, or split the folder",
                folder,
            )
    if len(kept) == len(series):
        return series
    out = SeriesList(kept, series.folder, series.n_files, series.n_non_dicom, series.n_non_image)
    out.skipped = series.skipped
    return out


def _preference(info: SeriesInfo) -> tuple:
    """Sort key: most slices first, then thinner slices, lower series number, UID."""
    thickness = _floats(info.headers[0], "SliceThickness")
    return (
        -info.n_positions,
        thickness[0] if thickness else math.inf,
        info.series_number if info.series_number is not None else 1 << 30,
        info.label,
    )


def _nothing_usable(series: list[SeriesInfo]) -> str:
    """The message for a folder without any usable CT series."""
    n_files = getattr(series, "n_files", None)
    n_non_dicom = getattr(series, "n_non_dicom", 0)
    n_non_image = getattr(series, "n_non_image", 0)
    skipped_files = getattr(series, "skipped", [])
    if not series:
        if n_files == 0:
            return "no files in the DICOM folder"
        if n_non_image and n_non_image + n_non_dicom == n_files:
            return (
                f"no DICOM images: the folder holds only {n_non_image} DICOMDIR index file(s)"
                + (f" and {n_non_dicom} non-DICOM file(s)" if n_non_dicom else "")
                + "; the images a DICOMDIR lists must be in this folder or below it"
            )
        if n_files is not None:
            names = ", ".join(p.name for p in skipped_files[:5]) + (" ..." if len(skipped_files) > 5 else "")
            return f"no DICOM files: {n_files} file(s), none of them DICOM (skipped: {names})"
        return "no DICOM series found"
    listed = "; ".join(f"{s.name} ({s.reason_rejected})" for s in series)
    skipped = f"; {n_non_dicom} non-DICOM file(s) skipped" if n_non_dicom else ""
    return f"no CT axial series: {listed}{skipped}"


# --------------------------------------------------------------------------- geometry


@dataclass
class SliceGeometry:
    """Where each slice of a series lies, sorted along the slice normal (LPS, mm)."""

    files: list[Path]  # one per position, ordered by increasing depth
    headers: list[Dataset] = field(repr=False)
    row_dir: np.ndarray  # direction of increasing column index (IOP[:3])
    col_dir: np.ndarray  # direction of increasing row index (IOP[3:])
    normal: np.ndarray  # row_dir x col_dir
    dx: float  # spacing between columns (PixelSpacing[1])
    dy: float  # spacing between rows (PixelSpacing[0])
    rows: int
    cols: int
    positions: np.ndarray  # (n, 3) ImagePositionPatient
    depths: np.ndarray  # (n,) position along the normal
    duplicates_dropped: int

    @property
    def steps(self) -> np.ndarray:
        """Distances between neighbouring slices along the normal."""
        return np.diff(self.depths)

    @property
    def median_step(self) -> float:
        """Median slice step."""
        return float(np.median(self.steps))

    @property
    def uneven(self) -> bool:
        """True when some step differs from the median by more than the tolerance."""
        tol = max(STEP_TOL_MM, STEP_TOL_REL * self.median_step)
        return bool(np.any(np.abs(self.steps - self.median_step) > tol))

    @property
    def step(self) -> float:
        """Output slice spacing: the mean step when even, else the median step."""
        if self.uneven:
            return self.median_step
        return float((self.depths[-1] - self.depths[0]) / (len(self.depths) - 1))

    @property
    def inplane_offsets(self) -> np.ndarray:
        """(n, 2) slice origins along (row_dir, col_dir) relative to the first slice, mm."""
        rel = self.positions - self.positions[0]
        return np.stack([rel @ self.row_dir, rel @ self.col_dir], axis=1)

    @property
    def tilted(self) -> bool:
        """True when slice origins drift within the slice plane (gantry tilt)."""
        drift = np.abs(self.inplane_offsets) / np.array([self.dx, self.dy])
        return bool(np.max(drift) > TILT_TOL_PIXELS)

    @property
    def tilt_deg(self) -> float:
        """Angle between the line through the slice origins and the slice normal."""
        shift = float(np.hypot(*self.inplane_offsets[-1]))
        return math.degrees(math.atan2(shift, float(self.depths[-1] - self.depths[0])))

    @property
    def needs_resampling(self) -> bool:
        """Tilted or unevenly spaced slices cannot be stacked as they are."""
        return self.tilted or self.uneven

    def pixel_points(self, k: int, ij: np.ndarray) -> np.ndarray:
        """Physical points (m, 3) of pixels ``ij`` = (m, 2) (column i, row j) of slice k."""
        ij = np.asarray(ij, dtype=float)
        along_row = np.outer(ij[:, 0] * self.dx, self.row_dir)
        along_col = np.outer(ij[:, 1] * self.dy, self.col_dir)
        return self.positions[k] + along_row + along_col

    def corner_points(self) -> np.ndarray:
        """Physical points of the four corner pixel centres of every slice, (4n, 3)."""
        corners = np.array([[0, 0], [self.cols - 1, 0], [0, self.rows - 1], [self.cols - 1, self.rows - 1]])
        return np.concatenate([self.pixel_points(k, corners) for k in range(len(self.files))])


def _same(values: list[tuple[float, ...] | None], tol: float) -> bool:
    """True when all tuples are present and equal within ``tol``."""
    if any(v is None or len(v) != len(values[0]) for v in values):
        return False
    arr = np.asarray(values, dtype=float)
    return bool(np.all(np.abs(arr - arr[0]) <= tol))


def _odd_ones_out(series: SeriesInfo, values: list, tol: float) -> str:
    """Name the files whose value differs from the most common one (for messages)."""
    rounded = [None if v is None else tuple(round(x / tol) * tol for x in v) for v in values]
    counts = Counter(rounded)
    common = counts.most_common(1)[0][0]
    odd = [(f.name, v) for f, r, v in zip(series.files, rounded, values) if r != common]
    listed = ", ".join(f"{name} ({_show(v)})" for name, v in odd[:5]) + (" ..." if len(odd) > 5 else "")
    return f"{len(odd)} of {len(values)} file(s) differ from the other {counts[common]} ({_show(common)}): {listed}"


def _show(value: tuple[float, ...] | None) -> str:
    """A header tuple for messages: rounded numbers, or 'missing'."""
    return "missing" if value is None else "[" + ", ".join(f"{v:g}" for v in np.round(value, 4)) + "]"


def _check_uniform(series: SeriesInfo, subject: str | None) -> None:
    """Refuse series whose slices disagree on orientation, pixel spacing or matrix size,
    or lack a position; the message names the odd files."""
    headers, where = series.headers, series.files[0].parent
    orientations = [_floats(ds, "ImageOrientationPatient") for ds in headers]
    if not _same(orientations, ORIENTATION_TOL) or len(orientations[0]) != 6:
        odd = _odd_ones_out(series, orientations, ORIENTATION_TOL)
        raise SubjectError(subject, f"{series.name}: mixed slice orientations (ImageOrientationPatient): {odd}", where)
    spacings = [_floats(ds, "PixelSpacing") for ds in headers]
    if not _same(spacings, 1e-4) or len(spacings[0]) != 2:
        odd = _odd_ones_out(series, spacings, 1e-4)
        raise SubjectError(subject, f"{series.name}: mixed or missing pixel spacing (PixelSpacing): {odd}", where)
    sizes = [(float(ds.Rows), float(ds.Columns)) for ds in headers]
    if len(set(sizes)) != 1:
        odd = _odd_ones_out(series, sizes, 1.0)
        raise SubjectError(subject, f"{series.name}: mixed image sizes (Rows, Columns): {odd}", where)
    missing = [f.name for f, ds in zip(series.files, headers) if _floats(ds, "ImagePositionPatient") is None]
    if missing:
        listed = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise SubjectError(subject, f"{series.name}: {len(missing)} file(s) lack ImagePositionPatient: {listed}", where)


def plan_geometry(series: SeriesInfo, subject: str | None) -> SliceGeometry:
    """Check a series' slice geometry and sort its slices along the normal.

    Raises :class:`SubjectError` for mixed orientations, pixel spacings or sizes, stacked
    slices with different pixel data, all slices at one position, too few positions, or a
    gap larger than ``MAX_GAP_RATIO`` times the median step.
    """
    _check_uniform(series, subject)
    first = series.headers[0]
    iop = np.asarray(_floats(first, "ImageOrientationPatient"))
    row_dir, col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    positions = np.array([_floats(ds, "ImagePositionPatient") for ds in series.headers])
    depths = positions @ normal
    if len(depths) > 1 and np.ptp(depths) < DUPLICATE_TOL_MM:
        raise SubjectError(
            subject,
            f"series {series.label} is not a volume: all {len(depths)} slices lie at one position "
            f"({depths[0]:.2f} mm along the slice normal)",
            series.files[0].parent,
        )
    order = np.argsort(depths, kind="stable")
    keep, dropped = _drop_duplicates(series, order, depths, subject)
    spacing = _floats(first, "PixelSpacing")
    geometry = SliceGeometry(
        files=[series.files[k] for k in keep],
        headers=[series.headers[k] for k in keep],
        row_dir=row_dir,
        col_dir=col_dir,
        normal=normal,
        dx=float(spacing[1]),
        dy=float(spacing[0]),
        rows=int(first.Rows),
        cols=int(first.Columns),
        positions=positions[keep],
        depths=depths[keep],
        duplicates_dropped=dropped,
    )
    _check_steps(geometry, series, subject)
    return geometry


def _drop_duplicates(
    series: SeriesInfo, order: np.ndarray, depths: np.ndarray, subject: str | None
) -> tuple[list[int], int]:
    """Indices (in depth order) with duplicate positions removed, and how many were.

    A second file at the same depth is dropped when it is the same SOP instance or has
    identical pixel data; otherwise the series mixes acquisitions and is refused.
    """
    keep: list[int] = []
    dropped = 0
    for k in order:
        if keep and abs(depths[k] - depths[keep[-1]]) < DUPLICATE_TOL_MM:
            if _same_slice(series, keep[-1], int(k), subject):
                dropped += 1
                continue
            a, b = series.files[keep[-1]].name, series.files[k].name
            raise SubjectError(
                subject,
                f"{series.name}: {a} and {b} lie at the same position "
                f"({depths[k]:.2f} mm along the normal) with different pixel data; "
                "several acquisitions in one series?",
                series.files[k].parent,
            )
        keep.append(int(k))
    if dropped:
        log.warning("series %s: dropped %d duplicate slice(s)", series.label, dropped)
    return keep, dropped


def _same_slice(series: SeriesInfo, a: int, b: int, subject: str | None) -> bool:
    """True when files a and b are the same SOP instance or hold identical pixels."""
    uid_a, uid_b = _text(series.headers[a], "SOPInstanceUID"), _text(series.headers[b], "SOPInstanceUID")
    if uid_a and uid_a == uid_b:
        return True
    pixels_a = _hu_slice(_read_full(series.files[a], subject), series.files[a], subject)
    pixels_b = _hu_slice(_read_full(series.files[b], subject), series.files[b], subject)
    return bool(np.array_equal(pixels_a, pixels_b))


def _check_steps(geometry: SliceGeometry, series: SeriesInfo, subject: str | None) -> None:
    """Refuse too few positions, or gaps too large to interpolate."""
    where = series.files[0].parent
    n = len(geometry.depths)
    if n < MIN_POSITIONS:
        raise SubjectError(subject, f"series {series.label} has only {n} distinct slice position(s)", where)
    steps, median = geometry.steps, geometry.median_step
    worst = int(np.argmax(steps))
    if steps[worst] > MAX_GAP_RATIO * median * (1 + STEP_TOL_REL) + STEP_TOL_MM:
        n_gaps = int(np.sum(steps > MAX_GAP_RATIO * median * (1 + STEP_TOL_REL) + STEP_TOL_MM))
        others = f" ({n_gaps - 1} more such gap(s))" if n_gaps > 1 else ""
        missing = max(1, round(steps[worst] / median) - 1)
        raise SubjectError(
            subject,
            f"{series.name}: gap of {steps[worst]:.2f} mm between {geometry.files[worst].name} and "
            f"{geometry.files[worst + 1].name} is more than {MAX_GAP_RATIO:g} x the median slice step "
            f"({median:.2f} mm); slices missing? (about {missing}){others}",
            where,
        )


# ------------------------------------------------------------------------ pixel data


def _check_pixel_data(ds: Dataset, path: Path, subject: str | None) -> None:
    """Refuse a file without pixel data, or with less than its header promises."""
    if "PixelData" not in ds:
        raise SubjectError(subject, f"{path.name} has no (complete) pixel data; file truncated?", path)
    syntax = _transfer_syntax(ds)
    if syntax is None:
        raise SubjectError(subject, f"{path.name}: no Transfer Syntax UID, pixel data cannot be decoded", path)
    if syntax.is_compressed:
        return  # the decoder checks compressed streams
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
    expected *= (int(ds.BitsAllocated) + 7) // 8
    have = len(ds.PixelData)
    if have < expected:
        raise SubjectError(subject, f"{path.name}: pixel data truncated ({have} of {expected} bytes)", path)


def _hu_slice(ds: Dataset, path: Path, subject: str | None) -> np.ndarray:
    """Decode one slice (any transfer syntax pydicom's plugins handle) to float HU."""
    _check_pixel_data(ds, path, subject)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise SubjectError(
            subject, f"cannot decode {_syntax_name(ds)} pixel data of {path.name}: {_one_line(exc)}", path
        ) from exc
    _check_stored_range(ds, pixels, path, subject)
    return pydicom.pixels.apply_modality_lut(pixels, ds).astype(np.float64)


def _check_stored_range(ds: Dataset, pixels: np.ndarray, path: Path, subject: str | None) -> None:
    """Refuse decoded values that BitsStored cannot hold: a corrupt compressed stream
    (JPEG-LS, JPEG 2000) can decode without an error, to garbage. Uncompressed data is
    left alone (some scanners store a few values beyond BitsStored; the bytes are as sent)."""
    syntax = _transfer_syntax(ds)
    if syntax is None or not syntax.is_compressed:
        return
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if pixels.size and (int(pixels.min()) < low or int(pixels.max()) > high):
        raise SubjectError(
            subject,
            f"pixel data of {path.name} ({_syntax_name(ds)}) decodes to values "
            f"{int(pixels.min())}..{int(pixels.max())}, "
            f"outside what BitsStored (0028,0101) = {bits} allows ({low}..{high}): corrupt pixel data?",
            path,
        )


def _read_datasets(geometry: SliceGeometry, subject: str | None) -> list[Dataset]:
    """Read the full datasets (with pixel data) of the slices we will use, decode each
    (pydicom keeps the array, so dicom2nifti does not decode again) and check its range."""
    datasets = []
    for path in geometry.files:
        ds = _read_full(path, subject)
        _check_pixel_data(ds, path, subject)
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            cause = f"cannot decode {_syntax_name(ds)} pixel data of {path.name}: {_one_line(exc)}"
            raise SubjectError(subject, cause, path) from exc
        _check_stored_range(ds, pixels, path, subject)
        datasets.append(ds)
    return datasets


def _read_full(path: Path, subject: str | None) -> Dataset:
    """Read a whole file, pixel data included; a failure names the file."""
    try:
        return pydicom.dcmread(path)
    except Exception as exc:
        raise SubjectError(subject, f"corrupt DICOM file {path.name}: {_one_line(exc)}", path) from exc


def _to_int16(values: np.ndarray) -> np.ndarray:
    """Round and clip HU to the int16 range."""
    return np.clip(np.rint(values), INT16_MIN, INT16_MAX).astype(np.int16)


# ---------------------------------------------------------------- dicom2nifti path


class _Dicom2niftiMismatch(Exception):
    """dicom2nifti's result disagrees with the headers; use the fallback."""


_D2N_SETTINGS = {
    "validate_slicecount": False,  # we checked the positions ourselves
    "validate_orientation": True,
    "validate_orthogonal": False,  # tilt is resampled, not refused
    "validate_slice_increment": False,  # uneven steps were vetted by _check_steps
    "validate_instance_number": False,
    "validate_multiframe_implicit": True,
    "pydicom_read_force": False,
    "resample": True,
    "resample_padding": PADDING_HU,
    "resample_spline_interpolation_order": 1,
}


@contextlib.contextmanager
def _dicom2nifti_settings() -> Iterator[None]:
    """Set dicom2nifti's module-global settings for one call, then restore them.

    dicom2nifti keeps its options in module globals; setting them every time (and putting
    the old values back) means no state leaks between calls or into other users.
    """
    import dicom2nifti.settings as settings

    saved = {name: getattr(settings, name) for name in _D2N_SETTINGS}
    d2n_log = logging.getLogger("dicom2nifti")
    saved_level = d2n_log.level
    try:
        for name, value in _D2N_SETTINGS.items():
            setattr(settings, name, value)
        d2n_log.setLevel(max(logging.WARNING, saved_level))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        for name, value in saved.items():
            setattr(settings, name, value)
        d2n_log.setLevel(saved_level)


def _convert_dicom2nifti(geometry: SliceGeometry, subject: str | None) -> sitk.Image:
    """Convert with dicom2nifti; check and crop its result against the headers."""
    from dicom2nifti.convert_dicom import dicom_array_to_nifti

    datasets = _read_datasets(geometry, subject)
    with _dicom2nifti_settings(), tempfile.TemporaryDirectory(prefix="lungclam-d2n-") as tmp:
        # dicom2nifti's resampler writes to this path whatever we ask; uncompressed is faster
        result = dicom_array_to_nifti(datasets, str(Path(tmp) / "series.nii"), reorient_nifti=True)
        image = _nibabel_to_sitk(result["NII"])
    image = _crop_to_slab(image, geometry)
    if not geometry.needs_resampling:
        _spot_check(image, geometry, datasets, subject)
    return image


def _nibabel_to_sitk(nii: Any) -> sitk.Image:
    """A nibabel image (RAS affine, array x,y,z) as an int16 SimpleITK image in LPS.

    LPS = diag(-1, -1, 1) RAS; the affine's columns give spacing and direction. A sheared
    affine (dicom2nifti left a tilt uncorrected) cannot be a SimpleITK image: refused.
    """
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(nii.affine, dtype=float)
    data = np.asanyarray(nii.dataobj)
    if data.ndim != 3:
        raise _Dicom2niftiMismatch(f"dicom2nifti returned a {data.ndim}-D image")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise _Dicom2niftiMismatch("dicom2nifti's affine is not orthogonal (tilt left in?)")
    image = sitk.GetImageFromArray(_to_int16(np.transpose(data, (2, 1, 0))))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    return image


def _continuous_index(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (m, 3) of physical points (m, 3)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    scale = direction * np.asarray(image.GetSpacing())
    return np.linalg.solve(scale, (points - np.asarray(image.GetOrigin())).T).T


def _crop_to_slab(image: sitk.Image, geometry: SliceGeometry) -> sitk.Image:
    """Check that ``image`` holds the whole acquired slab; crop the padding around it.

    dicom2nifti's resampled grids can carry an extra row or slice of pure padding (it
    rounds the extent up and adds one); we keep exactly the voxels whose centres lie
    within the box spanned by the acquired pixel centres.
    """
    index = _continuous_index(image, geometry.corner_points())
    size = np.asarray(image.GetSize())
    lo, hi = index.min(axis=0), index.max(axis=0)
    if np.any(lo < -0.5 - 1e-3) or np.any(hi > size - 0.5 + 1e-3):
        raise _Dicom2niftiMismatch(f"dicom2nifti's grid misses part of the slab (index {lo} .. {hi}, size {size})")
    _check_axes(image, geometry)
    start = np.maximum(np.ceil(lo - 1e-2), 0).astype(int)
    stop = np.minimum(np.floor(hi + 1e-2), size - 1).astype(int)
    if np.any(start > 0) or np.any(stop < size - 1):
        x, y, z = (slice(int(a), int(b) + 1) for a, b in zip(start, stop))
        image = image[x, y, z]  # slicing a SimpleITK image keeps its physical placement
    return image


def _check_axes(image: sitk.Image, geometry: SliceGeometry) -> None:
    """The image axes must be the slice row, column and normal, at the header spacing."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    expected = {0: (geometry.row_dir, geometry.dx), 1: (geometry.col_dir, geometry.dy), 2: (geometry.normal, None)}
    for axis in range(3):
        matches = [k for k, (vec, _) in expected.items() if abs(float(direction[:, axis] @ vec)) > 0.999]
        if len(matches) != 1:
            raise _Dicom2niftiMismatch(f"dicom2nifti's axis {axis} is not along the slice row, column or normal")
        wanted = expected[matches[0]][1]
        if wanted is not None and abs(spacing[axis] - wanted) > 1e-3 * wanted:
            raise _Dicom2niftiMismatch(f"dicom2nifti's spacing {spacing[axis]:.4f} != header {wanted:.4f}")


def _spot_check(image: sitk.Image, geometry: SliceGeometry, datasets: list[Dataset], subject: str | None) -> None:
    """Compare a few voxels with the source pixels they came from (no resampling case).

    Catches a flipped or transposed axis that geometry alone would not reveal.
    """
    array = sitk.GetArrayViewFromImage(image)
    rows, cols = geometry.rows, geometry.cols
    picks = np.array([[0, 0], [cols - 1, 0], [0, rows - 1], [cols // 2, rows // 3], [cols // 3, 2 * rows // 3]])
    for k in sorted({0, len(datasets) // 2, len(datasets) - 1}):
        source = _to_int16(_hu_slice(datasets[k], geometry.files[k], subject))
        index = np.rint(_continuous_index(image, geometry.pixel_points(k, picks))).astype(int)
        got = array[index[:, 2], index[:, 1], index[:, 0]]
        want = source[picks[:, 1], picks[:, 0]]
        if not np.array_equal(got, want):
            raise _Dicom2niftiMismatch(f"dicom2nifti's voxels differ from {geometry.files[k].name}")


# ------------------------------------------------------------------ SimpleITK path


def _read_block(geometry: SliceGeometry, subject: str | None) -> np.ndarray:
    """Pixel data of the sorted slices as float32 HU, (n, rows, cols), via SimpleITK/GDCM.

    The series reader applies the rescale slope and intercept. If it fails, each file is
    read on its own to name the one that breaks.
    """
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in geometry.files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # it warns about the spacing we handle
    try:
        block = sitk.GetArrayFromImage(reader.Execute())
    except RuntimeError as exc:
        _name_unreadable(geometry, subject)
        cause = f"SimpleITK cannot read the series: {_one_line(exc)}"
        raise SubjectError(subject, cause, geometry.files[0].parent) from exc
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    if block.shape != (len(geometry.files), geometry.rows, geometry.cols):
        raise SubjectError(
            subject,
            f"SimpleITK read a block of {block.shape}, the headers say "
            f"{(len(geometry.files), geometry.rows, geometry.cols)}",
            geometry.files[0].parent,
        )
    return block


def _name_unreadable(geometry: SliceGeometry, subject: str | None) -> None:
    """Raise naming the first file SimpleITK (GDCM) cannot read on its own, with its
    transfer syntax; when GDCM reads each file alone, the first one pydicom cannot decode."""
    for path, ds in zip(geometry.files, geometry.headers):
        try:
            sitk.ReadImage(str(path))
        except RuntimeError as exc:
            cause = f"cannot decode {_syntax_name(ds)} pixel data of {path.name}: {_one_line(exc)}"
            raise SubjectError(subject, cause, path) from exc
    for path in geometry.files:
        _hu_slice(_read_full(path, subject), path, subject)


def _convert_simpleitk(geometry: SliceGeometry, subject: str | None) -> sitk.Image:
    """Convert with SimpleITK's series reader and our own geometry (and resampler)."""
    for path, ds in zip(geometry.files, geometry.headers):
        syntax = _transfer_syntax(ds)
        if syntax is None or not syntax.is_compressed:
            # a cheap length check names a truncated file before GDCM trips over it
            _check_pixel_data(_read_full(path, subject), path, subject)
    block = _read_block(geometry, subject)
    if geometry.needs_resampling:
        return _resample_regular(block, geometry)
    image = sitk.GetImageFromArray(_to_int16(block))
    image.SetSpacing((geometry.dx, geometry.dy, geometry.step))
    image.SetOrigin(tuple(float(v) for v in geometry.positions[0]))
    image.SetDirection(_direction(geometry))
    return image


def _direction(geometry: SliceGeometry) -> tuple[float, ...]:
    """Direction matrix (row-major) with columns row_dir, col_dir, normal."""
    return tuple(float(v) for v in np.column_stack([geometry.row_dir, geometry.col_dir, geometry.normal]).ravel())


def _resample_regular(block: np.ndarray, geometry: SliceGeometry) -> sitk.Image:
    """Resample tilted and/or unevenly spaced slices onto a regular orthogonal grid.

    Output axes: slice row, slice column, slice normal; in-plane spacing as acquired;
    slice spacing ``geometry.step``. Each source slice is first shifted (bilinear) so its
    origin sits on the common in-plane grid, which undoes the shear a tilted gantry
    leaves; output slices are then blended linearly from the two source slices around
    their depth. Everything outside the acquired slab is ``PADDING_HU``.
    """
    offsets = geometry.inplane_offsets / np.array([geometry.dx, geometry.dy])  # in pixels
    low = offsets.min(axis=0)
    shifts = offsets - low  # where each slice's pixel (0, 0) lands on the common grid
    nx = geometry.cols + int(math.floor(float(shifts[:, 0].max()) + 1e-3))
    ny = geometry.rows + int(math.floor(float(shifts[:, 1].max()) + 1e-3))
    depths, step = geometry.depths - geometry.depths[0], geometry.step
    nz = int(math.floor(depths[-1] / step + 1e-3)) + 1
    out = np.empty((nz, ny, nx), dtype=np.int16)
    placed: dict[int, np.ndarray] = {}
    for z in range(nz):
        t = z * step
        k = int(np.clip(np.searchsorted(depths, t, side="right") - 1, 0, len(depths) - 2))
        w = float(np.clip((t - depths[k]) / (depths[k + 1] - depths[k]), 0.0, 1.0))
        for j in (k, k + 1):
            if j not in placed:
                placed[j] = _place_slice(block[j], shifts[j], (ny, nx))
        for j in list(placed):
            if j < k:
                del placed[j]  # depths only grow, so earlier slices are done
        out[z] = _to_int16((1.0 - w) * placed[k] + w * placed[k + 1])
    image = sitk.GetImageFromArray(out)
    image.SetSpacing((geometry.dx, geometry.dy, step))
    origin = geometry.positions[0] + low[0] * geometry.dx * geometry.row_dir
    origin = origin + low[1] * geometry.dy * geometry.col_dir
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(_direction(geometry))
    return image


def _place_slice(pixels: np.ndarray, shift: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Put one slice on the common in-plane grid, shifted by ``shift`` = (x, y) pixels."""
    canvas = np.full(shape, PADDING_HU, dtype=np.float32)
    whole = np.floor(shift + 1e-6).astype(int)
    frac = shift - whole
    rows, cols = pixels.shape
    canvas[whole[1] : whole[1] + rows, whole[0] : whole[0] + cols] = pixels
    if np.any(np.abs(frac) > 1e-6):
        canvas = ndimage.shift(canvas, (frac[1], frac[0]), order=1, mode="constant", cval=PADDING_HU)
    return canvas


# ----------------------------------------------------------------------- HU checks


def check_rescale(geometry: SliceGeometry, series: SeriesInfo, subject: str | None) -> None:
    """Refuse CT slices whose stored values would not become HU.

    Each slice needs RescaleSlope (0028,1053) and RescaleIntercept (0028,1052), unless it
    carries a Modality LUT Sequence (0028,3000); a slope of 0 (or not a finite number)
    would make every voxel the intercept.
    """
    where = geometry.files[0].parent
    lacking, zero = [], []
    for path, ds in zip(geometry.files, geometry.headers):
        if "ModalityLUTSequence" in ds:
            continue
        slope, intercept = _floats(ds, "RescaleSlope"), _floats(ds, "RescaleIntercept")
        if slope is None or intercept is None:
            lacking.append(path.name)
        elif slope[0] == 0 or not math.isfinite(slope[0]) or not math.isfinite(intercept[0]):
            zero.append(f"{path.name} (slope {slope[0]:g}, intercept {intercept[0]:g})")
    if lacking:
        raise SubjectError(
            subject,
            f"{series.name}: {len(lacking)} of {len(geometry.files)} CT file(s) lack RescaleSlope (0028,1053) or "
            f"RescaleIntercept (0028,1052) and have no Modality LUT, so stored values are not HU: "
            + ", ".join(lacking[:5])
            + (" ..." if len(lacking) > 5 else ""),
            where,
        )
    if zero:
        raise SubjectError(
            subject,
            f"{series.name}: RescaleSlope (0028,1053) of 0 or not a number in {len(zero)} file(s), every voxel "
            "would be the intercept: " + ", ".join(zero[:5]) + (" ..." if len(zero) > 5 else ""),
            where,
        )


def _files_near(image: sitk.Image, values: np.ndarray, series: SeriesInfo) -> str:
    """The source files nearest (along the slice normal) to the clipped voxels."""
    iop = _floats(series.headers[0], "ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return "?"
    normal = np.cross(iop[:3], iop[3:])
    depths = np.array([np.dot(_floats(ds, "ImagePositionPatient") or (np.nan,) * 3, normal) for ds in series.headers])
    names = []
    for z, y, x in np.argwhere(values == INT16_MAX)[:: max(1, int(np.count_nonzero(values == INT16_MAX)) // 200)]:
        depth = float(np.dot(image.TransformIndexToPhysicalPoint((int(x), int(y), int(z))), normal))
        name = series.files[int(np.nanargmin(np.abs(depths - depth)))].name
        if name not in names:
            names.append(name)
    return ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")


def check_hu(image: sitk.Image, series: SeriesInfo, subject: str | None) -> None:
    """Refuse a volume that does not look like CT in HU.

    A CT of a body holds both air (about -1000 HU, outside the body and in the lungs) and
    soft tissue (about 0 to 100 HU). We require at least ``MIN_AIR_FRACTION`` of the
    voxels above -1500 HU (scanner padding, -2048 or -3024, left out) in ``AIR_HU`` and
    ``MIN_TISSUE_FRACTION`` in ``TISSUE_HU``, and no voxel clipped at the int16 maximum.
    The message names the rescale tags of the first slice, the usual cause.
    """
    values = sitk.GetArrayViewFromImage(image)
    first = series.headers[0]
    tags = (
        f"RescaleSlope {_text(first, 'RescaleSlope') or 'missing'}, "
        f"RescaleIntercept {_text(first, 'RescaleIntercept') or 'missing'} in {series.files[0].name}"
    )
    where = series.files[0].parent
    clipped = int(np.count_nonzero(values == INT16_MAX))
    if clipped:
        raise SubjectError(
            subject,
            f"{clipped} voxel(s) clipped at {INT16_MAX} HU, in the slice(s) of {_files_near(image, values, series)}: "
            f"values beyond the int16 range after rescaling ({tags}), or corrupt pixel data",
            where,
        )
    body = values[values > -1500]
    air = float(np.mean((body >= AIR_HU[0]) & (body <= AIR_HU[1]))) if body.size else 0.0
    tissue = float(np.mean((body >= TISSUE_HU[0]) & (body <= TISSUE_HU[1]))) if body.size else 0.0
    if air < MIN_AIR_FRACTION or tissue < MIN_TISSUE_FRACTION:
        median = f"{float(np.median(body)):.0f}" if body.size else "n/a"
        raise SubjectError(
            subject,
            f"the converted volume does not look like CT in HU: {air:.1%} of voxels near air "
            f"({AIR_HU[0]:g}..{AIR_HU[1]:g}), {tissue:.1%} near soft tissue ({TISSUE_HU[0]:g}..{TISSUE_HU[1]:g}), "
            f"median {median} (range {int(values.min())}..{int(values.max())}); check the rescale tags ({tags})",
            where,
        )


# -------------------------------------------------------------------------- public


def convert_series(series: SeriesInfo, subject: str | None, method: str = "auto") -> sitk.Image:
    """Convert one series to an int16 HU volume in LPS orientation (``sitk.DICOMOrient``).

    ``method``: "auto" (dicom2nifti, then SimpleITK if dicom2nifti fails or disagrees
    with the headers), "dicom2nifti" or "simpleitk" (no fallback). Fills
    ``series.conversion``. Tilted images keep axes rotated by the tilt, reoriented to
    the closest LPS order. Every failure is a :class:`SubjectError`.
    """
    if method not in ("auto", "dicom2nifti", "simpleitk"):
        raise ValueError(f"unknown conversion method {method!r}")
    started = time.perf_counter()
    geometry = plan_geometry(series, subject)
    if series.modality == "CT":
        check_rescale(geometry, series, subject)
    log.info(
        "series %s: %d slices, step %.3f mm (%s), tilt %.2f deg",
        series.label,
        len(geometry.files),
        geometry.median_step,
        "uneven" if geometry.uneven else "even",
        geometry.tilt_deg if geometry.tilted else 0.0,
    )
    image, path, reason = _convert_with(method, geometry, series, subject)
    image = sitk.DICOMOrient(image, "LPS")
    steps = geometry.steps
    series.conversion = ConversionInfo(
        path=path,
        fallback_reason=reason,
        n_slices=len(geometry.files),
        duplicates_dropped=geometry.duplicates_dropped,
        step_mm=_normal_spacing(image, geometry),
        median_step_mm=geometry.median_step,
        min_step_mm=float(steps.min()),
        max_step_mm=float(steps.max()),
        uneven_steps=geometry.uneven,
        tilt_deg=geometry.tilt_deg if geometry.tilted else 0.0,
        resampled=geometry.needs_resampling,
        seconds=time.perf_counter() - started,
    )
    log.info(
        "converted with %s in %.1f s: size %s, spacing %s",
        path,
        series.conversion.seconds,
        image.GetSize(),
        tuple(round(s, 4) for s in image.GetSpacing()),
    )
    return image


def _convert_with(
    method: str, geometry: SliceGeometry, series: SeriesInfo, subject: str | None
) -> tuple[sitk.Image, str, str | None]:
    """Run the chosen converter; in "auto" mode fall back to SimpleITK on any failure."""
    if method == "simpleitk":
        return _convert_simpleitk(geometry, subject), "simpleitk", None
    try:
        return _convert_dicom2nifti(geometry, subject), "dicom2nifti", None
    except SubjectError:
        raise  # a problem with the data itself, named; the fallback would hit it too
    except Exception as exc:  # dicom2nifti raises many kinds; all mean "try the other way"
        if method == "dicom2nifti":
            cause = f"dicom2nifti failed on series {series.label}: {_one_line(exc)}"
            raise SubjectError(subject, cause, geometry.files[0].parent) from exc
        reason = f"{type(exc).__name__}: {_one_line(exc)}"
        log.warning("dicom2nifti failed (%s); falling back to SimpleITK", reason)
        return _convert_simpleitk(geometry, subject), "simpleitk", reason


def _normal_spacing(image: sitk.Image, geometry: SliceGeometry) -> float:
    """Spacing of the image axis that runs along the slice normal."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction.T @ geometry.normal)))
    return float(image.GetSpacing()[axis])


def _json_value(value: Any) -> Any:
    """A header value in a JSON-able form (numbers as numbers, multi-values as lists)."""
    if value is None:
        return None
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (pydicom.valuerep.DSfloat, pydicom.valuerep.DSdecimal, float)):
        return float(value)
    if isinstance(value, (pydicom.valuerep.IS, int)):
        return int(value)
    return str(value).strip()


# Header fields copied to the sidecar. An allow-list on purpose: nothing that names or
# dates the patient or the visit (no PatientName/ID/BirthDate, AccessionNumber,
# InstitutionName, physicians, Study/Series/Acquisition dates) can slip through.
SIDECAR_FIELDS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "ConvolutionKernel",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "ImageType",
    "BodyPartExamined",
    "PatientPosition",
    "SliceThickness",
    "PixelSpacing",
    "KVP",
    "GantryDetectorTilt",
    "ContrastBolusAgent",
    "RescaleSlope",
    "RescaleIntercept",
)


def sidecar(series: SeriesInfo, image: sitk.Image) -> dict[str, Any]:
    """JSON-able facts about the series and the converted image; nothing identifying.

    Geometry: ``spacing_mm``/``size``/``origin_mm``/``direction`` of ``image`` (LPS).
    Conversion: path used, slice steps (mm), measured tilt (degrees), resampling.
    """
    first = series.headers[0]
    out: dict[str, Any] = {}
    for keyword in SIDECAR_FIELDS:
        if keyword in first:
            out[keyword] = _json_value(first.get(keyword))
    out["TransferSyntaxUID"] = str(_transfer_syntax(first) or "")
    out["n_files"] = series.n_files
    out["image"] = {
        "spacing_mm": list(image.GetSpacing()),
        "size": list(image.GetSize()),
        "origin_mm": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "space": "LPS",
    }
    if series.conversion is not None:
        out["conversion"] = {k: v for k, v in vars(series.conversion).items()}
    out["software"] = {
        "lungclam": __version__,
        "dicom2nifti": _version("dicom2nifti"),
        "SimpleITK": sitk.Version.VersionString(),
    }
    return out


def _version(package: str) -> str | None:
    """Installed version of a package, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _write_json(data: dict[str, Any], path: Path) -> None:
    """Write JSON atomically (temporary name in the same folder, then rename)."""
    with atomic_path(path) as tmp, tmp.open("w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def convert_subject(
    folder: Path,
    subject: str,
    out_nifti: Path,
    out_json: Path,
    method: str = "auto",
    patient_id: str | None = None,
    study_uid: str | None = None,
) -> dict[str, Any]:
    """Find, choose and convert the CT of one subject; write the NIfTI and JSON sidecar.

    ``patient_id``/``study_uid`` (the sheet's optional columns) pick one patient or study
    in a folder that holds several (see :func:`one_patient_and_study`). The volume must
    pass :func:`check_hu` before anything is written. Both files are written atomically.
    Returns the sidecar. Every input problem raises a :class:`SubjectError` naming the
    subject, the cause and the file or folder.
    """
    log.info("subject %s: reading DICOM headers under %s", subject, folder)
    series = find_series(Path(folder), subject)
    series = one_patient_and_study(series, subject, patient_id, study_uid)
    chosen = choose_ct_series(series, subject)
    image = convert_series(chosen, subject, method=method)
    check_hu(image, chosen, subject)
    meta = sidecar(chosen, image)
    meta["series_found"] = len(series)
    write_image(image, out_nifti)
    _write_json(meta, Path(out_json))
    log.info("subject %s: wrote %s and %s", subject, out_nifti, out_json)
    return meta
