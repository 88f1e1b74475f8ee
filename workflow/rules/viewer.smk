# The offline viewer: one HTML page (NiiVue, vendored) of the model-grid scans, the
# subjects' CLAMs and the cluster-mean CLAMs on the template. It embeds the very files the
# rules above wrote, so it shows the same subjects, clusters and maps. A cohort of more than
# viewer.max_subjects_per_page subjects gets an index (template, mean CLAMs, subject list)
# plus one page per subject under results/viewer/subjects/ (README: The viewer).

# NiiVue 0.69.0: dist/niivue.umd.js of the npm package @niivue/niivue (README: updating it).
NIIVUE_JS = os.path.join(workflow.basedir, "workflow/resources/niivue/niivue-0.69.0.umd.js")
# Decided when the workflow is read, so that the subject pages are a declared output (a
# directory: Snakemake empties it before the rule runs, so no page of an earlier cohort stays).
VIEWER_SPLIT = len(SUBJECTS) > config["viewer"]["max_subjects_per_page"]


rule viewer:
    input:
        template="results/template/grid_template.nii.gz",
        mask="results/template/grid_mask.nii.gz",
        cluster_means=clam_cluster_means,
        population_mean="results/clam/population_mean.nii.gz",
        scans=model_inputs(),
        clams=expand("results/clam/{subject}.nii.gz", subject=SUBJECTS),
        clusters="results/clusters.tsv",
        niivue=NIIVUE_JS,
    output:
        **({"subject_pages": directory("results/viewer/subjects")} if VIEWER_SPLIT else {}),
        page=report("results/viewer/index.html", caption="../report/viewer.rst", category="Viewer"),
    log:
        "results/logs/viewer.log",
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    params:
        subjects=SUBJECTS,
        max_subjects_per_page=config["viewer"]["max_subjects_per_page"],
    script:
        "../scripts/viewer.py"
