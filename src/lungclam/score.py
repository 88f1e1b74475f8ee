"""Scoring scans against a finished study: the study's model assigns them, no training.

Volumes come already on the study's model grid (registered to the study template and
downsampled as the study did). Each gets its soft assignment q to the study's K clusters,
computed as the clustering stage computes the study's own q (:func:`lungclam.dec.predict`),
and the CLAM of its assigned cluster, computed as the clam stage computes the study's maps
(:func:`lungclam.clam.iter_clam`, restricted to the grid's lungs when the study's config
says ``clam.mask_to_lungs``). The study's own settings (HU window, CLAM chunk size) come
from its bundle, never from the current config, so a study subject scored again gets its
study q and map back.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

from lungclam.clam import assigned_maps, iter_clam, restrict_to_mask
from lungclam.dec import ClusteringModel, predict
from lungclam.errors import SubjectError
from lungclam.imageio import read_image
from lungclam.intensity import normalize_hu
from lungclam.model import build_autoencoder, load_checkpoint, resolve_device
from lungclam.study import StudyBundle


def study_model(study: StudyBundle) -> ClusteringModel:
    """The study's trained CAE and clustering layer (K centroids, its embedding scale)."""
    checkpoint = load_checkpoint(study.files["model"])
    return ClusteringModel(build_autoencoder(checkpoint), checkpoint.centroids, scale=checkpoint.meta.get("scale", 1.0))


def _check_grid(subject: str, image: sitk.Image, grid: sitk.Image) -> None:
    """Refuse a volume that is not on the study's model grid (size, spacing, origin, axes)."""
    same = (
        image.GetSize() == grid.GetSize()
        and np.allclose(image.GetSpacing(), grid.GetSpacing())
        and np.allclose(image.GetOrigin(), grid.GetOrigin(), atol=1e-3)
        and np.allclose(image.GetDirection(), grid.GetDirection(), atol=1e-6)
    )
    if not same:
        raise SubjectError(
            subject,
            f"volume of size {image.GetSize()} and spacing {image.GetSpacing()} mm is not on "
            f"the study's model grid ({grid.GetSize()} at {grid.GetSpacing()} mm, same origin "
            "and axes): downsample it with the study's settings",
        )


def model_inputs(study: StudyBundle, volumes: Mapping[str, sitk.Image]) -> np.ndarray:
    """Network inputs ``(N, 1, z, y, x)`` float32 in ``[0, 1]`` from HU volumes on the study's
    model grid (in the mapping's order), with the study's HU window (``model.hu_window``)."""
    grid = read_image(study.files["grid_mask"])
    arrays = []
    for subject, image in volumes.items():
        _check_grid(subject, image, grid)
        arrays.append(sitk.GetArrayFromImage(image))
    min_hu, max_hu = study.config["model"]["hu_window"]
    return normalize_hu(np.stack(arrays), min_hu, max_hu)[:, None]


def score_volumes(
    study: StudyBundle, volumes: Mapping[str, sitk.Image], device: str = "cpu", chunk_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Assign volumes to the study's clusters and map why.

    Args:
        study: a verified bundle (:func:`lungclam.study.load_bundle`).
        volumes: subject -> downsampled HU volume on the study's model grid.
        device: torch device name (``auto``: CUDA when present); the study's q are
            reproduced to about 1e-6 on the device that made them.
        chunk_size: masked inputs per CLAM forward pass; None: the study's ``clam.chunk_size``.

    Returns:
        ``q (N, K)`` float64, each row summing to 1 (cluster ``k`` is column ``k - 1``), and
        ``maps (N, z, y, x)`` float32 in ``[0, 1]``: each volume's CLAM for its assigned cluster.
    """
    images = model_inputs(study, volumes)
    model = study_model(study)
    torch_device = resolve_device(device)
    q = predict(model, images, device=torch_device)
    clam = study.config["clam"]
    if chunk_size is None and clam["chunk_size"] != "auto":
        chunk_size = int(clam["chunk_size"])
    lungs = sitk.GetArrayFromImage(read_image(study.files["grid_mask"])) > 0 if clam["mask_to_lungs"] else None
    maps = np.empty(images.shape[:1] + images.shape[2:], dtype=np.float32)
    for i, maps_all, q_clam in iter_clam(
        model, images, chunk_size, torch_device, study.config["model"]["mixed_precision"]
    ):
        own = assigned_maps(maps_all, q_clam)
        maps[i] = own if lungs is None else restrict_to_mask(own, lungs)
    return q, maps
