# Study template from a seeded sample of subjects, then every subject registered to it
# and resampled onto the model's coarse grid.


rule template:
    input:
        no_study_to_train("the targets asked for need a template of the sheet's own, i.e. a new study"),
        images=lambda wc: expand("results/resampled/{subject}.nii.gz", subject=template_subjects()),
        labels=lambda wc: expand("results/lungmask/{subject}.nii.gz", subject=template_subjects()),
    output:
        template="results/template/template.nii.gz",
        mask="results/template/template_mask.nii.gz",
        iterations="results/template/iterations.tsv",
    log:
        "results/logs/template.log",
    benchmark:
        "results/benchmarks/template.tsv"
    conda:
        "../../envs/imaging.yaml"
    # One thread by default: ANTs is bit-reproducible for a seed only single-threaded, and
    # the template fixes every later result (register.threads trades that for speed).
    threads: config["register"]["threads"]
    params:
        subjects=template_subjects(),
        settings=config["template"],
        register=registration_settings(),
        seed=config["seed"],
    script:
        "../scripts/build_template.py"


rule register:
    input:
        image="results/resampled/{subject}.nii.gz",
        labels="results/lungmask/{subject}.nii.gz",
        template="results/template/template.nii.gz",
        template_mask="results/template/template_mask.nii.gz",
    output:
        registered="results/registered/{subject}.nii.gz",
        lungmask="results/registered/lungmask/{subject}.nii.gz",
        affine="results/transforms/{subject}/0GenericAffine.mat",
        warp="results/transforms/{subject}/1Warp.nii.gz",
        inverse_warp="results/transforms/{subject}/1InverseWarp.nii.gz",
        # The QC page shows exactly this job's inputs and output; drawing it here rather
        # than in a job of its own saves a job per subject (Slurm jobs, DAG build time).
        qc="results/qc/{subject}.png",
    log:
        "results/logs/register/{subject}.log",
    benchmark:
        "results/benchmarks/register/{subject}.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: config["register"]["threads"]
    params:
        settings=registration_settings(),
        seed=config["seed"],
    script:
        "../scripts/register.py"


rule downsample_grid:
    input:
        template="results/template/template.nii.gz",
        mask="results/template/template_mask.nii.gz",
    output:
        template="results/template/grid_template.nii.gz",
        mask="results/template/grid_mask.nii.gz",
    log:
        "results/logs/downsample_grid.log",
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    params:
        settings=config["downsample"],
    script:
        "../scripts/downsample_grid.py"


rule downsample:
    input:
        registered="results/registered/{subject}.nii.gz",
        mask="results/template/grid_mask.nii.gz",
        lungs=subject_lungs("results/registered/lungmask", lambda wildcards: config["downsample"]),
    output:
        "results/downsampled/{subject}.nii.gz",
    log:
        "results/logs/downsample/{subject}.log",
    benchmark:
        "results/benchmarks/downsample/{subject}.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    params:
        settings=config["downsample"],
    script:
        "../scripts/downsample.py"
