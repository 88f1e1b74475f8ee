# Clusters against the clinical table: the paper's Table 2, outcome regressions and the
# variance each grouping explains. Skipped (not in `rule all`) when there is no table.


rule stats:
    input:
        clusters="results/clusters.tsv",
        clinical=clinical_table() or [],
    output:
        demographics=report(
            "results/stats/demographics.tsv",
            caption="../report/demographics.rst",
            category="Clinical associations",
        ),
        associations=report(
            "results/stats/associations.tsv",
            caption="../report/associations.rst",
            category="Clinical associations",
        ),
        variance=report(
            "results/stats/variance_explained.tsv",
            caption="../report/variance_explained.rst",
            category="Clinical associations",
        ),
    log:
        "results/logs/stats.log",
    conda:
        "../../envs/model.yaml"
    threads: 1
    params:
        covariates=config["covariates"],
        outcomes=config["outcomes"],
        comparator=config["comparator"],
        settings=config["stats"],
    script:
        "../scripts/stats.py"
