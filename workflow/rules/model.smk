# Deep clustering: CAE pretraining, the choice of K, and the clustering (DEC) phase.
# Training and clustering ask for a GPU on Slurm (resources: gpu) and use the CPU
# wherever none is present (model.device: auto); on a local GPU they run one GPU job at
# a time (resources: local_gpu, see local_gpu_slot in common.smk).


rule train:
    input:
        volumes=model_inputs(),
    output:
        model="results/model/cae.pt",
        loss="results/model/pretrain_loss.tsv",
        features="results/model/features_pretrain.tsv",
    log:
        "results/logs/train.log",
    benchmark:
        "results/benchmarks/train.tsv"
    conda:
        "../../envs/model.yaml"
    threads: config["model"]["threads"]
    resources:
        gpu=config["model"]["gpus"],
        local_gpu=local_gpu_slot(config["model"]["device"]),
    params:
        subjects=SUBJECTS,
        model=config["model"],
        train=config["train"],
        seed=config["seed"],
    script:
        "../scripts/train.py"


checkpoint choose_k:
    input:
        features="results/model/features_pretrain.tsv",
    output:
        table=report(
            "results/model/k_selection.tsv",
            caption="../report/k_selection_table.rst",
            category="Clustering",
        ),
        choices=report(
            "results/model/k_criteria.tsv",
            caption="../report/k_criteria.rst",
            category="Clustering",
        ),
        stability="results/model/stability.tsv",
        plot=report(
            "results/figures/k_selection.png",
            caption="../report/k_selection.rst",
            category="Clustering",
        ),
    log:
        "results/logs/choose_k.log",
    benchmark:
        "results/benchmarks/choose_k.tsv"
    conda:
        "../../envs/model.yaml"
    # one process per candidate K, the same table for any count
    threads: 2
    params:
        settings=config["choose_k"],
        seed=config["seed"],
    script:
        "../scripts/choose_k.py"


rule cluster:
    input:
        volumes=model_inputs(),
        model="results/model/cae.pt",
        k_selection="results/model/k_selection.tsv",
        features_pretrain="results/model/features_pretrain.tsv",
    output:
        model="results/model/dec.pt",
        clusters="results/clusters.tsv",
        loss="results/model/cluster_loss.tsv",
        features="results/model/features_clustered.tsv",
    log:
        "results/logs/cluster.log",
    benchmark:
        "results/benchmarks/cluster.tsv"
    conda:
        "../../envs/model.yaml"
    threads: config["model"]["threads"]
    resources:
        gpu=config["model"]["gpus"],
        local_gpu=local_gpu_slot(config["model"]["device"]),
    params:
        subjects=SUBJECTS,
        n_clusters=config["n_clusters"],
        model=config["model"],
        settings=config["cluster"],
        choose_k=config["choose_k"],
        seed=config["seed"],
    script:
        "../scripts/cluster.py"
