# Cluster activation maps in template space: one map per subject for its assigned
# cluster, then the mean map of each cluster and of the population.


rule clam:
    input:
        volumes=model_inputs(),
        model="results/model/dec.pt",
        grid="results/template/grid_template.nii.gz",
        mask="results/template/grid_mask.nii.gz",
    output:
        maps=expand("results/clam/{subject}.nii.gz", subject=SUBJECTS),
        subject_mean="results/clam/subject_mean.nii.gz",
    log:
        "results/logs/clam.log",
    benchmark:
        "results/benchmarks/clam.tsv"
    conda:
        "../../envs/model.yaml"
    threads: config["model"]["threads"]
    resources:
        gpu=config["model"]["gpus"],
        local_gpu=local_gpu_slot(config["model"]["device"]),
    params:
        subjects=SUBJECTS,
        model=config["model"],
        chunk_size=config["clam"]["chunk_size"],
        mask_to_lungs=config["clam"]["mask_to_lungs"],
    script:
        "../scripts/clam.py"


rule clam_cluster_mean:
    input:
        maps=expand("results/clam/{subject}.nii.gz", subject=SUBJECTS),
        clusters="results/clusters.tsv",
    output:
        # NIfTI maps stay out of the HTML report; figures/cluster_means.png shows them.
        "results/clam/cluster_{k}_mean.nii.gz",
    log:
        "results/logs/clam_means/cluster_{k}.log",
    conda:
        "../../envs/model.yaml"
    threads: 1
    script:
        "../scripts/clam_cluster_mean.py"


rule clam_population_mean:
    input:
        cluster_means=clam_cluster_means,
    output:
        "results/clam/population_mean.nii.gz",
    log:
        "results/logs/clam_means/population.log",
    conda:
        "../../envs/model.yaml"
    threads: 1
    script:
        "../scripts/clam_population_mean.py"
