"""Does the pretrained embedding keep the simulation's clusters? Pretraining alone, per case.

For each (scenario, true K) of the simulation study, and each pretraining setting given,
this simulates the images, pretrains the paper's 2D CAE, embeds the images and reports
how well k-means on the embedding recovers the truth (ARI at K = true K) with the k-means
silhouette at the true K, next to the epochs run and the training and held-out
reconstruction errors. No clustering phase: it isolates what pretraining does to the
embedding (issue: longer pretraining destroyed the clusters).

    .venv/bin/python benchmarks/pretraining.py --cases intensity:4 size:4 \
        --setting fixed30:epochs=30 --setting stop200:epochs=200,fraction=0.1,patience=10

A setting is NAME:key=value,... with keys epochs, fraction (held-out share), patience,
min_delta, batch, lr, shift, rotate, jitter (pretraining augmentation: shifts in voxels,
rotations in degrees, intensity jitter; lungclam.augment), and cepochs (run the
clustering phase at K = true K for at most that many epochs and report its accuracy, the
share of images it moved off their k-means start and the start's accuracy, its stop
reason and its reconstruction MSE over the pretrained one), with gamma, clr (its
learning rate), guard (0: no ClusterGuard), growth (the guard's reconstruction limit)
and moved (its limit on the share moved off the start) changing the clustering phase,
and for simulation cases kscale (the Student t scale as a multiple of the within-cluster
spread, in place of simulation.kernel_scale).

``--cohort RESULTS[:TRUTH]`` runs the same on a pipeline run's model inputs
(``downsampled/*.nii.gz``, the 3D CAE of config/config.yaml) with the true patterns from
TRUTH (default RESULTS/demo/truth.tsv), instead of simulation cases. Features are saved to
--out (npz per case and setting) for the K criteria (benchmarks/k_selection.py), with the
pretrained weights (pt), which a later run with the same --out, case and pretraining keys
reuses instead of pretraining again (so clustering phases can be compared at the cost of
the clustering phase alone).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from sklearn.metrics import adjusted_rand_score

from lungclam.augment import Augmentation
from lungclam.device import seed_everything
from lungclam.intensity import normalize_hu
from lungclam.kmeans import kmeans
from lungclam.kselect import silhouette
from lungclam.model import ConvAutoencoder
from lungclam.simulation.cases import StudySettings, _spec
from lungclam.simulation.data import builtin_base, make_scenario, simulate
from lungclam.train import EarlyStopping, embed_images, pretrain, reconstruction_error

ROOT = Path(__file__).resolve().parents[1]


PRETRAIN_KEYS = ("epochs", "fraction", "patience", "min_delta", "batch", "lr", "shift", "rotate", "jitter")


def pretrain_key(values: dict[str, float]) -> str:
    """A file-name stem of the pretraining part of a setting (the clustering keys left out)."""
    return "_".join(f"{k}{values[k]:g}" for k in PRETRAIN_KEYS if k in values) or "default"


def cluster_options(values: dict[str, float], gamma: float, learning_rate: float) -> dict:
    """fit_clusters keywords from a setting's clustering keys: gamma, clr (learning rate),
    guard (0: none), growth (the guard's reconstruction limit; 0: none), moved (the guard's
    limit on the share of images off their k-means start cluster; 0: none)."""
    from lungclam.dec import ClusterGuard

    growth = values.get("growth", ClusterGuard().max_reconstruction_growth)
    moved = values.get("moved", ClusterGuard().max_moved)
    guard = (
        ClusterGuard(max_reconstruction_growth=growth or None, max_moved=moved or None)
        if values.get("guard", 1)
        else None
    )
    return {"gamma": values.get("gamma", gamma), "learning_rate": values.get("clr", learning_rate), "guard": guard}


def parse_setting(text: str) -> tuple[str, dict[str, float]]:
    name, _, body = text.partition(":")
    values = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        values[key] = float(value)
    return name, values


def pretrain_and_score(
    model,
    images: np.ndarray,
    truth: np.ndarray,
    case: str,
    name: str,
    values: dict[str, float],
    defaults: tuple[int, int, float],
    seed: int,
    n_init: int,
    out: Path | None,
    stem: str,
) -> tuple[dict, np.ndarray]:
    """Pretrain ``model`` on ``images`` with the setting ``values`` (``defaults``: epochs,
    batch, learning rate when the setting names none), embed, and score k-means at the true
    K against ``truth``; the features go to ``out/stem.npz`` when ``out`` is given.
    Returns the table row and the features (N, J)."""
    device = torch.device("cpu")
    true_k = len(np.unique(truth))
    stopping = EarlyStopping(values.get("fraction", 0.0), int(values.get("patience", 10)), values.get("min_delta", 0.0))
    started = time.perf_counter()
    cache = out / f"{stem}.pt" if out is not None else None
    if cache is not None and cache.is_file():  # the pretrained weights of an earlier run of this setting
        saved = torch.load(cache, weights_only=False)
        model.load_state_dict(saved["state"])
        history = saved["history"]
    else:
        history = pretrain(
            model,
            images,
            int(values.get("epochs", defaults[0])),
            int(values.get("batch", defaults[1])),
            float(values.get("lr", defaults[2])),
            seed,
            device,
            stopping=stopping,
            augmentation=Augmentation(values.get("shift", 0.0), values.get("rotate", 0.0), values.get("jitter", 0.0)),
        )
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state": model.state_dict(), "history": history}, cache)
    seconds = time.perf_counter() - started
    features = embed_images(model, images, device=device)
    labels, _ = kmeans(features, true_k, seed, n_init)
    best = history.loc[history["best"]].iloc[0]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / f"{stem}.npz", features=features, truth=truth)
    row = {
        "case": case,
        "setting": name,
        "epochs_run": len(history),
        "kept_epoch": int(best["epoch"]),
        "train_mse": float(best["loss"]),
        "heldout_mse": float(best["val_loss"]),
        "kmeans_ari": adjusted_rand_score(truth, labels),
        "silhouette": silhouette(features, labels),
        "seconds": seconds,
    }
    return row, features


def run(
    scenario: str, true_k: int, name: str, values: dict[str, float], settings: StudySettings, base, out: Path | None
) -> dict:
    case = make_scenario(scenario, true_k, base)
    hu, truth, _ = simulate(case, base, settings.n_images, settings.seed, settings.noise_scale)
    x = normalize_hu(hu, *settings.hu_window)[:, None]
    device = torch.device("cpu")
    seed_everything(settings.seed, device)
    model = ConvAutoencoder(_spec(settings, base.shape))
    row, features = pretrain_and_score(
        model,
        x,
        truth,
        f"{scenario} K={true_k}",
        name,
        values,
        (30, settings.batch_size, settings.learning_rate),
        settings.seed,
        settings.n_init,
        out,
        f"{scenario}_k{true_k}_s{settings.seed}_{pretrain_key(values)}",
    )
    if "cepochs" in values:
        from lungclam.simulation.cases import _kernel_scale

        row.update(
            cluster_at_true_k(
                model,
                x,
                truth,
                values,
                gamma=settings.gamma,
                learning_rate=settings.cluster_learning_rate,
                scale=_kernel_scale(
                    f"{values['kscale']:g} within" if "kscale" in values else settings.kernel_scale,
                    features,
                    true_k,
                    settings,
                ),
                batch_size=settings.batch_size,
                update_interval=settings.update_interval,
                tol=settings.tol,
                n_init=settings.n_init,
                seed=settings.seed,
                device=device,
            )
        )
    return row


def cluster_at_true_k(model, images, truth, values, *, gamma, learning_rate, **fit_options) -> dict:
    """The clustering phase at fitted K = true K (at most ``values["cepochs"]`` epochs, the
    setting's clustering keys over ``gamma`` and ``learning_rate``; ``fit_options``: the
    rest of :func:`lungclam.dec.fit_clusters`' keywords): accuracy, ARI, cluster sizes,
    epochs, stop reason, reconstruction MSE after over before, seconds."""
    from lungclam.dec import fit_clusters
    from lungclam.simulation.data import best_match_accuracy, cluster_sizes

    true_k = len(np.unique(truth))
    started = time.perf_counter()
    before = reconstruction_error(model, torch.from_numpy(images), 64, fit_options["device"])
    fit = fit_clusters(
        model,
        images,
        true_k,
        max_epochs=int(values["cepochs"]),
        **fit_options,
        **cluster_options(values, gamma, learning_rate),
    )
    accuracy, _ = best_match_accuracy(truth, fit.labels)
    after = reconstruction_error(fit.model.autoencoder, torch.from_numpy(images), 64, fit_options["device"])
    return {
        "accuracy": accuracy,
        "dec_ari": adjusted_rand_score(truth, fit.labels),
        "sizes": ",".join(map(str, cluster_sizes(fit.labels, true_k))),
        "cluster_epochs": len(fit.history),
        "moved": float((fit.labels != fit.start_labels).mean()),
        "start_accuracy": best_match_accuracy(truth, fit.start_labels)[0],
        "stop": fit.stop_reason.split(":")[0]
        + (" (" + fit.stop_reason.split(" ")[1] + ")" if ":" in fit.stop_reason else ""),
        "recon_ratio": after / before,
        "cluster_seconds": time.perf_counter() - started,
    }


def run_cohort(spec: str, name: str, values: dict[str, float], seed: int, out: Path | None) -> dict:
    """Pretrain the pipeline's 3D CAE on a finished run's model inputs; same columns as :func:`run`."""
    from lungclam.imageio import load_volumes
    from lungclam.model import spec_from_config

    results, _, truth_path = spec.partition(":")
    results_dir = Path(results)
    truth_table = pd.read_csv(truth_path or results_dir / "demo" / "truth.tsv", sep="\t")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    subjects = truth_table["subject"].tolist()
    paths = [results_dir / "downsampled" / f"{s}.nii.gz" for s in subjects]
    images = load_volumes(paths, subjects, *config["model"]["hu_window"])
    truth = pd.factorize(truth_table["pattern"])[0]
    device = torch.device("cpu")
    seed_everything(seed, device)
    model = ConvAutoencoder(spec_from_config(config["model"], images.shape[2:]))
    t = config["train"]
    label = results_dir.parent.name if results_dir.name == "results" else results_dir.name
    row, _ = pretrain_and_score(
        model,
        images,
        truth,
        label,
        name,
        values,
        (t["epochs"], t["batch_size"], t["learning_rate"]),
        seed,
        20,
        out,
        f"{label}_s{seed}_{pretrain_key(values)}",
    )
    if "cepochs" in values:
        c = config["cluster"]
        row.update(
            cluster_at_true_k(
                model,
                images,
                truth,
                values,
                gamma=c["gamma"],
                learning_rate=c["learning_rate"],
                batch_size=c["batch_size"],
                update_interval=c["update_interval"],
                tol=c["tol"],
                n_init=c["n_init"],
                seed=seed,
                device=device,
            )
        )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["intensity:4", "size:4"], help="scenario:true_k")
    parser.add_argument("--setting", action="append", default=None, help="NAME:key=value,...")
    parser.add_argument("--cohort", action="append", default=None, help="RESULTS[:TRUTH] of a pipeline run")
    parser.add_argument("--out", type=Path, default=None, help="folder for the features (npz)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    section = yaml.safe_load((ROOT / "config" / "simulation.yaml").read_text())["simulation"]
    settings = StudySettings.from_config(
        {k: v for k, v in section.items() if k not in ("base", "scenarios", "true_ks", "threads")}, args.seed
    )
    torch.set_num_threads(1)
    base = builtin_base(seed=args.seed)
    rows = []
    for text in args.setting or ["cpu30:epochs=30"]:
        name, values = parse_setting(text)
        for spec in args.cohort or []:
            rows.append(run_cohort(spec, name, values, args.seed, args.out))
            print(
                pd.DataFrame(rows[-1:]).to_string(
                    index=False, header=len(rows) == 1, float_format=lambda v: f"{v:.4g}"
                ),
                flush=True,
            )
        for case in [] if args.cohort else args.cases:
            scenario, _, k = case.partition(":")
            rows.append(run(scenario, int(k), name, values, settings, base, args.out))
            print(
                pd.DataFrame(rows[-1:]).to_string(
                    index=False, header=len(rows) == 1, float_format=lambda v: f"{v:.4g}"
                ),
                flush=True,
            )
    print()
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
