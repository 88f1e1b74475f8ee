"""Snakemake glue: the clustering phase (DEC layer) on the pretrained CAE."""

import logging

import pandas as pd

from lungclam.atomic import write_table
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.dec import ClusterGuard, clusters_table, fit_clusters
    from lungclam.device import seed_everything
    from lungclam.imageio import load_volumes
    from lungclam.kselect import resampling_from_config, resolve_n_clusters
    from lungclam.model import build_autoencoder, load_checkpoint, resolve_device, save_checkpoint
    from lungclam.stability import replica_confidence
    from lungclam.train import embed_images, features_table

    log = logging.getLogger("lungclam.cluster")
    m, c = smk.params.model, smk.params.settings
    subjects = list(smk.params.subjects)
    k = resolve_n_clusters(smk.params.n_clusters, pd.read_csv(smk.input.k_selection, sep="\t"))
    images = load_volumes(smk.input.volumes, subjects, *m["hu_window"])
    device = resolve_device(m["device"])
    seed_everything(smk.params.seed, device)
    autoencoder = build_autoencoder(load_checkpoint(smk.input.model))
    log.info("clustering %d images into K=%d on %s", len(images), k, device)
    fit = fit_clusters(
        autoencoder,
        images,
        k,
        max_epochs=c["max_epochs"],
        batch_size=c["batch_size"],
        learning_rate=c["learning_rate"],
        gamma=c["gamma"],
        update_interval=c["update_interval"],
        tol=c["tol"],
        n_init=c["n_init"],
        seed=smk.params.seed,
        device=device,
        mixed_precision=m["mixed_precision"],
        guard=ClusterGuard.from_config(c),
        progress=log.info,
    )
    sizes = pd.Series(fit.labels + 1).value_counts().sort_index().to_dict()
    log.info("stopped: %s; cluster sizes %s", fit.stop_reason, sizes)
    if len(sizes) < k:
        log.warning(
            "the clustering phase left %d of K=%d clusters empty; consider a smaller K, more "
            "pretraining epochs or a lower cluster.learning_rate",
            k - len(sizes),
            k,
        )
    save_checkpoint(
        smk.output.model,
        fit.model.autoencoder,
        fit.model.centroids,
        meta={
            "subjects": subjects,
            "n_clusters": k,
            "converged": fit.converged,
            "stop_reason": fit.stop_reason,
            "scale": float(fit.model.scale),
        },
    )
    pretrained = pd.read_csv(smk.input.features_pretrain, sep="\t").set_index("subject").loc[subjects].to_numpy()
    confidence = replica_confidence(
        pretrained, fit.labels, k, resampling_from_config(smk.params.choose_k), smk.params.seed
    )
    log.info(
        "confidence (share of %d subsample clusterings that agree): median %.2f, %d of %d subjects below 0.9",
        smk.params.choose_k["n_replicas"],
        float(pd.Series(confidence).median()),
        int((confidence < 0.9).sum()),
        len(confidence),
    )
    table = clusters_table(subjects, fit.q)
    table.insert(2, "confidence", confidence)
    write_table(table, smk.output.clusters, float_format="%.6g")
    write_table(fit.history, smk.output.loss)
    features = features_table(subjects, embed_images(fit.model.autoencoder, images, device=device))
    write_table(features, smk.output.features, float_format="%.6g")


run_job("cluster", main, smk.log[0], smk.threads)
