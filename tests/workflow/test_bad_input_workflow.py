"""Bad subjects in a real cohort run: with --keep-going every other subject's imaging jobs
finish, each failed job's log gives one line naming the subject, the file and the cause, and
the end of the run lists the failed subjects and why (results/failed_subjects.tsv)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungclam.phantom import make_chest_phantom, write_dicom_series, write_localizer
from lungclam.sampling import sample_subjects
from tests.snakemake_runs import planned_jobs, snakemake

pytestmark = pytest.mark.workflow

TINY_PHANTOM = dict(matrix=64, pixel_mm=6.0, slice_mm=6.0)  # as tests/configs/tiny.yaml
BAD = ("bad_trunc", "bad_scout", "bad_empty", "bad_nolungs")
IMAGING = ("convert", "resample", "segment", "register", "downsample")


def _write_bad_subjects(root: Path) -> dict[str, Path]:
    """Four broken subjects; returns the file each failure must name."""
    phantom = make_chest_phantom(np.random.default_rng(11), **TINY_PHANTOM)
    # A corrupt file among good ones: slice 6 of 12 cut off halfway through its pixels.
    write_dicom_series(phantom, root / "bad_trunc", subject="bad_trunc")
    cut = sorted((root / "bad_trunc").iterdir())[5]
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - 3000])
    # A folder holding only the localizer (scout) image.
    write_localizer(phantom, root / "bad_scout", subject="bad_scout")
    (root / "bad_empty").mkdir()
    # A chest whose lungs are solid tissue: it converts and resamples, then has no lungs.
    solid = phantom.hu.copy()
    solid[phantom.lungs > 0] = 40
    write_dicom_series(dataclasses.replace(phantom, hu=solid), root / "bad_nolungs", subject="bad_nolungs")
    return {
        "bad_trunc": cut,
        "bad_scout": root / "bad_scout",
        "bad_empty": root / "bad_empty",
        "bad_nolungs": Path("results/resampled/bad_nolungs.nii.gz"),
    }


def test_keep_going_finishes_the_others_and_lists_the_failures(demo_run: Path, tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    shutil.copytree(demo_run / "demo" / "dicom", cohort / "dicom")
    good = sorted(p.name for p in (cohort / "dicom").iterdir() if p.is_dir())
    named_file = _write_bad_subjects(cohort / "dicom")
    subjects = good + list(BAD)
    # The template's seeded sample holds only good subjects: a subject in it that fails
    # would (rightly) hold back every registration.
    assert not set(sample_subjects(subjects, 0.1, 3, 0)) & set(BAD)
    (cohort / "samples.tsv").write_text("subject\tdicom\n" + "".join(f"{s}\tdicom/{s}\n" for s in subjects))
    clinical = pd.read_csv(demo_run / "demo" / "clinical.tsv", sep="\t", dtype=str)
    ghost = clinical.iloc[[0]].assign(subject="ghost")  # a clinical row with no scan
    pd.concat([clinical, ghost]).to_csv(cohort / "clinical.tsv", sep="\t", index=False)
    work = tmp_path / "run"
    config = ["--config", f"samples={cohort / 'samples.tsv'}", f"clinical={cohort / 'clinical.tsv'}"]

    done = snakemake(work, "--cores", "2", "--keep-going", *config, check=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    results = work / "results"
    # Clinical mismatches are reported before any job runs; the statistics use the overlap.
    assert "1 clinical rows without a scan in this run (left out of the statistics): ghost" in out
    assert "4 scans without a clinical row (left out of the statistics): " + ", ".join(BAD) in out

    # Every good subject went through the whole imaging chain, template included.
    for subject in good:
        for stage in ("nifti", "resampled", "lungmask", "registered", "downsampled"):
            assert (results / stage / f"{subject}.nii.gz").is_file(), (stage, subject)
    # The cohort-level model waits for the failed subjects: nothing is trained on a subset.
    assert not (results / "model" / "cae.pt").exists()

    failed = pd.read_csv(results / "failed_subjects.tsv", sep="\t", dtype=str).set_index("subject")
    assert sorted(failed.index) == sorted(BAD)
    assert failed.loc["bad_nolungs", "rule"] == "segment"
    assert (failed.drop("bad_nolungs")["rule"] == "convert").all()
    expected = {
        "bad_trunc": f"{named_file['bad_trunc'].name}: pixel data truncated",
        "bad_scout": "no CT axial series: ",
        "bad_empty": "no files in the DICOM folder",
        "bad_nolungs": "no lungs found",
    }
    for subject, cause in expected.items():
        row = failed.loc[subject]
        log = (work / row["log"]).read_text()
        # One line says it all: step, subject, cause and the file, and nothing else explains it.
        message = [line for line in log.splitlines() if " failed: " in line]
        assert len(message) == 1, log
        assert f"subject '{subject}': " in message[0] and cause in message[0], message[0]
        assert f"[{named_file[subject]}" in message[0] or f"{named_file[subject]}]" in message[0], message[0]
        assert "Traceback" not in log
        assert cause in row["cause"] and subject in row["cause"]
        # The end-of-run summary on the terminal.
        assert f"subject {subject} [{row['rule']}]: " in out
    assert "localizer" in failed.loc["bad_scout", "cause"]
    assert "--config exclude=" + ",".join(sorted(BAD)) in out

    # Leaving the failed subjects out keeps the template and every finished registration,
    # and runs just the cohort-level stages.
    exclude = "exclude=" + ",".join(BAD)
    jobs = planned_jobs(snakemake(work, "-n", *config, exclude).stdout)
    rules = {rule for rule, _ in jobs}
    assert {"train", "choose_k", "cluster", "clam", "stats"} <= rules
    assert not rules & set(IMAGING) and "template" not in rules
    assert not {subject for _, subject in jobs if subject} & set(BAD)
    unknown = snakemake(work, "-n", *config, "exclude=nobody", check=False)
    assert unknown.returncode != 0 and "exclude names subject(s) not in the cohort: nobody" in unknown.stderr


def test_config_is_loaded_safely(tmp_path: Path) -> None:
    """A YAML tag that would run code when loaded is refused, and nothing runs."""
    proof = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f'seed: !!python/object/apply:os.system ["touch {proof}"]\n')
    done = snakemake(tmp_path, "-n", "--configfile", str(config), check=False)
    assert done.returncode != 0
    assert "not valid JSON or YAML" in done.stdout + done.stderr
    assert not proof.exists()
