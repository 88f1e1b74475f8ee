"""Samples and clinical sheet validation: every bad row is named before any job runs."""

from __future__ import annotations

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
