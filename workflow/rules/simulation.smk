# The paper's simulation study as its own target: `snakemake simulation`. Every
# (scenario, true K) case is one job, so cases run in parallel and on Slurm.


rule simulation_case:
    output:
        accuracy="results/simulation/cases/{scenario}_k{true_k}/accuracy.tsv",
        k_choice="results/simulation/cases/{scenario}_k{true_k}/k_choice.tsv",
        localization="results/simulation/cases/{scenario}_k{true_k}/localization.tsv",
        clam_tests="results/simulation/cases/{scenario}_k{true_k}/clam_tests.tsv",
        loss="results/simulation/cases/{scenario}_k{true_k}/pretrain_loss.tsv",
        arrays="results/simulation/cases/{scenario}_k{true_k}/arrays.npz",
    log:
        "results/logs/simulation/{scenario}_k{true_k}.log",
    benchmark:
        "results/benchmarks/simulation/{scenario}_k{true_k}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: config["simulation"]["threads"]
    # No local_gpu slot: on one GPU the cases run faster side by side (an H200: all 9 in
    # 78 s, one alone 35 s) and each holds about 1.2 GB of it (benchmarks/simulation_study.py).
    resources:
        gpu=config["model"]["gpus"],
    params:
        settings=config["simulation"],
        seed=config["seed"],
    script:
        "../scripts/simulation_case.py"


rule simulation_summary:
    input:
        accuracy=simulation_case_files("accuracy"),
        k_choice=simulation_case_files("k_choice"),
        localization=simulation_case_files("localization"),
        clam_tests=simulation_case_files("clam_tests"),
    output:
        accuracy="results/simulation/accuracy.tsv",
        k_choice="results/simulation/k_choice.tsv",
        localization=report(
            "results/simulation/localization.tsv",
            caption="../report/simulation_localization.rst",
            category="Simulation",
        ),
        clam_tests="results/simulation/clam_tests.tsv",
    log:
        "results/logs/simulation/summary.log",
    conda:
        "../../envs/model.yaml"
    threads: 1
    script:
        "../scripts/simulation_summary.py"


rule simulation:
    input:
        "results/simulation/accuracy.tsv",
        "results/simulation/k_choice.tsv",
        "results/simulation/localization.tsv",
        "results/simulation/figures/examples.png",
    localrule: True


rule simulation_figures:
    input:
        arrays=expand(
            "results/simulation/cases/{scenario}_k{true_k}/arrays.npz",
            scenario=config["simulation"]["scenarios"],
            true_k=max(config["simulation"]["true_ks"]),
        ),
    output:
        examples=report(
            "results/simulation/figures/examples.png",
            caption="../report/simulation_figures.rst",
            category="Simulation",
        ),
        pca=report(
            expand(
                "results/simulation/figures/pca_{scenario}.png",
                scenario=config["simulation"]["scenarios"],
            ),
            caption="../report/simulation_figures.rst",
            category="Simulation",
        ),
        population=report(
            "results/simulation/figures/population_clam.png",
            caption="../report/simulation_figures.rst",
            category="Simulation",
        ),
        clusters=report(
            "results/simulation/figures/cluster_clams.png",
            caption="../report/simulation_figures.rst",
            category="Simulation",
        ),
        single=report(
            "results/simulation/figures/single_clams.png",
            caption="../report/simulation_figures.rst",
            category="Simulation",
        ),
    log:
        "results/logs/simulation/figures.log",
    conda:
        "../../envs/model.yaml"
    threads: 1
    params:
        scenarios=config["simulation"]["scenarios"],
        fitted_ks=config["simulation"]["fitted_ks"],
    script:
        "../scripts/simulation_figures.py"
