"""DICOM intake never loses a slice (issue 15): every file accounted for, gaps refused,
filesystem faults per subject, HU sanity, and causes that name the file and the tag.

Each case copies eight consecutive slices (by position) of a real chest CT from
../shared/data into tmp_path and damages the copy; nothing is written under /work/shared.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from lungclam import dicom
from lungclam.dicom_files import list_dicom_folder, snakemake_inputs
from lungclam.errors import SubjectError
from lungclam.failures import cause_from_log

pytestmark = pytest.mark.realdata

SERIES = (
    "real-ct/lung-pet-ct-dx/Lung_Dx-A0002/04-25-2007-NA-ThoraxAThoraxRoutine Adult-34834/"
    "3.000000-ThoraxRoutine  8.0.0  B40f-10983"
)
OTHER_SERIES = SERIES.replace("3.000000-ThoraxRoutine  8.0.0  B40f-10983", "2.000000-ThoraxRoutine  8.0.0  B70f-62919")
N_SLICES = 8


def copy_slices(shared_data: Path, dest: Path, series: str = SERIES, n: int = N_SLICES) -> Path:
    """Copy ``n`` consecutive slices (1-01.dcm ... are in position order, 8 mm apart)."""
    dest.mkdir(parents=True)
    for path in sorted((shared_data / series).iterdir())[:n]:
        shutil.copy(path, dest / path.name)
    return dest


@pytest.fixture()
def ct(shared_data: Path, tmp_path: Path) -> Path:
    return copy_slices(shared_data, tmp_path / "ct")


def convert(folder: Path, **kwargs) -> dict:
    """convert_subject into folder/../out; on failure, assert nothing was written."""
    out = folder.parent / "out"
    try:
        return dicom.convert_subject(folder, "s1", out / "s1.nii.gz", out / "s1.json", **kwargs)
    except SubjectError:
        assert not out.exists() or not any(out.iterdir()), "a failed conversion left files"
        raise


def rewrite(folder: Path, edit, names: list[str] | None = None) -> None:
    """Apply ``edit(ds)`` to the named files (default: all) and save them in place."""
    for path in sorted(folder.iterdir()):
        if names is None or path.name in names:
            ds = pydicom.dcmread(path)
            edit(ds)
            ds.save_as(path)


def test_intact_copy_converts(ct):
    meta = convert(ct)
    assert meta["image"]["size"] == [512, 512, N_SLICES] and meta["n_files"] == N_SLICES


# -------------------------------------------------------- every file accounted for


def _zero(data: bytes) -> bytes:
    return b""


def _first_100(data: bytes) -> bytes:
    return data[:100]


def _overwrite_preamble(data: bytes) -> bytes:
    return bytes(np.random.default_rng(0).integers(0, 256, 260, dtype=np.uint8)) + data[260:]


def _overwrite_meta(data: bytes) -> bytes:
    return data[:132] + bytes(np.random.default_rng(1).integers(0, 256, 260, dtype=np.uint8)) + data[392:]


def _overwrite_elements(data: bytes) -> bytes:
    return data[:400] + b"\xff" * 260 + data[660:]


@pytest.mark.parametrize(
    "damage, cause",
    [
        (_zero, r"1-04\.dcm is not a readable DICOM file \(0 bytes, no 'DICM' preamble"),
        (_first_100, r"1-04\.dcm is not a readable DICOM file \(100 bytes"),
        (_overwrite_preamble, r"1-04\.dcm is not a readable DICOM file \(\d+ bytes, no 'DICM'"),
        (_overwrite_meta, r"corrupt DICOM header in 1-04\.dcm: no TransferSyntaxUID"),
        (_overwrite_elements, r"corrupt DICOM header in 1-04\.dcm: elements out of order"),
    ],
)
def test_damaged_mid_series_file_fails_naming_it(ct, damage, cause):
    path = ct / "1-04.dcm"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SubjectError, match=cause) as err:
        convert(ct)
    assert err.value.path == str(path)


def test_damaged_last_slice_fails_too(ct):
    """The last slice by position: skipping it would only shorten the volume, silently."""
    (ct / "1-08.dcm").write_bytes((ct / "1-08.dcm").read_bytes()[:100])
    with pytest.raises(SubjectError, match=r"1-08\.dcm is not a readable DICOM file"):
        convert(ct)


def test_clearly_non_dicom_files_are_skipped(ct):
    (ct / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 200)
    (ct / "notes.txt").write_text("exported by PACS")
    (ct / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 300)
    series = dicom.find_series(ct, "s1")
    assert series.n_non_dicom == 3 and sorted(p.name for p in series.skipped) == [
        ".DS_Store",
        "notes.txt",
        "preview.png",
    ]
    assert convert(ct)["image"]["size"][2] == N_SLICES


@pytest.mark.parametrize("name", ["VERSION", "IM000123.ima", "1.2.840.113619.2.55.3"])
def test_dicom_looking_name_without_preamble_fails(ct, name):
    (ct / name).write_text("not an image after all")
    with pytest.raises(SubjectError, match=rf"{name} is not a readable DICOM file"):
        dicom.find_series(ct, "s1")


# ---------------------------------------------------------------------- gaps


def test_one_missing_slice_fails_naming_the_neighbours(ct):
    (ct / "1-04.dcm").unlink()
    with pytest.raises(SubjectError, match=r"gap of 16\.00 mm between 1-05\.dcm and 1-03\.dcm .*8\.00 mm.*missing"):
        convert(ct)


def test_position_jitter_still_converts(ct):
    """0.15 mm (2 % of the 8 mm step) off: jitter, resampled, not a gap."""

    def nudge(ds):
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 0.15]

    rewrite(ct, nudge, ["1-04.dcm"])
    meta = convert(ct)
    assert meta["conversion"]["uneven_steps"] and meta["image"]["size"][2] == N_SLICES


# ------------------------------------------------------------- filesystem faults


@pytest.mark.parametrize(
    "make, cause",
    [
        (
            lambda d: (d / "broken.dcm").symlink_to("/nonexistent/f.dcm"),
            r"broken\.dcm: broken symbolic link \(broken\.dcm -> /nonexistent/f\.dcm",
        ),
        (lambda d: (d / "loop.dcm").symlink_to(d / "loop.dcm"), r"loop\.dcm: symbolic link loop"),
        (lambda d: (d / "up").symlink_to(d), r"up: symbolic link loop \(up leads back to a folder above it\)"),
        (lambda d: os.mkfifo(d / "pipe"), r"pipe: not a regular file"),
    ],
)
def test_filesystem_faults_fail_the_subject_not_the_listing(ct, make, cause):
    make(ct)
    inputs = snakemake_inputs(ct)  # what the workflow's input function gives Snakemake
    assert sorted(Path(p).name for p in inputs) == [f"1-0{k}.dcm" for k in range(1, N_SLICES + 1)]
    assert all(os.stat(p) for p in inputs)
    with pytest.raises(SubjectError, match=cause):
        convert(ct)


def test_symlinked_files_and_folders_are_followed(ct, tmp_path):
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "series").symlink_to(ct)
    assert len(list_dicom_folder(linked).files) == N_SLICES
    assert convert(linked)["image"]["size"][2] == N_SLICES


def test_vanished_folder_fails_only_at_convert(tmp_path):
    gone = tmp_path / "gone"
    assert snakemake_inputs(gone) == []  # no input: the job runs and says why
    with pytest.raises(SubjectError, match=r"DICOM folder: folder does not exist \(vanished"):
        convert(gone)
    (tmp_path / "empty").mkdir()
    assert snakemake_inputs(tmp_path / "empty") == [str(tmp_path / "empty")]


# ---------------------------------------------------------------- HU sanity


@pytest.mark.parametrize(
    "edit, cause",
    [
        (lambda ds: setattr(ds, "RescaleSlope", 0), r"RescaleSlope \(0028,1053\) of 0 .* 8 file\(s\).*1-0\d\.dcm"),
        (
            lambda ds: (delattr(ds, "RescaleSlope"), delattr(ds, "RescaleIntercept")),
            r"8 of 8 CT file\(s\) lack RescaleSlope \(0028,1053\) or RescaleIntercept \(0028,1052\)",
        ),
        (lambda ds: setattr(ds, "RescaleSlope", 100), r"voxel\(s\) clipped at 32767 HU.*1-01\.dcm.*RescaleSlope 100"),
        (
            lambda ds: setattr(ds, "RescaleIntercept", 0),
            r"does not look like CT in HU: 0\.0% of voxels near air.*RescaleIntercept 0",
        ),
    ],
    ids=["slope-0", "no-rescale-tags", "slope-100", "intercept-0"],
)
def test_non_hu_values_fail_naming_the_rescale_tags(ct, edit, cause):
    rewrite(ct, edit)
    with pytest.raises(SubjectError, match=cause):
        convert(ct)


def test_one_slice_without_rescale_tags_is_named(ct):
    rewrite(ct, lambda ds: delattr(ds, "RescaleIntercept"), ["1-06.dcm"])
    with pytest.raises(SubjectError, match=r"1 of 8 CT file\(s\) lack .*: 1-06\.dcm \["):
        convert(ct)


def test_modality_lut_sequence_stands_in_for_rescale_tags(ct):
    """A Modality LUT (here the identity minus 1024, as the tags said) makes HU too."""

    def to_lut(ds):
        del ds.RescaleSlope, ds.RescaleIntercept
        item = pydicom.Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.ModalityLUTType = "HU"
        item.add_new(0x00283006, "US", [max(v - 1024, 0) for v in range(4096)])  # LUTData
        ds.ModalityLUTSequence = [item]

    rewrite(ct, to_lut, ["1-01.dcm"])
    # Only one file has the LUT; the others keep their tags: every slice makes HU.
    series = dicom.find_series(ct, "s1")
    geometry = dicom.plan_geometry(series[0], "s1")
    dicom.check_rescale(geometry, series[0], "s1")  # does not raise


# ---------------------------------------------------------- clear causes (item 5)


def test_dicomdir_only_folder_says_so(ct, tmp_path):
    from pydicom.fileset import FileSet

    fileset = FileSet()
    for path in sorted(ct.iterdir())[:3]:
        ds = pydicom.dcmread(path)
        ds.StudyID = ds.StudyID or "1"  # the DICOMDIR's STUDY record needs one
        fileset.add(ds)
    media = tmp_path / "media"
    fileset.write(media)
    for path in sorted(media.rglob("*")):
        if path.is_file() and path.name != "DICOMDIR":
            path.unlink()
    with pytest.raises(SubjectError, match=r"no DICOM images: the folder holds only 1 DICOMDIR index file"):
        convert(media)


def test_no_position_in_any_slice_is_said(ct):
    rewrite(ct, lambda ds: delattr(ds, "ImagePositionPatient"))
    with pytest.raises(SubjectError, match=r"no ImagePositionPatient in any of its 8 file\(s\)"):
        convert(ct)


@pytest.mark.parametrize(
    "edit, cause",
    [
        (lambda ds: delattr(ds, "ImagePositionPatient"), r"1 file\(s\) lack ImagePositionPatient: 1-05\.dcm"),
        (
            lambda ds: setattr(ds, "PixelSpacing", [0.7, 0.7]),
            r"mixed or missing pixel spacing \(PixelSpacing\): 1 of 8 file\(s\) differ .*: "
            r"1-05\.dcm \(\[0\.7, 0\.7\]\)",
        ),
        (
            lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.99, -0.141]),
            r"mixed slice orientations \(ImageOrientationPatient\): 1 of 8 file\(s\) differ .*: 1-05\.dcm",
        ),
        (
            lambda ds: (setattr(ds, "Rows", 256), setattr(ds, "PixelData", ds.PixelData[: 256 * 512 * 2])),
            r"mixed image sizes \(Rows, Columns\): 1 of 8 file\(s\) differ .*: 1-05\.dcm \(\[256, 512\]\)",
        ),
    ],
    ids=["no-position", "spacing", "orientation", "size"],
)
def test_one_odd_slice_is_named(ct, edit, cause):
    rewrite(ct, edit, ["1-05.dcm"])
    with pytest.raises(SubjectError, match=cause):
        convert(ct)


@pytest.mark.parametrize("scout_name", ["0000.dcm", "zzzz.dcm"])
@pytest.mark.parametrize("by", ["image_type", "orientation"])
def test_scout_sharing_the_series_uid_is_set_aside_whatever_its_name(ct, scout_name, by):
    ds = pydicom.dcmread(ct / "1-01.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal, as a topogram
    if by == "image_type":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(ct / scout_name)
    series = dicom.find_series(ct, "s1")
    assert [s.n_files for s in series] == [N_SLICES, 1]
    assert series[1].reason_rejected in ("localizer", "not axial (coronal)")
    assert "localizer image(s) in series UID" in series[1].name
    assert convert(ct)["image"]["size"][2] == N_SLICES


@pytest.mark.parametrize("keyword, column", [("PatientID", "patient_id"), ("StudyInstanceUID", "study_uid")])
def test_two_patients_or_studies_fail_with_a_list_unless_one_is_named(shared_data, tmp_path, keyword, column):
    folder = tmp_path / "mixed"
    copy_slices(shared_data, folder / "a")
    copy_slices(shared_data, folder / "b", OTHER_SERIES)
    other = "OTHER-PATIENT" if keyword == "PatientID" else generate_uid()
    rewrite(folder / "b", lambda ds: setattr(ds, keyword, other))
    keep = pydicom.dcmread(folder / "a" / "1-01.dcm").get(keyword)
    mixed = rf"holds 2 different {keyword}s .*the samples sheet's {column} column"
    with pytest.raises(SubjectError, match=mixed) as err:
        convert(folder)
    if keyword == "PatientID":  # identifying: numbered, never shown
        assert "patient 1: series 2 " in str(err.value) and "patient 2: series 3 " in str(err.value)
        assert keep not in str(err.value) and other not in str(err.value)
    else:
        assert f"'{keep}': series 3 " in str(err.value) and f"'{other}': series 2 " in str(err.value)
    meta = convert(folder, **{column: keep})
    assert meta["SeriesNumber"] == 3
    meta = convert(folder, **{column: other})
    assert meta["SeriesNumber"] == 2
    shutil.rmtree(tmp_path / "out")
    with pytest.raises(
        SubjectError,
        match=rf"no series with .*the samples sheet's {column} column gives for "
        rf"{keyword}; the folder holds ",
    ) as err:
        convert(folder, **{column: "nobody"})
    assert (keyword == "PatientID") == ("nobody" not in str(err.value))


def test_corrupt_jpeg_ls_stream_names_the_file(ct):
    """A damaged JPEG-LS stream decodes without an error, to values no 12-bit CT holds."""
    _transcode(ct, "JPEGLSLossless")
    lossless = convert(ct)
    assert lossless["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.80"
    shutil.rmtree(ct.parent / "out")
    path = ct / "1-04.dcm"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 500] = b"\xff" * 500
    path.write_bytes(bytes(data))
    with pytest.raises(
        SubjectError,
        match=r"pixel data of 1-04\.dcm \(JPEG-LS Lossless.*\) decodes to values "
        r".*outside what BitsStored \(0028,0101\) = 12 allows",
    ):
        convert(ct)
    # GDCM (the SimpleITK path) refuses the stream: its message, named and on one line.
    chosen = dicom.choose_ct_series(dicom.find_series(ct, "s1"), "s1")
    with pytest.raises(SubjectError) as err:
        dicom.convert_series(chosen, "s1", method="simpleitk")
    message = str(err.value)  # measured with GDCM 3.2: "...: Failed to change to Implicit Transfer Syntax [...]"
    assert message.startswith(
        "subject 's1': cannot decode JPEG-LS Lossless Image Compression "
        "(1.2.840.10008.1.2.4.80) pixel data of 1-04.dcm: "
    )
    assert message.endswith(f" [{path}]") and "\n" not in message and ".cxx" not in message


def test_multi_line_library_errors_stay_whole_in_the_cause(tmp_path):
    """A library message spanning lines (ITK's do) is not cut off at the first line."""
    log = tmp_path / "convert.log"
    log.write_text(
        "2026-01-01 10:00:00,000 INFO lungclam.convert: reading\n"
        "2026-01-01 10:00:01,000 ERROR lungclam.convert: convert failed: subject 'a': cannot decode "
        "CT1.dcm: Exception thrown in /tmp/SimpleITK-build/ITK/Modules/IO/GDCM/src/\n"
        "itkGDCMImageIO.cxx:359: Failed to change to Implicit Transfer Syntax [dicom/a/CT1.dcm]\n"
    )
    assert cause_from_log(log) == (
        "subject 'a': cannot decode CT1.dcm: Exception thrown in /tmp/SimpleITK-build/ITK/Modules/IO/GDCM/src/ "
        "itkGDCMImageIO.cxx:359: Failed to change to Implicit Transfer Syntax [dicom/a/CT1.dcm]"
    )
    assert "\n" not in dicom._one_line(
        RuntimeError(
            "Exception thrown in SimpleITK ImageSeriesReader_Execute: "
            "/x/itkGDCMImageIO.cxx:359:\nITK ERROR: GDCMImageIO(0x5): "
            "Failed to change to Implicit Transfer Syntax"
        )
    )
    assert dicom._one_line(RuntimeError("a: /x.cxx:359:\nITK ERROR: GDCMImageIO(0x5): Failed to change")) == (
        "Failed to change"
    )


# ------------------------------------------------- valid inputs still convert unchanged


def _transcode(folder: Path, syntax_name: str) -> None:
    """Re-encode every file of ``folder`` losslessly with GDCM (in place)."""
    gdcm = pytest.importorskip("gdcm")
    for path in sorted(folder.iterdir()):
        reader = gdcm.ImageReader()
        reader.SetFileName(str(path))
        assert reader.Read()
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax_name)))
        change.SetInput(reader.GetImage())
        assert change.Change()
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(path))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write()


def _volume(folder: Path, out: Path) -> np.ndarray:
    import SimpleITK as sitk

    dicom.convert_subject(folder, "s1", out / "s1.nii.gz", out / "s1.json")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "s1.nii.gz")))


@pytest.mark.parametrize(
    "syntax_name, uid",
    [
        ("JPEGLSLossless", "1.2.840.10008.1.2.4.80"),
        ("JPEG2000Lossless", "1.2.840.10008.1.2.4.90"),
        ("JPEGLosslessProcess14_1", "1.2.840.10008.1.2.4.70"),
        ("RLELossless", "1.2.840.10008.1.2.5"),
    ],
)
def test_lossless_compressed_copies_convert_to_the_same_volume(shared_data, tmp_path, syntax_name, uid):
    """The intake checks (decode, BitsStored range, HU sanity) pass every lossless syntax,
    and the volume equals the uncompressed one voxel for voxel."""
    plain = copy_slices(shared_data, tmp_path / "plain")
    packed = copy_slices(shared_data, tmp_path / "packed")
    _transcode(packed, syntax_name)
    assert str(pydicom.dcmread(packed / "1-01.dcm", stop_before_pixels=True).file_meta.TransferSyntaxUID) == uid
    np.testing.assert_array_equal(_volume(packed, tmp_path / "b"), _volume(plain, tmp_path / "a"))


def test_duplicate_file_and_per_slice_rescale_convert_unchanged(ct, tmp_path):
    """A second copy of a slice is dropped; slices with their own rescale intercept (the
    stored values shifted to match) give the same HU."""
    expected = _volume(ct, tmp_path / "a")
    shutil.copy(ct / "1-04.dcm", ct / "copy_of_1-04.dcm")

    def own_intercept(ds):
        k = int(ds.InstanceNumber) % 5
        pixels = ds.pixel_array.astype(np.int32) + 10 * k
        ds.RescaleIntercept = float(ds.RescaleIntercept) - 10 * k
        ds.PixelData = pixels.astype(ds.pixel_array.dtype).tobytes()

    rewrite(ct, own_intercept, [f"1-0{k}.dcm" for k in range(1, N_SLICES + 1)])
    assert len({float(pydicom.dcmread(p).RescaleIntercept) for p in ct.iterdir()}) > 1
    np.testing.assert_array_equal(_volume(ct, tmp_path / "b"), expected)
    assert json_meta(tmp_path / "b")["conversion"]["duplicates_dropped"] == 1


def json_meta(out: Path) -> dict:
    import json

    return json.loads((out / "s1.json").read_text())
