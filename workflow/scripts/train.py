"""Snakemake glue: pretrain the CAE on the downsampled volumes, write weights and features."""

import logging

from lungclam.atomic import write_table
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.augment import Augmentation
    from lungclam.device import seed_everything
    from lungclam.imageio import load_volumes
    from lungclam.model import ConvAutoencoder, resolve_device, save_checkpoint, spec_from_config
    from lungclam.train import EarlyStopping, embed_images, features_table, pretrain, stopped_before_maximum

    log = logging.getLogger("lungclam.train")
    m, t = smk.params.model, smk.params.train
    subjects = list(smk.params.subjects)
    images = load_volumes(smk.input.volumes, subjects, *m["hu_window"])
    device = resolve_device(m["device"])
    seed_everything(smk.params.seed, device)
    model = ConvAutoencoder(spec_from_config(m, images.shape[2:]))
    stopping = EarlyStopping.from_config(t)
    augmentation = Augmentation.from_config(t.get("augment"))
    log.info(
        "pretraining on %d images %s on %s for at most %d epochs%s; %s",
        len(images),
        images.shape[2:],
        device,
        t["epochs"],
        f" ({stopping.fraction:.0%} held out to decide when to stop)" if stopping.fraction else "",
        augmentation.describe(),
    )
    history = pretrain(
        model,
        images,
        epochs=t["epochs"],
        batch_size=t["batch_size"],
        learning_rate=t["learning_rate"],
        seed=smk.params.seed,
        device=device,
        mixed_precision=m["mixed_precision"],
        progress=log.info,
        stopping=stopping,
        augmentation=augmentation,
    )
    kept = int(history.loc[history["best"], "epoch"].iloc[0])
    if stopped_before_maximum(history, stopping.patience) is False:
        log.warning(
            "pretraining reached its maximum of %d epochs while the held-out error was still improving "
            "(best at epoch %d): the embedding may be underfit; consider a larger train.epochs",
            len(history),
            kept,
        )
    save_checkpoint(smk.output.model, model, meta={"subjects": subjects, "epochs": kept, "epochs_run": len(history)})
    write_table(history, smk.output.loss)
    features = features_table(subjects, embed_images(model, images, device=device))
    write_table(features, smk.output.features, float_format="%.6g")


run_job("train", main, smk.log[0], smk.threads)
