# The built-in synthetic demo cohort, written as real DICOM (only when no samples are set).


rule demo:
    output:
        dicom=directory(f"{DEMO_DIR}/dicom"),
        samples=f"{DEMO_DIR}/samples.tsv",
        clinical=f"{DEMO_DIR}/clinical.tsv",
        truth=f"{DEMO_DIR}/truth.tsv",
        truth_masks=directory(f"{DEMO_DIR}/truth"),
    log:
        "results/logs/demo.log",
    benchmark:
        "results/benchmarks/demo.tsv"
    conda:
        "../../envs/imaging.yaml"
    # Subjects are drawn side by side (same files, byte for byte); capped at --cores.
    threads: 4
    params:
        n_subjects=config["demo"]["n_subjects"],
        patterns=config["demo"]["patterns"],
        seed=config["seed"] if config["demo"]["seed"] is None else config["demo"]["seed"],
        out_dir=lambda wildcards, output: os.path.dirname(output.samples),
        phantom=config["demo"].get("phantom", {}),
    script:
        "../scripts/make_demo.py"
