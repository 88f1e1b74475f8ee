"""Real snakemake runs of training, choice of K, clustering and CLAM on the tiny cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from lungclam.kselect import skipped_ks
from lungclam.model import load_checkpoint
from lungclam.score import score_volumes
from lungclam.study import load_bundle

pytestmark = pytest.mark.workflow


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_model_stages_write_their_tables(demo_run: Path) -> None:
    subjects = pd.read_csv(demo_run / "demo" / "samples.tsv", sep="\t")["subject"].tolist()
    loss = pd.read_csv(demo_run / "model" / "pretrain_loss.tsv", sep="\t")
    # tiny.yaml: at most 20 epochs, one of the 4 subjects held out to decide when to stop
    assert loss["epoch"].tolist() == list(range(1, len(loss) + 1)) and 1 <= len(loss) <= 20
    assert np.isfinite(loss[["loss", "val_loss"]].to_numpy()).all() and loss["best"].sum() == 1
    kept = loss.loc[loss["best"]].iloc[0]
    assert kept["val_loss"] == loss["val_loss"].min()
    assert load_checkpoint(demo_run / "model" / "cae.pt").meta["epochs"] == kept["epoch"]
    for name in ("features_pretrain.tsv", "features_clustered.tsv"):
        features = pd.read_csv(demo_run / "model" / name, sep="\t")
        assert features["subject"].tolist() == subjects
        assert features.shape[1] == 1 + 8  # latent_dim in tiny.yaml
    ksel = pd.read_csv(demo_run / "model" / "k_selection.tsv", sep="\t")
    assert ksel["k"].tolist() == [2, 3] and ksel["chosen"].sum() == 1
    assert ksel[["stability", "pac"]].notna().all().all()
    assert (demo_run / "figures" / "k_selection.png").stat().st_size > 1000
    criteria = pd.read_csv(demo_run / "model" / "k_criteria.tsv", sep="\t")
    assert criteria["default"].sum() == 1 and {"stability", "gap", "silhouette_kmeans"} <= set(criteria["method"])
    k = int(ksel.loc[ksel["chosen"], "k"].iloc[0])
    assert int(criteria.loc[criteria["default"], "k"].iloc[0]) == k
    stability = pd.read_csv(demo_run / "model" / "stability.tsv", sep="\t")
    assert stability["k"].tolist() == [2, 3] and stability["stability"].between(-1, 1).all()
    assert stability.loc[stability["chosen"], "k"].tolist() == [k]
    # tiny.yaml keeps the default min_cluster_share (0.1) and max_split_p (0.05)
    assert ksel["smallest_cluster"].between(0.25, 0.5).all()  # 4 subjects: 1 or 2 in the smallest cluster
    assert ksel["split_p"].between(0, 1).all()
    assert stability.loc[stability["skipped"], "k"].tolist() == skipped_ks(ksel)
    clusters = pd.read_csv(demo_run / "clusters.tsv", sep="\t")
    assert clusters["subject"].tolist() == subjects
    # confidence: a share of the 30 subsample clusterings, so a multiple of 1/30 in [0, 1]
    confidence = clusters["confidence"].to_numpy()
    assert ((confidence >= 0) & (confidence <= 1)).all()
    np.testing.assert_allclose(confidence * 30, np.round(confidence * 30), atol=1e-3)
    q = clusters[[f"q_{i}" for i in range(1, k + 1)]].to_numpy()
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-5)
    assert (clusters["cluster"].to_numpy() == q.argmax(1) + 1).all()
    assert len(pd.read_csv(demo_run / "model" / "cluster_loss.tsv", sep="\t")) >= 1
    ckpt = load_checkpoint(demo_run / "model" / "dec.pt")
    assert ckpt.centroids is not None and tuple(ckpt.centroids.shape) == (k, 8)


def test_clam_maps_are_in_template_space(demo_run: Path) -> None:
    grid = sitk.ReadImage(str(demo_run / "template" / "grid_template.nii.gz"))
    clusters = pd.read_csv(demo_run / "clusters.tsv", sep="\t")
    maps = {}
    for subject in clusters["subject"]:
        image = sitk.ReadImage(str(demo_run / "clam" / f"{subject}.nii.gz"))
        assert image.GetSize() == grid.GetSize() and image.GetSpacing() == grid.GetSpacing()
        assert np.allclose(image.GetOrigin(), grid.GetOrigin())
        assert np.allclose(image.GetDirection(), grid.GetDirection())
        maps[subject] = sitk.GetArrayFromImage(image)
        assert np.isfinite(maps[subject]).all()
        assert maps[subject].min() >= 0.0 and maps[subject].max() <= 1.0 + 1e-6
    k = sum(c.startswith("q_") for c in clusters.columns)
    means = []
    for cluster in range(1, k + 1):
        members = clusters.loc[clusters["cluster"] == cluster, "subject"]
        mean = _array(demo_run / "clam" / f"cluster_{cluster}_mean.nii.gz")
        expected = np.mean([maps[s] for s in members], axis=0) if len(members) else np.zeros_like(mean)
        np.testing.assert_allclose(mean, expected, atol=1e-6)
        means.append(mean)
    assert not (demo_run / "clam" / f"cluster_{k + 1}_mean.nii.gz").exists()
    np.testing.assert_allclose(_array(demo_run / "clam" / "population_mean.nii.gz"), np.mean(means, axis=0), atol=1e-6)
    np.testing.assert_allclose(
        _array(demo_run / "clam" / "subject_mean.nii.gz"), np.mean(list(maps.values()), axis=0), atol=1e-6
    )


def test_model_rules_log_and_benchmark(demo_run: Path) -> None:
    for stage in ("train", "choose_k", "cluster", "clam"):
        log = (demo_run / "logs" / f"{stage}.log").read_text()
        assert f"{stage} done in" in log, log[-1000:]
        assert (demo_run / "benchmarks" / f"{stage}.tsv").is_file()
    assert "pretrain epoch 1/20" in (demo_run / "logs" / "train.log").read_text()


def test_figures_and_qc_pages_are_written(demo_run: Path) -> None:
    subjects = pd.read_csv(demo_run / "clusters.tsv", sep="\t")["subject"]
    names = [
        "cluster_means",
        "cluster_examples",
        "feature_pca",
        "loss_curves",
        "qc_contact_sheet",
        "associations_forest",
        "stability",
    ]
    for path in [demo_run / "figures" / f"{n}.png" for n in names] + [demo_run / "qc" / f"{s}.png" for s in subjects]:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path


def test_study_bundle_holds_the_study_and_loads(demo_run: Path) -> None:
    study = load_bundle(demo_run)  # a results folder is a study: its bundle is results/study/
    assert study.folder == demo_run / "study"
    made_by = {
        "template": "template/template.nii.gz",
        "template_mask": "template/template_mask.nii.gz",
        "grid_template": "template/grid_template.nii.gz",
        "grid_mask": "template/grid_mask.nii.gz",
        "model": "model/dec.pt",
        "clusters": "clusters.tsv",
    }
    for role, source in made_by.items():
        assert study.files[role].read_bytes() == (demo_run / source).read_bytes(), role
    clusters = pd.read_csv(demo_run / "clusters.tsv", sep="\t")
    assert study.n_clusters == sum(c.startswith("q_") for c in clusters.columns)
    assert study.cluster_sizes == {k: int((clusters["cluster"] == k).sum()) for k in range(1, study.n_clusters + 1)}
    assert study.config["downsample"]["size"] == [48, 48, 48] and study.config["model"]["latent_dim"] == 8


def test_study_subjects_scored_again_get_their_study_q_and_clam(demo_run: Path) -> None:
    """The scoring path (lungclam.score) on the study's own model inputs, from the bundle alone."""
    study = load_bundle(demo_run / "study")
    clusters = pd.read_csv(demo_run / "clusters.tsv", sep="\t")
    volumes = {s: sitk.ReadImage(str(demo_run / "downsampled" / f"{s}.nii.gz")) for s in clusters["subject"]}
    q, maps = score_volumes(study, volumes, device="cpu")
    np.testing.assert_allclose(q, clusters[[f"q_{k}" for k in range(1, study.n_clusters + 1)]].to_numpy(), atol=1e-5)
    assert (q.argmax(1) + 1 == clusters["cluster"].to_numpy()).all()
    for subject, scored in zip(clusters["subject"], maps):
        np.testing.assert_allclose(scored, _array(demo_run / "clam" / f"{subject}.nii.gz"), atol=1e-5)
