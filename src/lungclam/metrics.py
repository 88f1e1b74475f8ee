"""Overlap metrics for masks (numpy arrays of any shape)."""

from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two binary masks; 1.0 when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def per_label_dice(a: np.ndarray, b: np.ndarray, labels: tuple[int, ...] = (1, 2)) -> dict[int, float]:
    """Dice of each label value between two label arrays."""
    return {label: dice(np.asarray(a) == label, np.asarray(b) == label) for label in labels}
