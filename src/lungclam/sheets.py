"""Reading and validating the subject sheet (``samples.tsv``) and the clinical table.

Both are tab-separated. Validation runs before any job starts, so a typo in row 412 of a
1,000-subject sheet fails at once with the row number, not an hour into the run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from lungclam.errors import SheetError

#: Subject IDs become file names under ``results/``: no separators, no leading dot or dash.
SUBJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
#: Longest subject ID. IDs become file names (``{id}.nii.gz``, ``{id}.json``, 255 bytes at
#: most on every common filesystem) and parts of Slurm job names and comments; 64 leaves
#: room for every suffix the workflow adds.
MAX_SUBJECT_ID_LENGTH = 64
SAMPLE_COLUMNS = ("subject", "dicom")
#: Optional columns: which PatientID / StudyInstanceUID to take from a folder holding several.
OPTIONAL_SAMPLE_COLUMNS = ("patient_id", "study_uid")


def read_tsv(path: str | Path, what: str) -> pd.DataFrame:
    """Read a TSV as strings (no type guessing: IDs like ``007`` must stay ``007``)."""
    path = Path(path)
    if not path.is_file():
        raise SheetError(f"{what} sheet not found: {path}")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment=None)
    except Exception as exc:  # pandas raises several parser errors; report them uniformly
        raise SheetError(f"{what} sheet {path} cannot be read as TSV: {exc}") from exc
    table.columns = [c.strip() for c in table.columns]
    return table


def _row(index: int) -> str:
    """Human row number: line 1 is the header, so data row 0 is line 2."""
    return f"row {index + 1} (line {index + 2})"


def check_subject_ids(table: pd.DataFrame, path: Path, what: str) -> None:
    """Fail on a missing ``subject`` column, an illegal ID or a duplicate, naming the row."""
    if "subject" not in table.columns:
        raise SheetError(f"{what} sheet {path}: no 'subject' column (columns: {list(table.columns)})")
    seen: dict[str, int] = {}
    for i, subject in enumerate(table["subject"]):
        if len(subject) > MAX_SUBJECT_ID_LENGTH:
            raise SheetError(
                f"{what} sheet {path}, {_row(i)}: subject ID {subject[:20]!r}... is {len(subject)} characters "
                f"long; IDs may have at most {MAX_SUBJECT_ID_LENGTH} (they become file and job names)"
            )
        if not SUBJECT_ID.match(subject):
            raise SheetError(
                f"{what} sheet {path}, {_row(i)}: illegal subject ID {subject!r}; IDs must "
                "match ^[A-Za-z0-9][A-Za-z0-9_-]*$ (letters, digits, '_' and '-', not first)"
            )
        if subject in seen:
            raise SheetError(
                f"{what} sheet {path}, {_row(i)}: duplicate subject ID {subject!r} "
                f"(first seen in {_row(seen[subject])})"
            )
        seen[subject] = i


def read_samples(path: str | Path, check_folders: bool = True) -> pd.DataFrame:
    """Read and validate ``samples.tsv``; return it with ``dicom`` as absolute paths.

    Columns are ``subject`` and ``dicom``, and optionally ``patient_id`` and ``study_uid``
    (empty cells allowed: which patient or study to take from a folder holding several);
    relative ``dicom`` paths resolve against the sheet's own folder, so a sheet and its
    data can move together.
    """
    path = Path(path).resolve()
    table = read_tsv(path, "samples")
    unknown = [c for c in table.columns if c not in SAMPLE_COLUMNS + OPTIONAL_SAMPLE_COLUMNS]
    if unknown:
        raise SheetError(
            f"samples sheet {path}: unknown column(s) {unknown}; expected {list(SAMPLE_COLUMNS)} "
            f"and optionally {list(OPTIONAL_SAMPLE_COLUMNS)}"
        )
    missing = [c for c in SAMPLE_COLUMNS if c not in table.columns]
    if missing:
        raise SheetError(f"samples sheet {path}: missing column(s) {missing}")
    if table.empty:
        raise SheetError(f"samples sheet {path} lists no subjects")
    check_subject_ids(table, path, "samples")
    folders = []
    for i, (subject, folder) in enumerate(zip(table["subject"], table["dicom"])):
        if not folder.strip():
            raise SheetError(f"samples sheet {path}, {_row(i)}: subject {subject!r} has an empty 'dicom' path")
        resolved = (path.parent / folder.strip()).resolve()
        if check_folders and resolved.exists() and not resolved.is_dir():
            raise SheetError(
                f"samples sheet {path}, {_row(i)}: 'dicom' of subject {subject!r} is a file, not a folder: "
                f"{resolved}; give the folder that holds the subject's DICOM files"
            )
        if check_folders and not resolved.is_dir():
            raise SheetError(
                f"samples sheet {path}, {_row(i)}: DICOM folder of subject {subject!r} does not exist: {resolved}"
            )
        folders.append(str(resolved))
    table["dicom"] = folders
    for column in OPTIONAL_SAMPLE_COLUMNS:
        if column in table.columns:
            table[column] = table[column].str.strip()
    return table.set_index("subject", drop=False)


def read_clinical(path: str | Path, required_columns: list[str], subjects: list[str] | None = None) -> pd.DataFrame:
    """Read and validate the clinical table.

    ``required_columns`` are the covariates, outcomes and comparator the config names; each
    must exist in the sheet. Subjects in the clinical table without a scan, or scans without
    a clinical row, are allowed (they are reported by the statistics stage), but IDs must be
    legal and unique.
    """
    path = Path(path).resolve()
    table = read_tsv(path, "clinical")
    check_subject_ids(table, path, "clinical")
    missing = [c for c in required_columns if c not in table.columns]
    if missing:
        raise SheetError(
            f"clinical sheet {path}: the config names column(s) {missing} that the sheet lacks "
            f"(columns: {list(table.columns)})"
        )
    return table.set_index("subject", drop=False)
