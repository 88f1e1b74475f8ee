# Scoring new subjects against a finished study (`snakemake score --config study=PATH
# samples=new.tsv`): each subject goes through the study's imaging chain (convert,
# resample, segment, registration to the STUDY's template, downsampling onto the STUDY's
# model grid) with the study's settings from its bundle (lungclam.study), then the study's
# model assigns it, without training, and maps why (lungclam.score). Outputs go to
# results/score/ of this working directory; the study is only read.
#
# The per-subject rules are the imaging rules themselves (`use rule`), pointed at
# results/score/ and at the bundle. Every setting that shapes results comes from the
# study's config (STUDY.config), never from this run's; only the device and threads of
# score_assign, which change speed alone, are this run's.


include: "score_common.smk"


rule score:
    input:
        score_targets,


use rule convert as score_convert with:
    output:
        nifti="results/score/nifti/{subject}.nii.gz",
        sidecar="results/score/nifti/{subject}.json",
    log:
        "results/logs/score/convert/{subject}.log",
    benchmark:
        "results/benchmarks/score/convert/{subject}.tsv"


use rule resample as score_resample with:
    input:
        "results/score/nifti/{subject}.nii.gz",
    output:
        "results/score/resampled/{subject}.nii.gz",
    log:
        "results/logs/score/resample/{subject}.log",
    benchmark:
        "results/benchmarks/score/resample/{subject}.tsv"
    params:
        spacing_mm=study_setting("resample", "spacing_mm"),


use rule segment as score_segment with:
    input:
        "results/score/resampled/{subject}.nii.gz",
    output:
        "results/score/lungmask/{subject}.nii.gz",
    log:
        "results/logs/score/segment/{subject}.log",
    benchmark:
        "results/benchmarks/score/segment/{subject}.tsv"


use rule register as score_register with:
    input:
        image="results/score/resampled/{subject}.nii.gz",
        labels="results/score/lungmask/{subject}.nii.gz",
        template=study_file("template"),
        template_mask=study_file("template_mask"),
    output:
        registered="results/score/registered/{subject}.nii.gz",
        lungmask="results/score/registered/lungmask/{subject}.nii.gz",
        affine="results/score/transforms/{subject}/0GenericAffine.mat",
        warp="results/score/transforms/{subject}/1Warp.nii.gz",
        inverse_warp="results/score/transforms/{subject}/1InverseWarp.nii.gz",
        qc=report(
            "results/score/qc/{subject}.png",
            caption="../report/score_qc.rst",
            category="Scoring",
            subcategory="QC",
            labels={"subject": "{subject}"},
        ),
    log:
        "results/logs/score/register/{subject}.log",
    benchmark:
        "results/benchmarks/score/register/{subject}.tsv"
    # The study's thread count: ANTs is bit-reproducible for a seed only at a fixed one.
    threads: STUDY.config["register"].get("threads", 1) if STUDY else 1
    params:
        settings=study_registration_settings,
        seed=lambda wildcards: STUDY.config["seed"],


use rule downsample as score_downsample with:
    input:
        registered="results/score/registered/{subject}.nii.gz",
        mask=study_file("grid_mask"),
        lungs=subject_lungs("results/score/registered/lungmask", study_setting("downsample")),
    output:
        "results/score/downsampled/{subject}.nii.gz",
    log:
        "results/logs/score/downsample/{subject}.log",
    benchmark:
        "results/benchmarks/score/downsample/{subject}.tsv"
    params:
        settings=study_setting("downsample"),


use rule stats as score_stats with:
    input:
        clusters="results/score/clusters.tsv",
        clinical=clinical_table() or [],
    output:
        demographics=report(
            SCORE_STATS_TABLES[0], caption="../report/demographics.rst", category="Scoring", subcategory="Statistics"
        ),
        associations=report(
            SCORE_STATS_TABLES[1], caption="../report/associations.rst", category="Scoring", subcategory="Statistics"
        ),
        variance=report(
            SCORE_STATS_TABLES[2],
            caption="../report/variance_explained.rst",
            category="Scoring",
            subcategory="Statistics",
        ),
    log:
        "results/logs/score/stats.log",
    params:
        covariates=study_association_setting("covariates"),
        outcomes=study_association_setting("outcomes"),
        comparator=study_association_setting("comparator"),
        settings=study_association_setting("stats"),
        cluster_labels=lambda wildcards: list(range(1, STUDY.n_clusters + 1)),


rule score_vs_study:
    input:
        scored=SCORE_STATS_TABLES[1],
        study=study_file("associations"),
    output:
        report(SCORE_VS_STUDY, caption="../report/score_vs_study.rst", category="Scoring", subcategory="Statistics"),
    log:
        "results/logs/score/vs_study.log",
    conda:
        "../../envs/model.yaml"
    threads: 1
    script:
        "../scripts/score_vs_study.py"


# One job per subject, so a subject whose scan fails (with --keep-going) holds back only
# the table of all subjects, never another subject's assignment and CLAM.
rule score_assign:
    input:
        volume="results/score/downsampled/{subject}.nii.gz",
        # Every bundle file, so a changed study re-scores; the job verifies them again.
        bundle=lambda wildcards: [str(path) for path in STUDY.files.values()],
    output:
        assigned="results/score/assigned/{subject}.tsv",
        clam="results/score/clam/{subject}.nii.gz",
    log:
        "results/logs/score/assign/{subject}.log",
    benchmark:
        "results/benchmarks/score/assign/{subject}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: config["model"]["threads"]
    resources:
        gpu=config["model"]["gpus"],
        local_gpu=local_gpu_slot(config["model"]["device"]),
    params:
        study=lambda wildcards: str(STUDY.folder),
        device=config["model"]["device"],
    script:
        "../scripts/score_assign.py"


rule score_clusters:
    input:
        assigned=expand("results/score/assigned/{subject}.tsv", subject=SUBJECTS),
    output:
        clusters=report("results/score/clusters.tsv", caption="../report/score_clusters.rst", category="Scoring"),
    log:
        "results/logs/score/clusters.log",
    conda:
        "../../envs/model.yaml"
    threads: 1
    params:
        study=lambda wildcards: str(STUDY.folder),
        n_clusters=lambda wildcards: STUDY.n_clusters,
        lungclam_version=lambda wildcards: STUDY.lungclam_version,
    script:
        "../scripts/score_clusters.py"
