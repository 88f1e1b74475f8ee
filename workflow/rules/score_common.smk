# Parse-time set-up of `snakemake score` (workflow/rules/score.smk): the study bundle,
# verified once before any job, so that every refusal is one line and no job starts; and
# the input and params functions that point the scoring rules at the bundle.

STUDY = None  # the verified bundle (lungclam.study.StudyBundle) when config["study"] is set
if config["study"]:
    from lungclam.study import (
        StudyBundleError,
        check_scoring_config,
        load_bundle,
        study_association_settings,
        subjects_in_study,
    )

    try:
        # Checksums vouch for every file here; the scoring job reads the model itself, so a
        # dry run does not pay for importing torch.
        STUDY = load_bundle(config["study"], read_model=False)
        check_scoring_config(STUDY)
    except StudyBundleError as exc:
        _fail(exc)
    if STUDY.folder.resolve().is_relative_to(Path("results").resolve()):
        _fail(
            f"the study {STUDY.folder} lies under this working directory's results/, where scoring writes: "
            "score from another working directory (snakemake -d DIR ...), so the study is only read"
        )
    _in_study = subjects_in_study(STUDY, SUBJECTS)
    if _in_study and not config["score"]["allow_study_subjects"]:
        _listed = ", ".join(_in_study[:10]) + (f" and {len(_in_study) - 10} more" if len(_in_study) > 10 else "")
        _fail(
            f"{len(_in_study)} subject(s) to score are already in the study {STUDY.folder} ({_listed}): give new "
            "subjects new IDs, or set score.allow_study_subjects: true to score study subjects again as a check"
        )

# With a clinical table, the study's association models (its covariates, outcomes,
# comparator and stats settings, not this run's) are refitted on the scored subjects.
STUDY_ASSOCIATIONS = None
SCORE_STATS_TABLES = [
    f"results/score/stats/{name}.tsv" for name in ("demographics", "associations", "variance_explained")
]
# The study's own associations (in its bundle when it had a clinical table) beside them.
SCORE_VS_STUDY = "results/score/stats/associations_vs_study.tsv"
if STUDY is not None and clinical_table():
    try:
        STUDY_ASSOCIATIONS = study_association_settings(STUDY)
    except StudyBundleError as exc:
        _fail(exc)
    _lacking = [c for c in STUDY_ASSOCIATIONS["columns"] if c not in CLINICAL.columns] if config["clinical"] else []
    if _lacking:
        _fail(
            f"clinical sheet {config['clinical']}: the study's association models read column(s) {_lacking} "
            f"that the sheet lacks (columns: {list(CLINICAL.columns)})"
        )


def study_file(role):
    """An input function: the bundle's file of this role (lungclam.study.BUNDLE_FILES)."""
    return lambda wildcards: str(STUDY.files[role])


def study_setting(section, key=None):
    """A params function: the study's config section (or one key of it), never this run's."""

    def value(wildcards):
        return STUDY.config[section] if key is None else STUDY.config[section][key]

    return value


def study_registration_settings(wildcards):
    """The study's register settings that shape results (as registration_settings())."""
    return {key: value for key, value in STUDY.config["register"].items() if key != "threads"}


def study_association_setting(key):
    """A params function: one of the study's association settings (lungclam.study)."""
    return lambda wildcards: STUDY_ASSOCIATIONS[key]


def score_targets(wildcards=None):
    """Everything `snakemake score` makes: the clusters table, CLAMs and QC pages, and with
    a clinical table the study's association models refitted on the scored subjects (and
    set beside the study's own, when its bundle holds them)."""
    if STUDY is None:
        _fail(
            "snakemake score needs the study to score against: --config study=PATH (a finished run's results "
            "folder, or its results/study bundle)"
        )
    return [
        "results/score/clusters.tsv",
        *expand("results/score/clam/{subject}.nii.gz", subject=SUBJECTS),
        *expand("results/score/qc/{subject}.png", subject=SUBJECTS),
        *(SCORE_STATS_TABLES if STUDY_ASSOCIATIONS else []),
        *([SCORE_VS_STUDY] if STUDY_ASSOCIATIONS and "associations" in STUDY.files else []),
    ]
