"""The registration rim check (lungclam.rimcheck) and the stability verdict's caveat."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungclam.figures import stability_verdict
from lungclam.rimcheck import RIM_CAVEAT_SHARE, explained_share, rim_share


def test_rim_share_counts_template_lung_outside_the_subject() -> None:
    template = np.zeros((4, 5, 5), np.uint8)
    template[1:3, 1:4, 1:4] = 2  # 18 voxels of (left) lung
    lungs = template.copy()
    lungs[1, 1, 1:4] = 0  # the subject's lungs miss 3 of them
    lungs[0, 0, 0] = 1  # lung outside the template mask is not rim
    assert rim_share(lungs, template) == pytest.approx(3 / 18)
    assert rim_share(template, template) == 0.0
    with pytest.raises(ValueError, match="differ"):
        rim_share(lungs[:3], template)
    with pytest.raises(ValueError, match="empty"):
        rim_share(lungs, template * 0)


def test_explained_share_by_hand() -> None:
    # groups at 0 and 2, each with +/- 1 within: between SS 4 * 1, total 4 * 1 + 4 * 1
    values = np.array([-1.0, 1.0, -1.0, 1.0, 1.0, 3.0, 1.0, 3.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert explained_share(values, labels) == pytest.approx(0.5)
    assert explained_share(labels.astype(float), labels) == pytest.approx(1.0)
    assert explained_share(np.array([1.0, -1.0, 1.0, -1.0]), np.array([0, 0, 1, 1])) == pytest.approx(0.0)
    assert np.isnan(explained_share(np.ones(4), np.array([0, 0, 1, 1])))
    assert np.isnan(explained_share(values, np.zeros(8)))


def test_the_verdict_names_clusters_that_follow_the_rim() -> None:
    stability = pd.DataFrame({"k": [2], "stability": [1.0]})
    clusters = pd.DataFrame({"confidence": [1.0] * 4, "q_1": [0.5] * 4, "q_2": [0.5] * 4})
    solid, plain = stability_verdict(stability, clusters, 0.9)
    assert solid and "rim" not in plain
    _, below = stability_verdict(stability, clusters, 0.9, rim_explained=RIM_CAVEAT_SHARE - 0.01)
    assert below == plain
    solid, line = stability_verdict(stability, clusters, 0.9, rim_explained=0.74)
    assert solid and line.startswith(plain) and "the clusters explain 74% of the variance of the chest-wall rim" in line
