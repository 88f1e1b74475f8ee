# lungclam: unsupervised subtyping of lung disease in chest CT, with cluster activation maps.
# Usage: snakemake --cores all            (demo cohort, config/config.yaml)
#        snakemake --cores all --config samples=path/to/samples.tsv clinical=path/to/clinical.tsv
#        snakemake -n                     (show the jobs without running them)
import gc

from snakemake.utils import min_version

min_version("9.0")

# Snakemake keeps some tens of Python objects per job, and CPython's collector, at its
# default thresholds, walks the young ones every 700 allocations: about a tenth of a
# 1,000-subject dry run (benchmarks/dryrun_scale.py). Freezing what exists after start-up
# (Snakemake's modules) and collecting less often keeps that cost down; cyclic garbage is
# still collected.
gc.freeze()
gc.set_threshold(50_000, 20, 100)


configfile: os.path.join(workflow.basedir, "config/config.yaml")
configfile: os.path.join(workflow.basedir, "config/simulation.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/template.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/clam.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/viewer.smk"
include: "workflow/rules/study.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/simulation.smk"


rule all:
    default_target: True
    input:
        no_study_to_train("the default target trains a new study on the sheet"),
        preprocess_targets(),
        model_targets(),
        stats_targets(),
        figure_targets(),
        viewer_targets(),
        study_targets(),
