"""Snakemake glue: DICOM folder -> NIfTI (HU, int16) + de-identified JSON sidecar."""

from lungclam.dicom import convert_subject
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821  (injected by Snakemake)

run_job(
    "convert",
    lambda: convert_subject(
        smk.params.folder,
        smk.wildcards.subject,
        smk.output.nifti,
        smk.output.sidecar,
        patient_id=smk.params.patient_id or None,
        study_uid=smk.params.study_uid or None,
    ),
    smk.log[0],
    smk.threads,
)
