"""`snakemake score`: new scans scored against a finished study (the tiny demo run), for
real, and every refusal made at parse time, before any job, in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from sklearn.metrics import adjusted_rand_score

from lungclam.study import MANIFEST, sha256
from tests.snakemake_runs import planned_jobs, snakemake

pytestmark = pytest.mark.workflow

# This run's own settings, all unlike the study's (tests/configs/tiny.yaml): scoring must
# take the study's from its bundle, so a study subject still comes back bit for bit.
OTHER_SETTINGS = {
    "seed": 3,
    "resample": {"spacing_mm": 4.0},
    "register": {"reg_iterations": [5, 0, 0], "margin_mm": 6.0},
    "downsample": {"background_hu": -1000, "fill_outside_lungs": False},
    "model": {"hu_window": [-1000, 100]},
    "clam": {"mask_to_lungs": False, "chunk_size": 3},
    "outcomes": ["crp"],
    "comparator": "",
    "stats": {"reference_cluster": 2},
}


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _sheet(path: Path, rows: dict[str, Path]) -> Path:
    """A samples sheet: subject -> DICOM folder."""
    pd.DataFrame({"subject": list(rows), "dicom": [str(d) for d in rows.values()]}).to_csv(path, sep="\t", index=False)
    return path


def _overlay(path: Path, settings: dict) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime in ns)."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def _refusal(workdir: Path, *args: str, overlays: tuple[Path, ...] = ()) -> str:
    """Dry-run `snakemake score` (config overlays after the tiny config) expecting a refusal;
    returns its one line. No job may run."""
    done = snakemake(workdir, *map(str, overlays), "-n", "score", *args, check=False)
    assert done.returncode != 0, done.stdout[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("lungclam: configuration error")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not (workdir / "results" / "score").exists()
    return lines[0]


@pytest.fixture
def bundle_copy(demo_run: Path, tmp_path: Path) -> Path:
    """The demo study's bundle copied elsewhere (as a user might ship it)."""
    return Path(shutil.copytree(demo_run / "study", tmp_path / "shipped" / "study"))


@pytest.mark.slow(seconds=35)  # four subjects' imaging chain, scoring and statistics
def test_study_subjects_scored_again_get_their_study_cluster_q_clam_and_statistics(
    demo_run: Path, tmp_path: Path
) -> None:
    """The study's cohort scored again in another working directory whose own settings all
    differ: three subjects under their own IDs (allow_study_subjects), one under a new ID,
    with the study's clinical table (that row renamed too)."""
    dicom = demo_run / "demo" / "dicom"
    same_scans = {"demo001": "demo001", "demo002": "demo002", "later003": "demo003", "demo004": "demo004"}
    sheet = _sheet(tmp_path / "new.tsv", {subject: dicom / scan for subject, scan in same_scans.items()})
    clinical = pd.read_csv(demo_run / "demo" / "clinical.tsv", sep="\t", dtype={"subject": str})
    clinical["subject"] = clinical["subject"].replace({"demo003": "later003"})
    clinical.to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    overlay = _overlay(tmp_path / "score.yaml", {**OTHER_SETTINGS, "score": {"allow_study_subjects": True}})
    study_files = _tree(demo_run)
    workdir = tmp_path / "scoring"
    config = ("--config", f"study={demo_run}", f"samples={sheet}", f"clinical={tmp_path / 'clinical.tsv'}")
    snakemake(workdir, str(overlay), "--cores", "2", "score", *config)
    report = workdir / "score_report.html"
    snakemake(workdir, str(overlay), "--report", str(report), "score", *config)
    assert _tree(demo_run) == study_files  # the study is only read
    html = report.read_text()
    assert "Scoring" in html and "New subjects scored against a finished study" in html
    assert all(f"results/score/qc/{subject}.png" in html for subject in same_scans)

    out = workdir / "results" / "score"
    study = pd.read_csv(demo_run / "clusters.tsv", sep="\t").set_index("subject")
    scored = pd.read_csv(out / "clusters.tsv", sep="\t").set_index("subject")
    k = sum(c.startswith("q_") for c in study.columns)
    q_columns = [f"q_{i}" for i in range(1, k + 1)]
    assert scored.columns.tolist() == ["cluster", *q_columns]
    assert scored.index.tolist() == list(same_scans)
    grid = sitk.ReadImage(str(demo_run / "template" / "grid_template.nii.gz"))
    for subject, in_study in same_scans.items():
        assert scored.loc[subject, "cluster"] == study.loc[in_study, "cluster"], subject
        np.testing.assert_allclose(
            scored.loc[subject, q_columns].to_numpy(float), study.loc[in_study, q_columns].to_numpy(float), atol=1e-5
        )
        # Registration is seeded and single-threaded (the study's register.threads): the
        # whole imaging chain reproduces the study's volumes exactly.
        np.testing.assert_array_equal(
            _array(out / "registered" / f"{subject}.nii.gz"), _array(demo_run / "registered" / f"{in_study}.nii.gz")
        )
        clam = sitk.ReadImage(str(out / "clam" / f"{subject}.nii.gz"))
        assert clam.GetSize() == grid.GetSize() and np.allclose(clam.GetSpacing(), grid.GetSpacing())
        assert np.allclose(clam.GetOrigin(), grid.GetOrigin())
        np.testing.assert_allclose(
            sitk.GetArrayFromImage(clam), _array(demo_run / "clam" / f"{in_study}.nii.gz"), atol=1e-5
        )
        assert (out / "qc" / f"{subject}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stage in ("convert", "resample", "segment", "register", "downsample", "assign"):
        assert (workdir / "results" / "logs" / "score" / stage / "later003.log").is_file(), stage
    clusters_log = (workdir / "results" / "logs" / "score" / "clusters.log").read_text()
    assert "scored 4 subject(s) against the study" in clusters_log
    # The study's association models (its outcomes, comparator and reference cluster, not
    # this run's) refitted on the same subjects, clusters and clinical rows: the study's tables.
    for name in ("demographics", "associations", "variance_explained"):
        pd.testing.assert_frame_equal(
            pd.read_csv(out / "stats" / f"{name}.tsv", sep="\t"),
            pd.read_csv(demo_run / "stats" / f"{name}.tsv", sep="\t"),
            obj=name,
        )
    # ... and set beside the study's own (from its bundle), contrast by contrast.
    beside = pd.read_csv(out / "stats" / "associations_vs_study.tsv", sep="\t")
    study_associations = pd.read_csv(demo_run / "stats" / "associations.tsv", sep="\t")
    assert beside[["outcome", "term"]].values.tolist() == study_associations[["outcome", "term"]].values.tolist()
    np.testing.assert_array_equal(beside["estimate_study"], study_associations["estimate"])
    np.testing.assert_array_equal(beside["estimate_scored"], study_associations["estimate"])


@pytest.mark.slow(seconds=20)  # one subject's imaging chain and scoring, then the statistics
def test_a_failed_new_subject_holds_back_only_the_table_and_a_reference_cluster_left_empty_is_noted(
    demo_run: Path, tmp_path: Path
) -> None:
    """Two new subjects with --keep-going: a scan of a study subject outside the study's
    reference cluster, and a broken scan (a slice cut short). The good one is assigned and
    gets its CLAM; the broken one is named with its cause. Leaving it out (exclude) then
    makes the table and the statistics without scoring anyone again; with no scored
    subject in the reference cluster, the associations say so instead of failing."""
    study = pd.read_csv(demo_run / "clusters.tsv", sep="\t").set_index("subject")
    study_associations = pd.read_csv(demo_run / "stats" / "associations.tsv", sep="\t")
    reference = int(study_associations["reference"].iloc[0])
    scan = next(subject for subject, cluster in study["cluster"].items() if cluster != reference)
    dicom = demo_run / "demo" / "dicom"
    broken = Path(shutil.copytree(dicom / "demo001", tmp_path / "broken"))
    cut = sorted(broken.iterdir())[5]
    cut.write_bytes(cut.read_bytes()[:-3000])
    sheet = _sheet(tmp_path / "new.tsv", {"new1": dicom / scan, "broken": broken})
    clinical = pd.read_csv(demo_run / "demo" / "clinical.tsv", sep="\t", dtype={"subject": str})
    clinical = clinical[clinical["subject"].isin([scan, "demo001"])]
    clinical["subject"] = clinical["subject"].replace({scan: "new1", "demo001": "broken"})
    clinical.to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    workdir = tmp_path / "wd"
    config = ("--config", f"study={demo_run}", f"samples={sheet}", f"clinical={tmp_path / 'clinical.tsv'}")

    done = snakemake(workdir, "--cores", "2", "--keep-going", "score", *config, check=False)
    assert done.returncode != 0
    out = workdir / "results" / "score"
    q_columns = [c for c in study.columns if c.startswith("q_")]
    assigned = pd.read_csv(out / "assigned" / "new1.tsv", sep="\t").set_index("subject")
    assert assigned.loc["new1", "cluster"] == study.loc[scan, "cluster"]
    np.testing.assert_allclose(
        assigned.loc["new1", q_columns].to_numpy(float), study.loc[scan, q_columns].to_numpy(float), atol=1e-5
    )
    np.testing.assert_allclose(
        _array(out / "clam" / "new1.nii.gz"), _array(demo_run / "clam" / f"{scan}.nii.gz"), atol=1e-5
    )
    assert not (out / "clusters.tsv").exists() and not (out / "stats").exists()
    assert not [p for p in out.rglob("*") if "broken" in p.name]  # nothing partial of the broken scan
    failed = pd.read_csv(workdir / "results" / "failed_subjects.tsv", sep="\t", dtype=str)
    assert failed[["subject", "rule"]].values.tolist() == [["broken", "score_convert"]]
    assert f"subject 'broken': {cut.name}: pixel data truncated" in failed.loc[0, "cause"]
    assert "subject broken [score_convert]: " in done.stderr and "--config exclude=broken" in done.stderr
    clam_written = (out / "clam" / "new1.nii.gz").stat().st_mtime_ns

    done = snakemake(workdir, "--cores", "2", "score", *config, "exclude=broken")
    jobs = [rule for rule, _ in planned_jobs(done.stdout + done.stderr)]
    assert sorted(jobs) == ["score", "score_clusters", "score_stats", "score_vs_study"]
    assert (out / "clam" / "new1.nii.gz").stat().st_mtime_ns == clam_written
    assert not (workdir / "results" / "failed_subjects.tsv").exists()
    pd.testing.assert_frame_equal(pd.read_csv(out / "clusters.tsv", sep="\t").set_index("subject"), assigned)
    # Every cluster of the study keeps its column, the empty reference one included.
    demographics = pd.read_csv(out / "stats" / "demographics.tsv", sep="\t")
    assert [c for c in demographics.columns if c.startswith("cluster_")] == [
        f"cluster_{k}" for k in range(1, len(q_columns) + 1)
    ]
    associations = pd.read_csv(out / "stats" / "associations.tsv", sep="\t")
    assert associations["outcome"].tolist() == list(dict.fromkeys(study_associations["outcome"]))
    assert (associations["reference"] == reference).all() and associations["estimate"].isna().all()
    assert (associations["note"] == f"not tested: the reference cluster {reference} has no complete rows").all()
    assert (
        f"the reference cluster {reference} holds none of them"
        in (workdir / "results" / "logs" / "score" / "stats.log").read_text()
    )
    assert (out / "stats" / "variance_explained.tsv").is_file()
    beside = pd.read_csv(out / "stats" / "associations_vs_study.tsv", sep="\t")
    studied = beside.dropna(subset=["estimate_study"])
    assert studied[["outcome", "term"]].values.tolist() == study_associations[["outcome", "term"]].values.tolist()
    assert studied["estimate_scored"].isna().all()


HOLDOUT = Path(__file__).resolve().parents[1] / "configs" / "holdout.yaml"


@pytest.mark.slow(seconds=215)  # a 9-subject study on 4 mm grids, then 6 subjects scored
def test_subjects_left_out_of_a_study_are_scored_into_the_cluster_of_their_pattern(tmp_path: Path) -> None:
    """A study trained on the demo with two subjects of each pattern left out (`exclude`);
    those six, scored against it, land in the study cluster that holds their pattern."""
    study_dir = tmp_path / "study"
    snakemake(study_dir, "--cores", "2", "results/demo/truth.tsv", configfiles=(HOLDOUT,))
    table = pd.read_csv(study_dir / "results" / "demo" / "truth.tsv", sep="\t").set_index("subject")
    truth = table["pattern"]
    # Two of each pattern from inside its severity range (not its mildest or most severe),
    # so that the study spans the severities it is asked to score.
    left_out = [
        subject for _, group in table.groupby("pattern") for subject in group.sort_values("severity").index[[1, -2]]
    ]
    assert len(left_out) == 6 and truth[left_out].nunique() == 3
    snakemake(study_dir, "--cores", "2", "--config", f"exclude={','.join(left_out)}", configfiles=(HOLDOUT,))
    study = pd.read_csv(study_dir / "results" / "clusters.tsv", sep="\t").set_index("subject")
    assert not set(left_out) & set(study.index)
    # Each study cluster named by the pattern most of its subjects have.
    majority = study["cluster"].groupby(truth[study.index]).agg(lambda c: c.mode().iloc[0])
    assert majority.nunique() == 3, f"the study did not separate the patterns: {majority.to_dict()}"

    dicom = study_dir / "results" / "demo" / "dicom"
    sheet = _sheet(tmp_path / "new.tsv", {subject: dicom / subject for subject in left_out})
    workdir = tmp_path / "scoring"
    snakemake(
        workdir,
        "--cores",
        "2",
        "score",
        "--config",
        f"study={study_dir / 'results'}",
        f"samples={sheet}",
        configfiles=(HOLDOUT,),
    )
    out = workdir / "results" / "score"
    scored = pd.read_csv(out / "clusters.tsv", sep="\t").set_index("subject")
    assert sorted(scored.index) == sorted(left_out)
    expected = truth[scored.index].map(majority)
    assert scored["cluster"].tolist() == expected.tolist()
    assert adjusted_rand_score(truth[scored.index], scored["cluster"]) == 1.0
    grid = sitk.ReadImage(str(study_dir / "results" / "template" / "grid_template.nii.gz"))
    for subject in left_out:
        clam = sitk.ReadImage(str(out / "clam" / f"{subject}.nii.gz"))
        assert clam.GetSize() == grid.GetSize() and np.allclose(clam.GetSpacing(), grid.GetSpacing())
        values = sitk.GetArrayFromImage(clam)
        assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.0, subject


def test_the_default_target_with_a_study_is_refused(demo_run: Path, tmp_path: Path) -> None:
    """`snakemake --config study=...` (no target) would train a new study on the sheet."""
    sheet = _sheet(
        tmp_path / "new.tsv",
        {"new1": demo_run / "demo" / "dicom" / "demo004", "new2": demo_run / "demo" / "dicom" / "demo003"},
    )
    workdir = tmp_path / "wd"
    done = snakemake(workdir, "-n", "--config", f"study={demo_run}", f"samples={sheet}", check=False)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("lungclam: configuration error")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "the default target trains a new study on the sheet: run `snakemake score ...`" in lines[0]
    assert not (workdir / "results").exists()
    # the same command with the score target plans the scoring
    jobs = planned_jobs(snakemake(workdir, "-n", "score", "--config", f"study={demo_run}", f"samples={sheet}").stdout)
    assert ("score_clusters", None) in jobs and ("train", None) not in jobs


def test_a_study_file_as_target_with_a_study_is_refused(demo_run: Path, tmp_path: Path) -> None:
    """`snakemake results/clusters.tsv --config study=...` would also train a new study."""
    sheet = _sheet(tmp_path / "new.tsv", {"new1": demo_run / "demo" / "dicom" / "demo004"})
    workdir = tmp_path / "wd"
    for target in ("results/clusters.tsv", "results/registered/new1.nii.gz"):
        done = snakemake(workdir, "-n", target, "--config", f"study={demo_run}", f"samples={sheet}", check=False)
        assert done.returncode != 0
        lines = [line for line in done.stderr.splitlines() if line.startswith("lungclam: configuration error")]
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert "need a template of the sheet's own, i.e. a new study: run `snakemake score ...`" in lines[0], target
        assert not (workdir / "results").exists()
    # A target that makes no study of its own (one subject's conversion) still runs.
    done = snakemake(workdir, "-n", "results/nifti/new1.nii.gz", "--config", f"study={demo_run}", f"samples={sheet}")
    assert [rule for rule, _ in planned_jobs(done.stdout + done.stderr)] == ["convert"]


def test_a_copied_bundle_plans_only_the_new_subjects_imaging_and_scoring(
    bundle_copy: Path, demo_run: Path, tmp_path: Path
) -> None:
    sheet = _sheet(tmp_path / "new.tsv", {"new1": demo_run / "demo" / "dicom" / "demo004"})
    done = snakemake(tmp_path / "wd", "-n", "score", "--config", f"study={bundle_copy}", f"samples={sheet}")
    jobs = planned_jobs(done.stdout)
    per_subject = ["score_convert", "score_resample", "score_segment", "score_register", "score_downsample"]
    per_subject.append("score_assign")
    assert sorted(jobs) == sorted(
        [(rule, "new1") for rule in per_subject] + [("score_clusters", None), ("score", None)]
    )


def test_a_study_subject_is_refused_without_allow_study_subjects(demo_run: Path, tmp_path: Path) -> None:
    sheet = _sheet(
        tmp_path / "new.tsv",
        {"fresh": demo_run / "demo" / "dicom" / "demo001", "demo002": demo_run / "demo" / "dicom" / "demo002"},
    )
    line = _refusal(tmp_path / "wd", "--config", f"study={demo_run}", f"samples={sheet}")
    assert line.endswith(
        f"1 subject(s) to score are already in the study {demo_run / 'study'} (demo002): give new "
        "subjects new IDs, or set score.allow_study_subjects: true to score study subjects again "
        "as a check"
    )


def test_a_changed_bundle_file_is_refused(bundle_copy: Path, demo_run: Path, tmp_path: Path) -> None:
    model = bundle_copy / "dec.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    sheet = _sheet(tmp_path / "new.tsv", {"new1": demo_run / "demo" / "dicom" / "demo004"})
    line = _refusal(tmp_path / "wd", "--config", f"study={bundle_copy}", f"samples={sheet}")
    assert line == (
        f"lungclam: configuration error: study bundle {bundle_copy}: dec.pt: checksum does not match "
        "the manifest (the file was changed or damaged after the study wrote it)"
    )


def test_a_study_config_without_what_scoring_needs_is_refused(
    bundle_copy: Path, demo_run: Path, tmp_path: Path
) -> None:
    """A config.yaml lacking model.hu_window, re-checksummed so only the conflict remains."""
    config_file = bundle_copy / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    del config["model"]["hu_window"]
    config_file.write_text(yaml.safe_dump(config))
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["files"]["config"]["sha256"] = sha256(config_file)
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    sheet = _sheet(tmp_path / "new.tsv", {"new1": demo_run / "demo" / "dicom" / "demo004"})
    line = _refusal(tmp_path / "wd", "--config", f"study={bundle_copy}", f"samples={sheet}")
    assert line.endswith(
        f"study bundle {bundle_copy}: config.yaml: lacks model.hu_window, which scoring needs to "
        "treat new scans as the study treated its own"
    )


def test_score_without_a_study_or_into_the_study_is_refused(bundle_copy: Path, demo_run: Path, tmp_path: Path) -> None:
    sheet = _sheet(
        tmp_path / "new.tsv",
        {"new1": demo_run / "demo" / "dicom" / "demo004", "new2": demo_run / "demo" / "dicom" / "demo003"},
    )
    line = _refusal(tmp_path / "wd", "--config", f"samples={sheet}")
    assert "snakemake score needs the study to score against: --config study=PATH" in line
    # A study under the working directory's own results/ would be written into.
    workdir = tmp_path / "shipped"  # bundle_copy is shipped/study: move it under shipped/results/
    (workdir / "results").mkdir()
    bundle = Path(shutil.move(bundle_copy, workdir / "results" / "study"))
    line = _refusal(workdir, "--config", f"study={bundle}", f"samples={sheet}")
    assert "lies under this working directory's results/, where scoring writes" in line


def test_a_clinical_table_without_the_study_outcomes_is_refused(demo_run: Path, tmp_path: Path) -> None:
    """This run's config names only columns the sheet has; the study's models read crp."""
    sheet = _sheet(tmp_path / "new.tsv", {"new1": demo_run / "demo" / "dicom" / "demo004"})
    clinical = pd.read_csv(demo_run / "demo" / "clinical.tsv", sep="\t").drop(columns=["crp"])
    clinical.to_csv(tmp_path / "clinical.tsv", sep="\t", index=False)
    overlay = _overlay(tmp_path / "own.yaml", {"outcomes": ["fvc_pct"], "comparator": ""})
    line = _refusal(
        tmp_path / "wd",
        "--config",
        f"study={demo_run}",
        f"samples={sheet}",
        f"clinical={tmp_path / 'clinical.tsv'}",
        overlays=(overlay,),
    )
    assert f"clinical sheet {tmp_path / 'clinical.tsv'}: the study's association models read column(s) ['crp']" in line
