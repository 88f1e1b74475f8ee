"""Real snakemake runs of the imaging chain on a tiny synthetic cohort (tests/configs/tiny.yaml)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from tests.conftest import PROJECT_ROOT
from tests.snakemake_runs import IN_DEMO_FOLDER, planned_jobs, snakemake

pytestmark = pytest.mark.workflow

STAGE_DIRS = ("nifti", "resampled", "lungmask", "registered", "downsampled")
PER_SUBJECT = ("convert", "resample", "segment", "register", "downsample")
MODEL_RULES = {
    "train",
    "choose_k",
    "cluster",
    "clam",
    "clam_cluster_mean",
    "clam_population_mean",
    "stats",
    "figure_maps",
    "figure_model",
    "figure_forest",
    "figure_stability",
    "qc_contact_sheet",
    "viewer",
    "study_bundle",
}


def test_dry_run_lists_every_job(tmp_path: Path) -> None:
    out = snakemake(tmp_path, "-n").stdout
    jobs = planned_jobs(out)
    rules = [rule for rule, _ in jobs]
    n = 4  # subjects in tiny.yaml
    for rule in PER_SUBJECT:
        assert rules.count(rule) == n, (rule, rules)
    for rule in (
        "demo",
        "template",
        "downsample_grid",
        "all",
        "train",
        "choose_k",
        "cluster",
        "clam",
        "clam_population_mean",
    ):
        assert rules.count(rule) == 1, (rule, rules)
    # With n_clusters: auto, the per-cluster jobs appear only once choose_k has run.
    assert rules.count("clam_cluster_mean") == 0
    assert not (tmp_path / "results").exists()  # a dry run makes nothing


def test_dry_run_with_fixed_k_lists_cluster_means(tmp_path: Path) -> None:
    rules = [rule for rule, _ in planned_jobs(snakemake(tmp_path, "-n", "--config", "n_clusters=3").stdout)]
    assert rules.count("clam_cluster_mean") == 3


def test_demo_run_makes_every_artifact(demo_run: Path) -> None:
    truth = pd.read_csv(demo_run / "demo" / "truth.tsv", sep="\t", dtype=str)
    subjects = truth["subject"].tolist()
    assert len(subjects) == 4
    for subject in subjects:
        for stage in STAGE_DIRS:
            assert (demo_run / stage / f"{subject}.nii.gz").is_file(), (stage, subject)
        for name in ("0GenericAffine.mat", "1Warp.nii.gz", "1InverseWarp.nii.gz"):
            assert (demo_run / "transforms" / subject / name).is_file()
        assert (demo_run / "logs" / "register" / f"{subject}.log").is_file()
        sidecar = json.loads((demo_run / "nifti" / f"{subject}.json").read_text())
        assert "SeriesInstanceUID" in sidecar
        text = json.dumps(sidecar)
        assert "PatientName" not in text and "DEMO^" not in text and "PatientBirthDate" not in text
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_run / "lungmask" / f"{subject}.nii.gz")))
        assert set(np.unique(labels)) == {0, 1, 2}
    iterations = pd.read_csv(demo_run / "template" / "iterations.tsv", sep="\t")
    assert len(iterations) >= 1 and iterations["dice_with_previous"].between(0, 1).all()


def test_downsampled_volumes_share_the_grid(demo_run: Path) -> None:
    mask = sitk.ReadImage(str(demo_run / "template" / "grid_mask.nii.gz"))
    inside = sitk.GetArrayFromImage(mask) > 0
    assert inside.any()
    for path in sorted((demo_run / "downsampled").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        assert image.GetSize() == mask.GetSize() and image.GetSpacing() == mask.GetSpacing()
        assert np.allclose(image.GetOrigin(), mask.GetOrigin())
        assert image.GetPixelID() == sitk.sitkFloat32
        array = sitk.GetArrayFromImage(image)
        assert np.all(array[~inside] == -1024)
        # Inside the lung mask there is lung: mostly air-like parenchyma, not background.
        assert -1000 < np.median(array[inside]) < -500


@IN_DEMO_FOLDER
def test_rerun_does_nothing(demo_run: Path) -> None:
    out = snakemake(demo_run.parent, "-n").stdout
    assert "Nothing to be done" in out, out[-2000:]


def _rewrite_one_pixel(path: Path) -> None:
    """Change one pixel of a DICOM file in place (a re-exported or corrected slice)."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.copy()
    pixels.flat[0] += 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(path)


@pytest.mark.slow(seconds=60)  # a whole run of its own
def test_user_sheet_and_changed_file_reruns_only_that_subject(demo_run: Path, tmp_path: Path) -> None:
    """A cohort given by samples.tsv; a changed DICOM file re-runs that subject's jobs (and
    the cohort-level model jobs after them); a touched but unchanged file re-runs nothing,
    because Snakemake compares input checksums before trusting a newer mtime."""
    cohort = tmp_path / "cohort"
    shutil.copytree(demo_run / "demo" / "dicom", cohort / "dicom")
    subjects = sorted(p.name for p in (cohort / "dicom").iterdir() if p.is_dir())
    (cohort / "samples.tsv").write_text("subject\tdicom\n" + "".join(f"{s}\tdicom/{s}\n" for s in subjects))
    work = tmp_path / "run"
    config = f"samples={cohort / 'samples.tsv'}"
    snakemake(work, "--cores", "2", "--config", config)
    from lungclam.sampling import sample_subjects

    in_template = set(sample_subjects(subjects, 0.1, 3, 0))
    outsider = next(s for s in subjects if s not in in_template)
    some_file = sorted(p for p in (cohort / "dicom" / outsider).rglob("*") if p.is_file())[0]
    some_file.touch()
    assert "Nothing to be done" in snakemake(work, "-n", "--config", config).stdout
    # make-like behaviour on request: without checksums a newer mtime is enough.
    touched = planned_jobs(snakemake(work, "-n", "--max-checksum-file-size", "0", "--config", config).stdout)
    _rewrite_one_pixel(some_file)
    changed = planned_jobs(snakemake(work, "-n", "--config", config).stdout)
    for jobs in (touched, changed):
        per_subject = {(rule, subject) for rule, subject in jobs if subject}
        assert per_subject == {(rule, outsider) for rule in PER_SUBJECT}
        assert {rule for rule, subject in jobs if not subject} <= MODEL_RULES | {"all"}


def test_bad_sheet_fails_before_any_job(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("subject\tdicom\nok\td\n../escape\td\n")
    done = snakemake(tmp_path, "-n", "--config", f"samples={sheet}", check=False)
    assert done.returncode != 0
    assert "row 2 (line 3): illegal subject ID '../escape'" in done.stderr + done.stdout
    assert not (tmp_path / "results").exists()


def test_lint_is_clean() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(PROJECT_ROOT / "Snakefile"), "--lint"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Lints for" not in done.stdout + done.stderr, done.stdout + done.stderr
