# Per-subject imaging chain: DICOM -> NIfTI -> 1 mm (config) -> lung labels.


rule convert:
    input:
        dicom_input,
    output:
        nifti="results/nifti/{subject}.nii.gz",
        sidecar="results/nifti/{subject}.json",
    log:
        "results/logs/convert/{subject}.log",
    benchmark:
        "results/benchmarks/convert/{subject}.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    params:
        folder=dicom_folder,
        patient_id=sample_column("patient_id"),
        study_uid=sample_column("study_uid"),
    script:
        "../scripts/convert.py"


rule resample:
    input:
        "results/nifti/{subject}.nii.gz",
    output:
        "results/resampled/{subject}.nii.gz",
    log:
        "results/logs/resample/{subject}.log",
    benchmark:
        "results/benchmarks/resample/{subject}.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    params:
        spacing_mm=config["resample"]["spacing_mm"],
    script:
        "../scripts/resample.py"


rule segment:
    input:
        "results/resampled/{subject}.nii.gz",
    output:
        "results/lungmask/{subject}.nii.gz",
    log:
        "results/logs/segment/{subject}.log",
    benchmark:
        "results/benchmarks/segment/{subject}.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    script:
        "../scripts/segment.py"
