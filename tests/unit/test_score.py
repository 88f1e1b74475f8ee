"""Scoring volumes against a study bundle (lungclam.score): the study's model, HU window,
embedding scale and CLAM settings come from the bundle, and a study subject scored again
gets its study q and map back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lungclam.atomic import write_table
from lungclam.clam import clam_image, restrict_to_mask
from lungclam.dec import ClusteringModel, clusters_table
from lungclam.errors import SubjectError
from lungclam.model import ConvAutoencoder, ModelSpec, save_checkpoint
from lungclam.score import score_volumes
from lungclam.study import StudyBundle, load_bundle, write_bundle

GRID = (8, 8, 8)
SCALE = 1.7
# Not the defaults, so that scoring with the current config's or the library's defaults fails.
CONFIG = {
    "model": {"hu_window": [-1000, 100], "mixed_precision": False},
    "clam": {"chunk_size": 3, "mask_to_lungs": True},
}


def _on_grid(array: np.ndarray, spacing: float = 6.0) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((spacing,) * 3)
    image.SetOrigin((-21.0, -30.0, 12.5))
    return image


@pytest.fixture
def lungs() -> np.ndarray:
    mask = np.zeros(GRID, np.uint8)
    mask[1:7, 2:6, 1:4], mask[1:7, 2:6, 5:8] = 1, 1
    return mask


@pytest.fixture
def volumes(lungs: np.ndarray) -> dict[str, sitk.Image]:
    rng = np.random.default_rng(3)
    out = {}
    for i in range(6):
        hu = np.full(GRID, -1024.0, np.float32)
        hu[lungs > 0] = rng.normal(-850 + 60 * i, 120, int(lungs.sum()))
        out[f"s{i}"] = _on_grid(hu)
    return out


@pytest.fixture
def study(tmp_path: Path, lungs: np.ndarray, volumes: dict[str, sitk.Image]) -> StudyBundle:
    torch.manual_seed(1)
    cae = ConvAutoencoder(ModelSpec(input_shape=GRID, channels=(3, 5), strides=(2, 2), latent_dim=4))
    centroids = torch.randn(3, 4)
    save_checkpoint(tmp_path / "dec.pt", cae, centroids, meta={"scale": SCALE})
    write_table(clusters_table(list(volumes), np.full((len(volumes), 3), 1 / 3)), tmp_path / "clusters.tsv")
    sitk.WriteImage(_on_grid(lungs), str(tmp_path / "grid_mask.nii.gz"))
    sitk.WriteImage(_on_grid(np.zeros(GRID, np.float32)), str(tmp_path / "grid_template.nii.gz"))
    write_bundle(
        tmp_path / "study",
        template=tmp_path / "grid_template.nii.gz",
        template_mask=tmp_path / "grid_mask.nii.gz",
        grid_template=tmp_path / "grid_template.nii.gz",
        grid_mask=tmp_path / "grid_mask.nii.gz",
        model=tmp_path / "dec.pt",
        clusters=tmp_path / "clusters.tsv",
        config=CONFIG,
    )
    return load_bundle(tmp_path / "study")


def _expected_q(study: StudyBundle, volumes: dict[str, sitk.Image]) -> tuple[np.ndarray, ClusteringModel, torch.Tensor]:
    """q by the DEC formula (Student t, alpha 1) on embeddings / scale, written out here."""
    from lungclam.model import build_autoencoder, load_checkpoint

    ckpt = load_checkpoint(study.files["model"])
    cae = build_autoencoder(ckpt).eval()
    hu = np.stack([sitk.GetArrayFromImage(v) for v in volumes.values()])
    x = torch.from_numpy(np.clip((hu + 1000) / 1100, 0, 1).astype(np.float32))[:, None]
    with torch.no_grad():
        z = cae.encode(x).double().numpy() / SCALE
    kernel = 1 / (1 + ((z[:, None, :] - ckpt.centroids.double().numpy()[None]) ** 2).sum(-1))
    return kernel / kernel.sum(1, keepdims=True), ClusteringModel(cae, ckpt.centroids, scale=SCALE).eval(), x


def test_scores_follow_the_studys_model_window_and_scale(
    study: StudyBundle, volumes: dict[str, sitk.Image], lungs: np.ndarray
) -> None:
    q, maps = score_volumes(study, volumes)
    expected_q, model, x = _expected_q(study, volumes)
    np.testing.assert_allclose(q, expected_q, atol=1e-5)
    assert q.std(0).max() > 1e-3  # the test data must separate the subjects at all
    assert maps.shape == (len(volumes), *GRID) and maps.dtype == np.float32
    for i in range(len(volumes)):
        maps_all, _ = clam_image(model, x[i], chunk_size=3)
        expected = restrict_to_mask(maps_all[int(expected_q[i].argmax())].numpy(), lungs > 0)
        np.testing.assert_allclose(maps[i], expected, atol=1e-5)
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6 and not maps[:, lungs == 0].any()


def test_scoring_does_not_depend_on_order_or_company(study: StudyBundle, volumes: dict[str, sitk.Image]) -> None:
    q, maps = score_volumes(study, volumes)
    last = list(volumes)[-1]
    q_one, maps_one = score_volumes(study, {last: volumes[last]})
    np.testing.assert_allclose(q_one[0], q[-1], atol=1e-6)
    np.testing.assert_allclose(maps_one[0], maps[-1], atol=1e-6)


def test_a_volume_off_the_study_grid_is_refused_naming_its_subject(
    study: StudyBundle, volumes: dict[str, sitk.Image]
) -> None:
    volumes["s9"] = _on_grid(np.full(GRID, -1024.0, np.float32), spacing=3.0)
    with pytest.raises(SubjectError, match=r"subject 's9': volume of size .* not on the study's model grid"):
        score_volumes(study, volumes)
