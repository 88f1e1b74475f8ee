# Shared set-up: config and sheet validation, the subject list, input functions.
# Runs at parse time, so keep it cheap: one read of each sheet, no per-subject I/O
# beyond checking that each DICOM folder exists.

import os
import sys
from pathlib import Path

from snakemake.utils import validate

from lungclam.config_schema import config_problems, load_schema
from lungclam.errors import SheetError
from lungclam.runlock import clear_stale_lock, forget_owner, record_owner
from lungclam.runtime import visible_gpus
from lungclam.sheets import read_clinical, read_samples

# One line per problem, a misspelt key with the nearest valid one; Snakemake's validate
# (which also fills in the schema's defaults) would print the whole schema error instead.
_config_problems = config_problems(config, load_schema(os.path.join(workflow.basedir, "config", "schema.yaml")))
if _config_problems:
    sys.exit(
        "lungclam: configuration error (keys and types: config/schema.yaml):\n"
        + "\n".join(f"  {problem}" for problem in _config_problems)
    )
validate(config, schema="../../config/schema.yaml")

# A run killed outright (SIGKILL, a dead machine) leaves its lock; the same command then
# just works: the lock of a process that is gone is cleared (lungclam.runlock), and the
# profile's rerun-incomplete remakes whatever that run was writing.
_stale = clear_stale_lock()
if _stale:
    print(f"lungclam: {_stale}", file=sys.stderr)


# Subject IDs are plain names (no '/'), so per-subject outputs cannot leave their folder
# and "registered/lungmask/x" never matches a subject called "lungmask/x".
wildcard_constraints:
    subject=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    k=r"[0-9]+",
    true_k=r"[0-9]+",
    scenario=r"intensity|location|size",


def local_gpu_slot(device):
    """1 for a job that will run on a local GPU, else 0: its request of the `local_gpu`
    resource, which the workflow profile caps at 1. Such jobs all use the first visible GPU
    (model.device auto is cuda:0) and slow each other down side by side, so a local run
    takes them one at a time; jobs on the CPU (no GPU visible, or device: cpu) keep running
    in parallel. Remote executors ask for none: on Slurm each job has its own GPU
    (resources: gpu), and the cap would otherwise hold back the whole cluster."""
    return int(workflow.local_exec and device != "cpu" and visible_gpus() > 0)


DEMO = not config["samples"]
DEMO_DIR = "results/demo"


def _fail(message):
    sys.exit(f"lungclam: configuration error: {message}")


if DEMO:
    # Imported only here: the phantom module pulls in pydicom and SimpleITK, which a user
    # cohort's parse (say `snakemake -n` on a large sheet) does not need.
    from lungclam.phantom import demo_subject_ids

    SUBJECTS = demo_subject_ids(int(config["demo"]["n_subjects"]))
    SAMPLES = None
else:
    try:
        SAMPLES = read_samples(config["samples"])
    except SheetError as exc:
        _fail(exc)
    validate(SAMPLES, schema="../../config/samples.schema.yaml")
    SUBJECTS = SAMPLES["subject"].tolist()

# exclude: subjects left out of this run (say, those a --keep-going run could not process).
_exclude = config.get("exclude") or []
EXCLUDED = [s.strip() for s in (_exclude.split(",") if isinstance(_exclude, str) else _exclude) if s.strip()]
_unknown = sorted(set(EXCLUDED) - set(SUBJECTS))
if _unknown:
    _fail(f"exclude names subject(s) not in the cohort: {', '.join(_unknown)}")
COHORT = SUBJECTS  # everyone in the sheet; the template sample is drawn from it
SUBJECTS = [s for s in SUBJECTS if s not in set(EXCLUDED)]

# Scoring against a finished study (config study, workflow/rules/score.smk) needs no
# template or clustering of its own, so one new subject is enough there.
if len(SUBJECTS) < (1 if config["study"] else 2):
    _fail(f"the cohort has {len(SUBJECTS)} subject(s); a study template and clustering need at least 2 (3 to choose K)")

CLINICAL_COLUMNS = list(config.get("covariates", [])) + list(config.get("outcomes", []))
if config.get("comparator"):
    CLINICAL_COLUMNS.append(config["comparator"])
if config["clinical"]:
    try:
        CLINICAL = read_clinical(config["clinical"], CLINICAL_COLUMNS)
    except SheetError as exc:
        _fail(exc)
    validate(CLINICAL, schema="../../config/clinical.schema.yaml")
    # The statistics use the subjects with both a scan and a clinical row; say who is not.
    for _what, _who in (
        ("clinical rows without a scan in this run", sorted(set(CLINICAL.index) - set(SUBJECTS))),
        ("scans without a clinical row", [s for s in SUBJECTS if s not in CLINICAL.index]),
    ):
        if _who:
            _listed = ", ".join(_who[:10]) + (f" and {len(_who) - 10} more" if len(_who) > 10 else "")
            print(f"lungclam: warning: {len(_who)} {_what} (left out of the statistics): {_listed}", file=sys.stderr)


def clinical_table():
    """Path of the clinical table the statistics use: the configured one, or the demo's."""
    if config["clinical"]:
        return config["clinical"]
    return f"{DEMO_DIR}/clinical.tsv" if DEMO else None


def dicom_input(wildcards):
    """The subject's DICOM files (for the demo, the cohort folder the demo rule makes).

    Files, not the folder: Snakemake compares a folder's own mtime only, so a replaced or
    touched file would otherwise not re-run that subject's jobs. Only files Snakemake can
    stat are listed (lungclam.dicom_files): a broken or looping link, or a folder gone since
    the sheet was read, must not stop the DAG build for every subject; the convert job
    lists the folder again and fails that subject alone, naming the entry.
    """
    if DEMO:
        return f"{DEMO_DIR}/dicom"
    from lungclam.dicom_files import snakemake_inputs

    return snakemake_inputs(SAMPLES.loc[wildcards.subject, "dicom"])


def sample_column(column):
    """An input function giving a subject's value in an optional samples-sheet column
    ('' when the sheet lacks the column, or for the demo)."""

    def value(wildcards):
        if DEMO or column not in SAMPLES.columns:
            return ""
        return SAMPLES.loc[wildcards.subject, column]

    return value


def dicom_folder(wildcards):
    """The folder holding this subject's DICOM files."""
    if DEMO:
        return f"{DEMO_DIR}/dicom/{wildcards.subject}"
    return SAMPLES.loc[wildcards.subject, "dicom"]


def registration_settings():
    """The register settings that shape results (threads only change speed, so a new
    thread count does not re-run registrations)."""
    return {key: value for key, value in config["register"].items() if key != "threads"}


def subject_lungs(folder, settings):
    """An input function: the subject's registered lung mask under ``folder`` when the
    ``downsample`` settings (``settings(wildcards)``) fill what lies outside it, else none,
    so a run without the option does not depend on the mask."""

    def lungs(wildcards):
        if settings(wildcards).get("fill_outside_lungs", False):
            return f"{folder}/{wildcards.subject}.nii.gz"
        return []

    return lungs


def template_subjects():
    """The seeded sample of subjects the template is built from (fixed at parse time)."""
    from lungclam.sampling import sample_subjects  # not lungclam.template: that imports ANTs

    t = config["template"]
    return sample_subjects(COHORT, t["fraction"], t["min_subjects"], config["seed"], exclude=EXCLUDED)


def preprocess_targets():
    """Everything the imaging chain makes, for `rule all`."""
    targets = expand("results/downsampled/{subject}.nii.gz", subject=SUBJECTS)
    targets += ["results/template/iterations.tsv", "results/template/grid_mask.nii.gz"]
    return targets


def model_inputs():
    """The downsampled volumes the model trains on, in subject order."""
    return expand("results/downsampled/{subject}.nii.gz", subject=SUBJECTS)


def n_clusters():
    """K: the configured integer, or (n_clusters: auto) the choose_k checkpoint's choice."""
    if config["n_clusters"] != "auto":
        return int(config["n_clusters"])
    # Ask the checkpoint first: before choose_k has run (every dry run of a new cohort) it
    # raises here, and the import below (scikit-learn, about a second) is never paid.
    table = checkpoints.choose_k.get().output.table
    import pandas as pd

    from lungclam.kselect import resolve_n_clusters

    return resolve_n_clusters("auto", pd.read_csv(table, sep="\t"))


def clam_cluster_means(wildcards=None):
    """The K cluster-mean CLAMs (K known once choose_k has run, when it is auto)."""
    return expand("results/clam/cluster_{k}_mean.nii.gz", k=range(1, n_clusters() + 1))


def stats_targets():
    """The statistics tables, when there is a clinical table (the demo brings its own)."""
    if not clinical_table():
        return []
    return [f"results/stats/{name}.tsv" for name in ("demographics", "associations", "variance_explained")]


def figure_targets():
    """Figures and QC pages (the forest plot only with a clinical table)."""
    targets = [
        f"results/figures/{name}.png"
        for name in ("cluster_means", "cluster_examples", "feature_pca", "loss_curves", "qc_contact_sheet", "stability")
    ]
    if clinical_table():
        targets.append("results/figures/associations_forest.png")
    return targets


def model_targets():
    """Everything clustering and CLAM make, for `rule all`."""
    return [
        "results/clusters.tsv",
        "results/figures/k_selection.png",
        "results/model/features_clustered.tsv",
        "results/clam/subject_mean.nii.gz",
        "results/clam/population_mean.nii.gz",
    ]


def viewer_targets():
    """The offline NiiVue viewer page (workflow/rules/viewer.smk)."""
    return ["results/viewer/index.html"]


def study_targets():
    """The study bundle's manifest, written after every file it lists (workflow/rules/study.smk)."""
    from lungclam.study import MANIFEST

    return [f"results/study/{MANIFEST}"]


def simulation_case_files(name):
    """One file per (scenario, true K) case of the simulation study."""
    sim = config.get("simulation", {})
    return expand(
        f"results/simulation/cases/{{scenario}}_k{{true_k}}/{name}.tsv",
        scenario=sim.get("scenarios", ["intensity", "location", "size"]),
        true_k=sim.get("true_ks", [3, 4, 5]),
    )


def _subject_of(rule, output):
    """The subject a failed job was for (None for cohort-level jobs)."""
    try:
        return workflow.get_rule(rule).get_wildcards(output).get("subject")
    except Exception:
        return None


onstart:
    record_owner()  # this process holds the lock (lungclam.runlock)


onsuccess:
    forget_owner()
    # failed_subjects.tsv describes the last run; a run that succeeds leaves no failures.
    Path("results/failed_subjects.tsv").unlink(missing_ok=True)


onerror:
    from lungclam.failures import SCORE_STAGES, STUDY_STAGES, format_summary, summarise_failures

    forget_owner()
    try:
        _waiting = SCORE_STAGES if config["study"] else STUDY_STAGES
        print(format_summary(summarise_failures(log, _subject_of), waiting=_waiting), file=sys.stderr)
    except Exception as exc:  # the summary must never hide Snakemake's own report
        print(f"lungclam: could not summarise the failed jobs ({exc}); see the log above", file=sys.stderr)


def no_study_to_train(why):
    """An input function (it adds nothing) for the rules a new study starts from: with
    `study=` set, which is for scoring new subjects, the targets asked for would train a
    new study on the sheet instead (``why`` says how), so they are refused before any job."""

    def refuse(wildcards):
        if config["study"]:
            _fail(
                f"study={config['study']} is for scoring new subjects, but {why}: run `snakemake score ...` "
                "with the same --config to score them (or drop study= to train)"
            )
        return []

    return refuse
