"""Simulation figures (paper Figs 2-6): each draws a real PNG from simulated case arrays,
and the examples come one per true cluster."""

from __future__ import annotations

import numpy as np
import pytest

from lungclam.simulation import figures as SF
from lungclam.simulation.data import builtin_base, make_scenario, simulate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cases() -> dict[str, dict[str, np.ndarray]]:
    """Two scenarios at true K = 3 with the abnormality mask itself as the 'CLAM'."""
    base = builtin_base()
    out = {}
    for name in ("intensity", "location"):
        hu, truth, masks = simulate(make_scenario(name, 3, base), base, n_images=12, seed=1)
        index = np.arange(0, 12, 2)
        rng = np.random.default_rng(0)
        out[name] = {
            "truth": truth,
            "base_lungs": base.lungs,
            "clam_index": index,
            "clam_images_hu": hu[index],
            "clam_maps": masks[index].astype(np.float32),
            "clam_masks": masks[index],
            "clam_labels": truth[index],
            "features_before": rng.normal(size=(12, 5)),
            "features_after_k2": rng.normal(size=(12, 5)),
            "labels_k2": truth % 2,
            "features_after_k3": rng.normal(size=(12, 5)),
            "labels_k3": truth,
        }
    return out


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000, path.name


def test_first_of_each_finds_one_member_per_group() -> None:
    groups = np.array([2, 0, 2, 1, 0])
    assert SF._first_of_each(groups, 4) == [1, 3, 0, None]


def test_every_figure_writes_a_png(cases, tmp_path) -> None:
    SF.examples_figure(cases, tmp_path / "examples.png")
    SF.pca_grid_figure(cases["location"], [2, 3, 4], "location", tmp_path / "pca.png")
    SF.population_clam_figure(cases, tmp_path / "population.png")
    SF.cluster_clam_figure(cases, tmp_path / "clusters.png")
    SF.single_clam_figure(cases, tmp_path / "single.png")
    for name in ("examples", "pca", "population", "clusters", "single"):
        _assert_png(tmp_path / f"{name}.png")
