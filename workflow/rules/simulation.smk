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
    params:
        settings=config["simulation"],
        seed=config["seed"],
    log:
        "results/logs/simulation/{scenario}_k{true_k}.log",
    benchmark:
        "results/benchmarks/simulation/{scenario}_k{true_k}.tsv"
    threads: config["simulation"]["threads"]
    resources:
        mem_mb=4000,
        gpu=config["model"]["gpus"],
    conda:
        "../../envs/model.yaml"
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
    threads: 1
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/simulation_summary.py"


rule simulation:
    localrule: True
    input:
        "results/simulation/accuracy.tsv",
        "results/simulation/k_choice.tsv",
        "results/simulation/localization.tsv",
