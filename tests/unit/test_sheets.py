"""Samples and clinical sheet validation: every bad row is named before any job runs."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from lungclam.errors import SheetError
from lungclam.sheets import read_clinical, read_samples


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def folders(tmp_path: Path) -> Path:
    for name in ("a", "b", "c"):
        (tmp_path / "dicom" / name).mkdir(parents=True)
    return tmp_path


def test_good_sheet_resolves_relative_folders(folders: Path) -> None:
    sheet = write(folders / "samples.tsv", "subject\tdicom\nS01\tdicom/a\nS-02_x\tdicom/b\n")
    table = read_samples(sheet)
    assert table["subject"].tolist() == ["S01", "S-02_x"]
    assert Path(table.loc["S01", "dicom"]) == (folders / "dicom" / "a").resolve()


def test_ids_stay_strings(folders: Path) -> None:
    sheet = write(folders / "samples.tsv", "subject\tdicom\n007\tdicom/a\n")
    assert read_samples(sheet)["subject"].tolist() == ["007"]


@pytest.mark.parametrize(
    "bad_id",
    ["../evil", "a/b", ".hidden", "-dash", "sp ace", "", "x.y"],
)
def test_illegal_subject_ids_name_the_row(folders: Path, bad_id: str) -> None:
    sheet = write(folders / "samples.tsv", f"subject\tdicom\nok1\tdicom/a\n{bad_id}\tdicom/b\n")
    with pytest.raises(SheetError, match=r"row 2 \(line 3\).*illegal subject ID"):
        read_samples(sheet)


def test_duplicate_subject(folders: Path) -> None:
    sheet = write(folders / "samples.tsv", "subject\tdicom\nA\tdicom/a\nB\tdicom/b\nA\tdicom/c\n")
    with pytest.raises(SheetError, match=r"row 3 .*duplicate subject ID 'A' \(first seen in row 1"):
        read_samples(sheet)


def test_missing_folder(folders: Path) -> None:
    sheet = write(folders / "samples.tsv", "subject\tdicom\nA\tdicom/a\nB\tdicom/nope\n")
    with pytest.raises(SheetError, match=r"row 2 .*subject 'B' does not exist"):
        read_samples(sheet)


def test_dicom_path_pointing_at_a_file_says_so(folders: Path) -> None:
    (folders / "dicom" / "a" / "CT1.dcm").write_bytes(b"x")
    sheet = write(folders / "samples.tsv", "subject\tdicom\nA\tdicom/a\nB\tdicom/a/CT1.dcm\n")
    with pytest.raises(SheetError, match=r"row 2 .*'dicom' of subject 'B' is a file, not a folder: .*CT1\.dcm"):
        read_samples(sheet)


@pytest.mark.parametrize("length", [65, 250])
def test_overlong_subject_id_names_the_row(folders: Path, length: int) -> None:
    """A 250-character ID used to pass and kill the run later with 'File name too long'."""
    long_id = "S" * length
    sheet = write(folders / "samples.tsv", f"subject\tdicom\nok1\tdicom/a\n{long_id}\tdicom/b\n")
    with pytest.raises(
        SheetError,
        match=rf"row 2 \(line 3\): subject ID 'S{{20}}'\.\.\. is {length} characters "
        r"long; IDs may have at most 64",
    ):
        read_samples(sheet)
    (folders / "samples.tsv").write_text(f"subject\tdicom\n{'S' * 64}\tdicom/a\n")
    assert read_samples(folders / "samples.tsv")["subject"].str.len().tolist() == [64]


def test_optional_patient_and_study_columns(folders: Path) -> None:
    sheet = write(
        folders / "samples.tsv", "subject\tdicom\tpatient_id\tstudy_uid\nA\tdicom/a\t P-1 \t\nB\tdicom/b\t\t1.2.3\n"
    )
    table = read_samples(sheet)
    assert table["patient_id"].tolist() == ["P-1", ""] and table["study_uid"].tolist() == ["", "1.2.3"]


def test_unknown_column(folders: Path) -> None:
    sheet = write(folders / "samples.tsv", "subject\tdicom\tage\nA\tdicom/a\t50\n")
    with pytest.raises(SheetError, match=r"unknown column\(s\) \['age'\]"):
        read_samples(sheet)


def test_missing_sheet_and_empty_sheet(folders: Path) -> None:
    with pytest.raises(SheetError, match="not found"):
        read_samples(folders / "absent.tsv")
    with pytest.raises(SheetError, match="no subjects"):
        read_samples(write(folders / "empty.tsv", "subject\tdicom\n"))


def test_clinical_columns_named_in_config_must_exist(tmp_path: Path) -> None:
    sheet = write(tmp_path / "clinical.tsv", "subject\tage\tfev1_pct\nA\t50\t80\nB\t60\t\n")
    table = read_clinical(sheet, ["age", "fev1_pct"])
    assert table.loc["B", "fev1_pct"] == ""  # missing stays visible, never invented
    with pytest.raises(SheetError, match=r"names column\(s\) \['dlco_pct'\]"):
        read_clinical(sheet, ["age", "dlco_pct"])


def test_clinical_duplicate(tmp_path: Path) -> None:
    sheet = write(tmp_path / "clinical.tsv", "subject\tage\nA\t50\nA\t51\n")
    with pytest.raises(SheetError, match="duplicate"):
        read_clinical(sheet, ["age"])


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        ("../p4321\tdicom/a", "row 4321 (line 4322): illegal subject ID '../p4321'"),
        ("p4321\tdicom/nowhere", "row 4321 (line 4322): DICOM folder of subject 'p4321' does not exist"),
        ("p0007\tdicom/a", "row 4321 (line 4322): duplicate subject ID 'p0007' (first seen in row 7 (line 8))"),
    ],
)
def test_enormous_sheet_with_one_bad_row_names_it_quickly(folders: Path, bad_row: str, expected: str) -> None:
    rows = [f"p{i:04d}\tdicom/{'abc'[i % 3]}" for i in range(1, 5001)]
    rows[4320] = bad_row
    sheet = write(folders / "samples.tsv", "subject\tdicom\n" + "\n".join(rows) + "\n")
    started = time.perf_counter()
    with pytest.raises(SheetError, match=re.escape(expected)):
        read_samples(sheet)
    assert time.perf_counter() - started < 5.0
    rows[4320] = "p4321\tdicom/a"
    sheet.write_text("subject\tdicom\n" + "\n".join(rows) + "\n")
    assert len(read_samples(sheet)) == 5000
