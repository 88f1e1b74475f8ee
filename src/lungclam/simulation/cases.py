"""One case of the simulation study (Ryan et al., section 4): pretrain once, then fit the
clustering phase for every fitted K, score it against the truth, and map CLAMs for K = true K.

A case is one (scenario, true K) pair. Images are 2D, ``(N, 1, 64, 64)`` after HU scaling
(:func:`lungclam.intensity.normalize_hu`); the model is the paper's 2D CAE unless the settings
say otherwise.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from lungclam.augment import Augmentation
from lungclam.clam import assigned_maps, iter_clam, restrict_to_mask
from lungclam.dec import fit_clusters, within_cluster_scale
from lungclam.device import seed_everything
from lungclam.intensity import normalize_hu
from lungclam.kmeans import kmeans
from lungclam.kselect import DERIVED_METHODS, RESAMPLING_METHODS, choose, resampling_table, silhouette
from lungclam.model import ConvAutoencoder, ModelSpec
from lungclam.simulation.data import (
    BaseSlice,
    active_area,
    best_match_accuracy,
    cluster_sizes,
    compare_across_clusters,
    localization_scores,
    make_scenario,
    mean_hu_in_active_area,
    simulate,
)
from lungclam.train import EarlyStopping, embed_images, pretrain

Progress = Callable[[str], None]


@dataclass
class StudySettings:
    """Sizes and training settings of the study (config ``simulation``)."""

    n_images: int = 300
    fitted_ks: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    pretrain_epochs: int = 30
    validation_fraction: float = 0.0
    patience: int = 10
    min_delta: float = 0.0
    cluster_max_epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    cluster_learning_rate: float = 1e-4
    update_interval: int = 10
    tol: float = 0.001
    gamma: float = 0.1
    n_init: int = 20
    clam_images: int = 100
    chunk_size: int | str = "auto"  # masked inputs per pass; auto: lungclam.clam.auto_chunk_size
    noise_scale: float = 1.0
    kernel_scale: str | float = "median"
    mask_to_lungs: bool = True
    hu_window: tuple[float, float] = (-1024.0, 200.0)
    model: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, float] = field(default_factory=dict)  # pretraining augmentation (lungclam.augment)
    seed: int = 0

    @property
    def clam_chunk(self) -> int | None:
        """``chunk_size`` as :func:`lungclam.clam.iter_clam` takes it (None: auto)."""
        return None if self.chunk_size == "auto" else int(self.chunk_size)

    @classmethod
    def from_config(cls, section: dict[str, Any], seed: int) -> "StudySettings":
        values = dict(section)
        values.pop("base", None)
        for key in ("fitted_ks", "hu_window"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values, seed=seed)


@dataclass
class CaseResult:
    """Tables and arrays of one case (see :func:`run_case`)."""

    accuracy: pd.DataFrame  # one row per fitted K
    k_choice: pd.DataFrame  # one row
    localization: pd.DataFrame  # per CLAM image (K = true K)
    clam_tests: pd.DataFrame  # active area and mean HU across clusters
    pretrain_loss: pd.DataFrame
    arrays: dict[str, np.ndarray]  # for the figures


def _argmax_k(scores: dict[int, float]) -> int:
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    return min(finite, key=lambda k: (-finite[k], k)) if finite else -1


def _spec(settings: StudySettings, shape: tuple[int, int]) -> ModelSpec:
    m = settings.model
    return ModelSpec(
        input_shape=shape,
        channels=tuple(m.get("channels", (32, 64, 128))),
        strides=tuple(m.get("strides", (2, 1, 2))),
        kernel=int(m.get("kernel", 4)),
        latent_dim=int(m.get("latent_dim", 60)),
        negative_slope=float(m.get("negative_slope", 0.01)),
    )


def _kernel_scale(
    setting: str | float,
    features: np.ndarray,
    k: int,
    settings: StudySettings,
    fit: tuple[np.ndarray, np.ndarray] | None = None,
) -> float | None:
    """The Student t length scale of the clustering phase for ``k`` clusters.

    ``"median"``: :func:`lungclam.dec.embedding_scale` (the pipeline's choice, None here);
    ``"within"`` or ``"<f> within"`` (e.g. ``"2 within"``): ``f`` times
    :func:`lungclam.dec.within_cluster_scale` (of ``fit``, the k-means of ``features``,
    when given); a number: that scale.
    """
    if isinstance(setting, (int, float)):
        return float(setting)
    words = str(setting).split()
    if words == ["median"]:
        return None
    if words and words[-1] == "within" and len(words) <= 2:
        factor = float(words[0]) if len(words) == 2 else 1.0
        return factor * within_cluster_scale(features, k, settings.seed, settings.n_init, fit)
    raise ValueError(
        f"simulation.kernel_scale: expected 'median', 'within', '<factor> within' or a number, got {setting!r}"
    )


def _resampling_choices(features: np.ndarray, settings: StudySettings) -> dict[str, int]:
    """K by each resampling criterion (stability, prediction strength, PAC; default
    thresholds) and by the rules derived from the stability (most_stable, and stable_split,
    the pipeline's default) on the pretrained embedding, over the fitted Ks:
    ``k_<criterion>_before``."""
    table = resampling_table(features, settings.fitted_ks, settings.seed)
    return {f"k_{method}_before": choose(table, method).k for method in (*RESAMPLING_METHODS, *DERIVED_METHODS)}


def _clam_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of up to ``n`` images, spread evenly over the true clusters (seeded)."""
    rng = np.random.default_rng(seed)
    k = int(labels.max()) + 1
    per = max(1, n // k)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in range(k)]
    return np.sort(np.concatenate(picks))


def simulate_case(
    scenario: str, true_k: int, base: BaseSlice, settings: StudySettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The case's images: ``hu (N, rows, cols)``, true labels ``(N,)``, abnormality masks
    ``(N, rows, cols)`` and the model inputs ``x (N, 1, rows, cols)`` in ``[0, 1]``."""
    hu, truth, masks = simulate(
        make_scenario(scenario, true_k, base), base, settings.n_images, settings.seed, settings.noise_scale
    )
    return hu, truth, masks, normalize_hu(hu, *settings.hu_window)[:, None]


def pretrain_case(
    x: np.ndarray,
    shape: tuple[int, int],
    settings: StudySettings,
    device: torch.device,
    progress: Progress | None = None,
) -> tuple[ConvAutoencoder, pd.DataFrame]:
    """Seed, build the study's 2D CAE for images of ``shape`` and pretrain it on ``x`` with
    the study's stopping rule; returns the model (best epoch's weights) and its loss table."""
    seed_everything(settings.seed, device)
    model = ConvAutoencoder(_spec(settings, shape))
    stopping = EarlyStopping(settings.validation_fraction, settings.patience, settings.min_delta)
    loss = pretrain(
        model,
        x,
        settings.pretrain_epochs,
        settings.batch_size,
        settings.learning_rate,
        settings.seed,
        device,
        progress=progress,
        stopping=stopping,
        augmentation=Augmentation.from_config(settings.augment),
    )
    return model, loss


def run_case(
    scenario: str,
    true_k: int,
    base: BaseSlice,
    settings: StudySettings,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> CaseResult:
    """Simulate, pretrain, cluster for each fitted K, score, and compute CLAMs at K = true K."""
    device = device or torch.device("cpu")
    say = progress or (lambda _msg: None)
    hu, truth, masks, x = simulate_case(scenario, true_k, base, settings)
    say(f"{scenario} K={true_k}: pretraining on {len(x)} images for {settings.pretrain_epochs} epochs")
    model, loss = pretrain_case(x, base.shape, settings, device, lambda msg: say(f"{scenario} K={true_k}: {msg}"))
    before = embed_images(model, x, device=device)
    # one k-means per K of the pretrained embedding serves the silhouette and the kernel scale
    kmeans_before = {k: kmeans(before, k, settings.seed, settings.n_init) for k in settings.fitted_ks}
    sil_before = {k: silhouette(before, labels) for k, (labels, _) in kmeans_before.items()}
    rows, sil_after, arrays = [], {}, {"features_before": before.astype(np.float32), "truth": truth}
    loc = tests = pd.DataFrame()
    for k in settings.fitted_ks:
        started = time.perf_counter()
        scale = _kernel_scale(settings.kernel_scale, before, k, settings, kmeans_before[k])
        fit = fit_clusters(
            copy.deepcopy(model),
            x,
            k,
            max_epochs=settings.cluster_max_epochs,
            scale=scale,
            batch_size=settings.batch_size,
            learning_rate=settings.cluster_learning_rate,
            gamma=settings.gamma,
            update_interval=settings.update_interval,
            tol=settings.tol,
            n_init=settings.n_init,
            seed=settings.seed,
            device=device,
        )
        after = embed_images(fit.model.autoencoder, x, device=device)
        sil_after[k] = silhouette(after, fit.labels)
        accuracy, _ = best_match_accuracy(truth, fit.labels)
        rows.append(
            {
                "scenario": scenario,
                "true_k": true_k,
                "fitted_k": k,
                "accuracy": accuracy,
                "ari": adjusted_rand_score(truth, fit.labels),
                "nmi": normalized_mutual_info_score(truth, fit.labels),
                "cluster_sizes": ",".join(map(str, cluster_sizes(fit.labels, k))),
                "epochs": len(fit.history),
                "converged": fit.converged,
                "stop_reason": fit.stop_reason,
                "moved": float((fit.labels != fit.start_labels).mean()),
                "silhouette_before": sil_before[k],
                "silhouette_after": sil_after[k],
                "seconds": time.perf_counter() - started,
            }
        )
        arrays[f"features_after_k{k}"] = after.astype(np.float32)
        arrays[f"labels_k{k}"] = fit.labels
        say(f"{scenario} K={true_k}: fitted K={k}: accuracy {accuracy:.3f}, sizes {rows[-1]['cluster_sizes']}")
        if k == true_k:
            lungs = base.lungs if settings.mask_to_lungs else None
            loc, tests, clam_arrays = _clam_scores(fit, x, hu, masks, truth, lungs, settings, device)
            arrays.update(clam_arrays)
    k_choice = pd.DataFrame(
        [
            {
                "scenario": scenario,
                "true_k": true_k,
                "k_silhouette_before": _argmax_k(sil_before),
                "k_silhouette_after": _argmax_k(sil_after),
                **_resampling_choices(before, settings),
            }
        ]
    )
    return CaseResult(
        pd.DataFrame(rows),
        k_choice,
        loc.assign(scenario=scenario, true_k=true_k),
        tests.assign(scenario=scenario, true_k=true_k) if len(tests) else tests,
        loss,
        arrays,
    )


def _clam_scores(
    fit,
    x: np.ndarray,
    hu: np.ndarray,
    masks: np.ndarray,
    truth: np.ndarray,
    lungs: np.ndarray | None,
    settings: StudySettings,
    device: torch.device,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """CLAMs of a subset of images for their assigned cluster; localization and the paper's tests.

    With ``lungs`` (the base slice's mask), each map is zeroed outside the lungs and
    min-maxed again inside (as the pipeline's ``clam.mask_to_lungs``): every image has
    the same null background there, so importance outside says nothing about the image.
    """
    idx = _clam_subset(truth, settings.clam_images, settings.seed)
    maps = np.zeros((len(idx), *x.shape[2:]), dtype=np.float32)
    for i, all_maps, q in iter_clam(fit.model, x[idx], settings.clam_chunk, device):
        maps[i] = assigned_maps(all_maps, q)
    if lungs is not None:
        maps = restrict_to_mask(maps, lungs)
    loc = localization_scores(maps, masks[idx]).reset_index()
    loc["image"] = idx
    loc["true_cluster"] = truth[idx]
    loc["assigned_cluster"] = fit.labels[idx]
    rows = []
    for measure, values in (
        ("active_area", active_area(maps)),
        ("mean_hu_active", mean_hu_in_active_area(hu[idx], maps)),
    ):
        result = compare_across_clusters(values, fit.labels[idx])
        rows.append(
            {
                "measure": measure,
                "anova_f": result["f_stat"],
                "anova_p": result["anova_p"],
                "kruskal_p": result["kruskal_p"],
                "means": ";".join(f"{k}:{v:.1f}" for k, v in result["means"].items()),
            }
        )
    arrays = {
        "clam_index": idx,
        "clam_maps": maps,
        "clam_images_hu": hu[idx].astype(np.float32),
        "clam_masks": masks[idx],
        "clam_labels": fit.labels[idx],
    }
    return loc, pd.DataFrame(rows), arrays


def summarise_localization(loc: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and true K: mean share of CLAM mass inside the abnormality (and with a
    2-pixel margin), and the share of images whose CLAM maximum lies inside it."""
    if loc.empty:
        return pd.DataFrame()
    cols = ["mass_inside", "mass_inside_margin", "max_inside", "max_inside_margin", "active_area"]
    out = loc.groupby(["scenario", "true_k"])[cols].mean().reset_index()
    out.insert(2, "n_images", loc.groupby(["scenario", "true_k"]).size().to_numpy())
    return out
