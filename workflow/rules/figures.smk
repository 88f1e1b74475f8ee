# Figures for readers: cluster-mean scans and CLAMs (Fig 7), example subjects (Figs 8/9),
# feature space (Fig 3), loss curves, the association forest plot (Fig 10), and QC pages.


rule figure_maps:
    input:
        volumes=model_inputs(),
        maps=expand("results/clam/{subject}.nii.gz", subject=SUBJECTS),
        cluster_means=clam_cluster_means,
        population_mean="results/clam/population_mean.nii.gz",
        clusters="results/clusters.tsv",
        mask="results/template/grid_mask.nii.gz",
    output:
        means=report(
            "results/figures/cluster_means.png",
            caption="../report/fig_cluster_means.rst",
            category="CLAM",
        ),
        examples=report(
            "results/figures/cluster_examples.png",
            caption="../report/fig_cluster_examples.rst",
            category="CLAM",
        ),
    log:
        "results/logs/figures/maps.log",
    conda:
        "../../envs/model.yaml"
    threads: 1
    params:
        seed=config["seed"],
        per_cluster=config["figures"]["examples_per_cluster"],
    script:
        "../scripts/figure_maps.py"


rule figure_model:
    input:
        before="results/model/features_pretrain.tsv",
        after="results/model/features_clustered.tsv",
        clusters="results/clusters.tsv",
        pretrain_loss="results/model/pretrain_loss.tsv",
        cluster_loss="results/model/cluster_loss.tsv",
    output:
        pca=report("results/figures/feature_pca.png", caption="../report/fig_pca.rst", category="Clustering"),
        loss=report("results/figures/loss_curves.png", caption="../report/fig_loss.rst", category="Clustering"),
    log:
        "results/logs/figures/model.log",
    conda:
        "../../envs/model.yaml"
    threads: 1
    script:
        "../scripts/figure_model.py"


rule figure_stability:
    input:
        stability="results/model/stability.tsv",
        clusters="results/clusters.tsv",
        pretraining="results/model/pretrain_loss.tsv",
        # the registration rim check (lungclam.rimcheck)
        template_mask="results/template/template_mask.nii.gz",
        lungs=expand("results/registered/lungmask/{subject}.nii.gz", subject=SUBJECTS),
    output:
        report(
            "results/figures/stability.png",
            caption="../report/fig_stability.rst",
            category="Clustering",
        ),
    log:
        "results/logs/figures/stability.log",
    conda:
        "../../envs/model.yaml"
    threads: 1
    params:
        threshold=config["choose_k"]["thresholds"]["stability"],
        min_cluster_share=config["choose_k"]["thresholds"].get("min_cluster_share"),
        max_split_p=config["choose_k"]["thresholds"].get("max_split_p"),
        patience=config["train"]["patience"],
    script:
        "../scripts/figure_stability.py"


rule figure_forest:
    input:
        "results/stats/associations.tsv",
    output:
        report(
            "results/figures/associations_forest.png",
            caption="../report/fig_forest.rst",
            category="Clinical associations",
        ),
    log:
        "results/logs/figures/forest.log",
    conda:
        "../../envs/model.yaml"
    threads: 1
    script:
        "../scripts/figure_forest.py"


rule qc_contact_sheet:
    input:
        expand("results/qc/{subject}.png", subject=SUBJECTS),
    output:
        report("results/figures/qc_contact_sheet.png", caption="../report/fig_qc.rst", category="QC"),
    log:
        "results/logs/qc/contact_sheet.log",
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    script:
        "../scripts/qc_contact_sheet.py"
