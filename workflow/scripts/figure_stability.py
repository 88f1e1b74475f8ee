"""Snakemake glue: the stability figure (stability per K, each subject's confidence),
with the check whether the clusters follow the registration rim (lungclam.rimcheck)."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821
log = logging.getLogger("figure_stability")


def rim_explained(clusters: pd.DataFrame) -> float:
    """Share of the variance of the subjects' rim shares that their clusters explain."""
    import SimpleITK as sitk

    from lungclam.rimcheck import explained_share, rim_share

    template = sitk.GetArrayFromImage(sitk.ReadImage(smk.input.template_mask))
    paths = {Path(path).name.removesuffix(".nii.gz"): path for path in smk.input.lungs}
    shares = [rim_share(sitk.GetArrayFromImage(sitk.ReadImage(paths[s])), template) for s in clusters["subject"]]
    explained = explained_share(np.asarray(shares), clusters["cluster"].to_numpy())
    log.info(
        "rim share (template lung outside each subject's registered lungs): %.1f-%.1f%%; "
        "the clusters explain %.0f%% of its variance",
        100 * min(shares),
        100 * max(shares),
        100 * explained,
    )
    return explained


def main() -> None:
    from lungclam.figures import stability_figure
    from lungclam.train import stopped_before_maximum

    stability = pd.read_csv(smk.input.stability, sep="\t")
    clusters = pd.read_csv(smk.input.clusters, sep="\t")
    plateaued = stopped_before_maximum(pd.read_csv(smk.input.pretraining, sep="\t"), smk.params.patience)
    params = smk.params
    stability_figure(
        stability,
        clusters,
        params.threshold,
        smk.output[0],
        plateaued,
        params.min_cluster_share,
        params.max_split_p,
        rim_explained(clusters),
    )


run_job("figure_stability", main, smk.log[0], smk.threads)
