"""The seeded demo cohort: DICOM folders with samples, clinical and truth sheets, and its CLI.

:func:`write_demo_cohort` draws every subject with :func:`~lungclam.phantom.anatomy.make_chest_phantom`,
writes it with :mod:`lungclam.phantom.dicom_writer`, and writes ``samples.tsv``,
``clinical.tsv`` and ``truth.tsv``; :func:`main` is ``python -m lungclam.phantom``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import as_completed
from pathlib import Path

import numpy as np
import pandas as pd

from lungclam.atomic import write_table
from lungclam.imageio import write_image
from lungclam.phantom.anatomy import ALL_PATTERNS, PATTERNS, Phantom, make_chest_phantom
from lungclam.phantom.dicom_writer import write_dicom_series, write_localizer
from lungclam.runtime import forked_pool, set_threads

_SCADDING = ("0", "I", "II", "III", "IV")
# Stage probabilities per pattern: related to the pattern, but no stage identifies it.
_SCADDING_P = {
    "near_normal": (0.45, 0.35, 0.15, 0.05, 0.00),
    "perihilar_nodules": (0.05, 0.30, 0.45, 0.15, 0.05),
    "upper_reticulation": (0.00, 0.05, 0.20, 0.40, 0.35),
    "lower_ground_glass": (0.10, 0.20, 0.30, 0.30, 0.10),
}
_KERNELS = ("B45f", "B50f", "STANDARD", "LUNG")


def demo_subject_ids(n_subjects: int) -> list[str]:
    """Subject IDs of the demo cohort: demo001, demo002, ..."""
    return [f"demo{i:03d}" for i in range(1, n_subjects + 1)]


def _cohort_plan(n_subjects: int, seed: int, patterns: Sequence[str]) -> pd.DataFrame:
    """Pattern, severity, feet-first and localizer flags per subject (balanced, shuffled).

    Each pattern gets ``n // len(patterns)`` subjects, the remainder going one each to the
    first patterns; about a third of the series are feet-first and, independently, about a
    third of the folders also hold a localizer.
    """
    rng = np.random.default_rng([seed, 7919])
    per = [n_subjects // len(patterns) + (i < n_subjects % len(patterns)) for i in range(len(patterns))]
    assigned = np.repeat(np.array(patterns, dtype=object), per)
    rng.shuffle(assigned)
    third = round(n_subjects / 3)
    feet_first = np.zeros(n_subjects, dtype=bool)
    feet_first[rng.choice(n_subjects, third, replace=False)] = True
    localizer = np.zeros(n_subjects, dtype=bool)
    localizer[rng.choice(n_subjects, third, replace=False)] = True
    return pd.DataFrame(
        {
            "subject": demo_subject_ids(n_subjects),
            "pattern": assigned,
            "severity": np.round(rng.uniform(0.4, 1.0, n_subjects), 3),
            "feet_first": feet_first,
            "localizer": localizer,
        }
    )


def _clinical_row(rng: np.random.Generator, subject: str, pattern: str, severity: float, phantom: Phantom) -> dict:
    """One subject's clinical values (see :func:`write_demo_cohort` for the model)."""
    ur = severity * (pattern == "upper_reticulation")
    pn = severity * (pattern == "perihilar_nodules")
    gg = severity * (pattern == "lower_ground_glass")
    age = int(np.clip(rng.normal(48.0, 11.0), 22, 80))
    sex = "F" if rng.random() < 0.55 else "M"
    race = str(rng.choice(["white", "black", "other"], p=[0.55, 0.35, 0.10]))
    fat = phantom.info["fat_mm"] / phantom.info["scale"]
    bmi = 21.0 + 0.5 * fat + rng.normal(0.0, 2.5)
    fvc = 98.0 - 22.0 * ur - 8.0 * pn - 10.0 * gg - 0.15 * (age - 50) + rng.normal(0.0, 9.0)
    fev1 = 96.0 - 20.0 * ur - 10.0 * pn - 8.0 * gg - 0.20 * (age - 50) + rng.normal(0.0, 9.0)
    dlco = 92.0 - 30.0 * ur - 12.0 * pn - 15.0 * gg + rng.normal(0.0, 9.0)
    sobq = 18.0 + 40.0 * ur + 12.0 * pn + 20.0 * gg + 0.5 * (bmi - 28.0) + rng.normal(0.0, 10.0)
    crp = math.exp(rng.normal(math.log(2.0), 0.6)) * (1.0 + 3.0 * pn + 0.5 * gg)
    stage_p = np.array(_SCADDING_P.get(pattern, (0.2,) * 5))
    return {
        "subject": subject,
        "age": age,
        "sex": sex,
        "race": race,
        "bmi": round(bmi, 1),
        "scadding": str(rng.choice(_SCADDING, p=stage_p / stage_p.sum())),
        "fev1_pct": round(fev1, 1),
        "fvc_pct": round(fvc, 1),
        "dlco_pct": round(dlco, 1),
        "cd4": int(np.clip(rng.normal(820.0, 260.0), 150, 2000)),
        "crp": round(crp, 2),
        "sobq": round(float(np.clip(sobq, 0.0, 120.0)), 1),
        "sf12_physical": round(float(np.clip(rng.normal(45.0, 9.0), 10.0, 70.0)), 1),
    }


def _dates(rng: np.random.Generator, age: int) -> tuple[str, str]:
    """Fake (study date, birth date) as YYYYMMDD, consistent with ``age`` in years."""
    study = np.datetime64("2019-01-01") + int(rng.integers(0, 730))
    birth = study - np.timedelta64(int(age * 365.25 + rng.integers(1, 360)), "D")
    return str(study).replace("-", ""), str(birth).replace("-", "")


def _write_subject(out_dir: Path, row: pd.Series, index: int, seed: int, phantom_kwargs: dict) -> tuple[dict, dict]:
    """Draw, write and describe one demo subject; returns its clinical and truth rows."""
    subject = row["subject"]
    streams = np.random.SeedSequence([seed, index]).spawn(3)
    phantom_rng, io_rng, clinical_rng = (np.random.default_rng(s) for s in streams)
    phantom = make_chest_phantom(phantom_rng, row["pattern"], row["severity"], **phantom_kwargs)
    clinical = _clinical_row(clinical_rng, subject, row["pattern"], row["severity"], phantom)
    study_date, birth_date = _dates(io_rng, clinical["age"])
    identity = dict(
        subject=subject,
        patient_name=f"DEMO^SUBJECT{index + 1:02d}",
        patient_id=f"MRN{seed:03d}{index + 1:05d}",
        birth_date=birth_date,
        sex=clinical["sex"],
        study_date=study_date,
        uid_key=f"{seed}/{subject}",
    )
    folder = out_dir / "dicom" / subject
    if folder.exists():
        # Shuffled names differ between runs of other seeds: start from an empty folder.
        shutil.rmtree(folder)
    write_dicom_series(
        phantom, folder, series_number=2, feet_first=bool(row["feet_first"]), flip_columns=bool(row["feet_first"]),
        shuffle=True, rng=io_rng, kernel=_KERNELS[int(io_rng.integers(len(_KERNELS)))], **identity,
    )  # fmt: skip
    if row["localizer"]:
        write_localizer(
            phantom, folder, series_number=1, feet_first=bool(row["feet_first"]), shuffle=True, rng=io_rng, **identity
        )
    truth = {
        "subject": subject,
        "pattern": row["pattern"],
        "severity": row["severity"],
        "lung_mask": f"truth/{subject}_lungs.nii.gz",
        "disease_mask": f"truth/{subject}_disease.nii.gz",
    }
    write_image(phantom.image(phantom.lungs), out_dir / truth["lung_mask"])
    write_image(phantom.image(phantom.disease), out_dir / truth["disease_mask"])
    return clinical, truth


def _timed_subject(job: tuple) -> tuple[int, tuple[dict, dict], float]:
    """:func:`_write_subject` on one job tuple, with its index and seconds (a worker's task)."""
    started = time.perf_counter()
    written = _write_subject(*job)
    return job[2], written, time.perf_counter() - started


def _written_subjects(jobs: list[tuple], workers: int) -> Iterator[tuple[int, tuple[dict, dict], float]]:
    """Write every job's subject, in ``workers`` forked processes when
    :func:`lungclam.runtime.forked_pool` gives them; yields (index, (clinical, truth),
    seconds) as each subject is done."""
    # One thread each: the workers already share the job's cores between them.
    pool = forked_pool(workers, len(jobs), initializer=set_threads, initargs=(1,))
    if pool is None:
        yield from map(_timed_subject, jobs)
        return
    with pool:
        futures = [pool.submit(_timed_subject, job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def write_demo_cohort(
    out_dir: str | Path,
    n_subjects: int = 30,
    seed: int = 0,
    patterns: Sequence[str] = PATTERNS,
    workers: int = 1,
    **phantom_kwargs,
) -> None:
    """Write a seeded synthetic cohort: DICOM folders plus samples, clinical and truth sheets.

    Layout under ``out_dir``:

    - ``dicom/{subject}/``: the axial CT (series 2, shuffled hexadecimal file names); about
      a third feet-first (FFS, mirrored columns), about a third with a localizer (series 1).
    - ``samples.tsv``: ``subject``, ``dicom`` (``dicom/{subject}``, relative to the sheet).
    - ``clinical.tsv``: ``subject, age, sex, race, bmi, scadding, fev1_pct, fvc_pct,
      dlco_pct, cd4, crp, sobq, sf12_physical``.
    - ``truth.tsv``: ``subject, pattern, severity, lung_mask, disease_mask``; the masks are
      NIfTI files under ``truth/`` on exactly the CT's grid (LPS). For evaluation only.

    Clinical model (s = severity of the subject's pattern, 0 for other patterns):
    age ~ N(48, 11) in [22, 80]; sex 55 % F; race white/black/other 55/35/10 %; bmi rises
    with the phantom's subcutaneous fat (0.5 per mm) plus noise. Pattern-dependent:
    fvc_pct, fev1_pct, dlco_pct fall by 20-30 points with s in upper_reticulation, 8-12 in
    perihilar_nodules and 8-15 in lower_ground_glass (fev1 and fvc also fall with age);
    sobq rises by 40 x s (upper_reticulation), 12 x s (perihilar_nodules), 20 x s
    (lower_ground_glass) and with bmi; crp (mg/L, log-normal around 2) is multiplied by
    1 + 3 s in perihilar_nodules; scadding (0, I..IV) is drawn from pattern-specific
    probabilities (near_normal mostly 0/I, perihilar_nodules mostly I/II, upper_reticulation
    mostly III/IV). Pure noise, unrelated to the pattern: cd4 ~ N(820, 260), sf12_physical
    ~ N(45, 9). Every continuous outcome has noise of about 9-10 units.

    The same seed and arguments give the same files, byte for byte, whatever ``workers``
    (processes drawing subjects side by side; each subject has its own seeded streams, so
    the order they finish in changes nothing). ``phantom_kwargs`` go
    to :func:`make_chest_phantom` (matrix, pixel_mm, slice_mm, n_slices, z_extent_mm).
    One progress line per subject goes to stderr.
    """
    out_dir = Path(out_dir)
    unknown = set(patterns) - set(ALL_PATTERNS)
    if unknown or not patterns:
        raise ValueError(f"unknown or no patterns {sorted(unknown)}; choose from {ALL_PATTERNS}")
    plan = _cohort_plan(n_subjects, seed, list(patterns))
    jobs = [(out_dir, row, int(index), seed, phantom_kwargs) for index, row in plan.iterrows()]
    rows: dict[int, tuple[dict, dict]] = {}
    for index, (clinical_row, truth_row), seconds in _written_subjects(jobs, workers):
        rows[index] = (clinical_row, truth_row)
        row = plan.loc[index]
        flags = ("FFS" if row["feet_first"] else "HFS") + (" +localizer" if row["localizer"] else "")
        print(
            f"demo: {len(rows)}/{n_subjects} {row['subject']} {row['pattern']} "
            f"severity {row['severity']:.2f} {flags} ({seconds:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    clinical = [rows[i][0] for i in sorted(rows)]
    truth = [rows[i][1] for i in sorted(rows)]
    samples = pd.DataFrame({"subject": plan["subject"], "dicom": [f"dicom/{s}" for s in plan["subject"]]})
    for name, table in (("samples", samples), ("clinical", pd.DataFrame(clinical)), ("truth", pd.DataFrame(truth))):
        write_table(table, out_dir / f"{name}.tsv")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m lungclam.phantom OUT_DIR --n-subjects N --seed S``."""
    parser = argparse.ArgumentParser(description="Write the synthetic demo cohort (DICOM + sheets).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-subjects", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=ALL_PATTERNS)
    parser.add_argument("--matrix", type=int, default=192, help="in-plane pixels (square)")
    parser.add_argument("--pixel-mm", type=float, default=1.875)
    parser.add_argument("--slice-mm", type=float, default=2.5)
    parser.add_argument("--n-slices", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1, help="processes drawing subjects side by side")
    args = parser.parse_args(argv)
    write_demo_cohort(
        args.out_dir, args.n_subjects, args.seed, args.patterns, args.workers,
        matrix=args.matrix, pixel_mm=args.pixel_mm, slice_mm=args.slice_mm, n_slices=args.n_slices,
    )  # fmt: skip
