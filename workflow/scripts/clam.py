"""Snakemake glue: CLAM of every subject for its assigned cluster, in template space."""

import logging

import numpy as np

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.clam import assigned_maps, iter_clam, restrict_to_mask
    from lungclam.dec import ClusteringModel
    from lungclam.imageio import load_volumes, read_array, read_image, write_map
    from lungclam.model import build_autoencoder, load_checkpoint, resolve_device

    log = logging.getLogger("lungclam.clam")
    m = smk.params.model
    subjects = list(smk.params.subjects)
    images = load_volumes(smk.input.volumes, subjects, *m["hu_window"])
    ckpt = load_checkpoint(smk.input.model)
    model = ClusteringModel(build_autoencoder(ckpt), ckpt.centroids, scale=ckpt.meta.get("scale", 1.0))
    reference = read_image(smk.input.grid)
    lungs = read_array(smk.input.mask) > 0 if smk.params.mask_to_lungs else None
    device = resolve_device(m["device"])
    total = np.zeros(images.shape[2:], dtype=np.float64)
    every = max(1, len(subjects) // 10)
    for i, maps, q in iter_clam(
        model,
        images,
        None if smk.params.chunk_size == "auto" else int(smk.params.chunk_size),
        device,
        m["mixed_precision"],
    ):
        own = assigned_maps(maps, q) if lungs is None else restrict_to_mask(assigned_maps(maps, q), lungs)
        write_map(own, reference, smk.output.maps[i])
        total += own
        if (i + 1) % every == 0 or i + 1 == len(subjects):
            log.info("CLAM %d/%d subjects", i + 1, len(subjects))
    write_map(total / len(subjects), reference, smk.output.subject_mean)


run_job("clam", main, smk.log[0], smk.threads)
