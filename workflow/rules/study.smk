# The study bundle: the template, the model grid, the trained clustering model and the
# cluster numbering, with the config that made them, copied into results/study/ with a
# checksummed manifest (lungclam.study), so new scans can be scored against this study
# from this folder alone, or from a copy of it elsewhere.

from lungclam.study import BUNDLE_FILES, MANIFEST, OPTIONAL_BUNDLE_FILES


rule study_bundle:
    input:
        template="results/template/template.nii.gz",
        template_mask="results/template/template_mask.nii.gz",
        grid_template="results/template/grid_template.nii.gz",
        grid_mask="results/template/grid_mask.nii.gz",
        model="results/model/dec.pt",
        clusters="results/clusters.tsv",
        # With a clinical table, the study's associations, for scoring to set beside its own.
        associations=["results/stats/associations.tsv"] if clinical_table() else [],
    output:
        files=[f"results/study/{name}" for name in BUNDLE_FILES.values()],
        optional=[f"results/study/{OPTIONAL_BUNDLE_FILES['associations']}"] if clinical_table() else [],
        # Only the manifest goes into the HTML report: the images and the model would make
        # it as large as the bundle.
        manifest=report(f"results/study/{MANIFEST}", caption="../report/study.rst", category="Study"),
    log:
        "results/logs/study_bundle.log",
    conda:
        "../../envs/model.yaml"
    threads: 1
    params:
        config=config,
    script:
        "../scripts/study_bundle.py"
