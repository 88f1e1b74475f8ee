"""DICOM faults in a real `snakemake --keep-going` run (issue 15): damaged, missing and
non-HU slices and filesystem faults each fail only their own subject's convert job,
naming the file or tag; the intact subject converts; nothing partial is left.

One run, convert outputs only, on eight-slice copies of a real chest CT from
../shared/data (about 20 s on two cores).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from tests.snakemake_runs import snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.realdata]

SERIES = (
    "real-ct/lung-pet-ct-dx/Lung_Dx-A0002/04-25-2007-NA-ThoraxAThoraxRoutine Adult-34834/"
    "{}.000000-ThoraxRoutine  8.0.0  {}"
)
B40F, B70F = SERIES.format(3, "B40f-10983"), SERIES.format(2, "B70f-62919")


def _copy(shared_data: Path, dest: Path, series: str = B40F, n: int = 8) -> Path:
    dest.mkdir(parents=True)
    for path in sorted((shared_data / series).iterdir())[:n]:
        shutil.copy(path, dest / path.name)
    return dest


def _rewrite(folder: Path, edit) -> None:
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)


def _cohort(shared_data: Path, root: Path) -> dict[str, str]:
    """Write the subjects; returns, for each bad one, what its cause must say."""
    intact = _copy(shared_data, root / "intact", n=7)
    (intact / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 100)  # clearly not DICOM: skipped
    (intact / "notes.txt").write_text("exported from PACS")
    (intact / "1-08.dcm").symlink_to(shared_data / B40F / "1-08.dcm")  # a link to a good slice is followed
    trunc = _copy(shared_data, root / "bad_trunc")
    (trunc / "1-04.dcm").write_bytes(b"")
    header = _copy(shared_data, root / "bad_header")
    data = (header / "1-04.dcm").read_bytes()
    (header / "1-04.dcm").write_bytes(b"\x00" * 260 + data[260:])
    gap = _copy(shared_data, root / "bad_gap")
    (gap / "1-04.dcm").unlink()
    dangling = _copy(shared_data, root / "bad_dangling")
    (dangling / "broken.dcm").symlink_to("/nonexistent/f.dcm")
    looping = _copy(shared_data, root / "bad_loop")
    (looping / "loop.dcm").symlink_to(looping / "loop.dcm")
    _rewrite(_copy(shared_data, root / "bad_slope"), lambda ds: setattr(ds, "RescaleSlope", 0))
    _rewrite(
        _copy(shared_data, root / "bad_raw"), lambda ds: (delattr(ds, "RescaleSlope"), delattr(ds, "RescaleIntercept"))
    )
    for name in ("bad_patients", "pick_patient"):
        _copy(shared_data, root / name / "a")
        _rewrite(_copy(shared_data, root / name / "b", B70F), lambda ds: setattr(ds, "PatientID", "OTHER"))
    return {
        "bad_trunc": "1-04.dcm is not a readable DICOM file (0 bytes",
        "bad_header": "1-04.dcm is not a readable DICOM file (",
        "bad_gap": "gap of 16.00 mm between 1-05.dcm and 1-03.dcm",
        "bad_dangling": "broken.dcm: broken symbolic link (broken.dcm -> /nonexistent/f.dcm",
        "bad_loop": "loop.dcm: symbolic link loop",
        "bad_slope": "RescaleSlope (0028,1053) of 0",
        "bad_raw": "lack RescaleSlope (0028,1053) or RescaleIntercept (0028,1052)",
        "bad_patients": "the folder holds 2 different PatientIDs (patient 1: series 2 ",
    }


def test_each_dicom_fault_fails_only_its_subject(shared_data: Path, tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    expected = _cohort(shared_data, cohort / "dicom")
    good = ["intact", "pick_patient"]
    subjects = good + list(expected)
    rows = "".join(f"{s}\tdicom/{s}\t{'Lung_Dx-A0002' if s == 'pick_patient' else ''}\n" for s in subjects)
    (cohort / "samples.tsv").write_text("subject\tdicom\tpatient_id\n" + rows)
    work = tmp_path / "run"
    targets = [f"results/nifti/{s}.nii.gz" for s in subjects]

    done = snakemake(
        work, "--cores", "2", "--keep-going", *targets, "--config", f"samples={cohort / 'samples.tsv'}", check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0
    results = work / "results"
    for subject in good:  # the DAG was built and the intact subjects converted
        assert (results / "nifti" / f"{subject}.nii.gz").is_file(), out[-3000:]
    assert pd.read_json(results / "nifti" / "pick_patient.json", typ="series")["SeriesNumber"] == 3
    assert pd.read_json(results / "nifti" / "intact.json", typ="series")["n_files"] == 8

    failed = pd.read_csv(results / "failed_subjects.tsv", sep="\t", dtype=str, keep_default_na=False)
    failed = failed.set_index("subject")
    assert sorted(failed.index) == sorted(expected), out[-3000:]
    assert (failed["rule"] == "convert").all()
    for subject, cause in expected.items():
        assert cause in failed.loc[subject, "cause"], (subject, failed.loc[subject, "cause"])
        assert failed.loc[subject, "cause"].endswith("]")  # whole, down to the [path]
        log = (work / failed.loc[subject, "log"]).read_text()
        assert "Traceback" not in log
        assert not list((results / "nifti").glob(f"{subject}.*")), subject  # nothing partial
    assert "Unable to obtain modification time" not in out and "Too many levels" not in out
    assert "OTHER" not in failed.loc["bad_patients", "cause"]  # PatientIDs identify: never shown


def test_overlong_subject_id_stops_before_any_job(shared_data: Path, tmp_path: Path) -> None:
    """Caught in sheet validation, with the row, instead of 'File name too long' mid-run."""
    _copy(shared_data, tmp_path / "a", n=3)
    long_id = "S" * 250
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(f"subject\tdicom\na\ta\n{long_id}\ta\n")
    done = snakemake(tmp_path / "run", "-n", "--config", f"samples={sheet}", check=False)
    assert done.returncode != 0
    assert "row 2 (line 3): subject ID 'SSSSSSSSSSSSSSSSSSSS'... is 250 characters long" in done.stderr
    assert "File name too long" not in done.stdout + done.stderr
