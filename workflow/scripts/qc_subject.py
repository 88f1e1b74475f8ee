"""Snakemake glue: one subject's QC page (lung mask on the scan; registered scan with the
template's lung outline), in three planes."""

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.figures import qc_figure
    from lungclam.imageio import read_image, to_lps
    import SimpleITK as sitk

    image, labels = to_lps(read_image(smk.input.image)), to_lps(read_image(smk.input.labels))
    registered = to_lps(read_image(smk.input.registered))
    template_mask = to_lps(read_image(smk.input.template_mask))
    qc_figure(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(registered),
              sitk.GetArrayFromImage(template_mask), smk.output[0], smk.wildcards.subject,
              spacing=image.GetSpacing(), registered_spacing=registered.GetSpacing())


run_job("qc_subject", main, smk.log[0], smk.threads)
