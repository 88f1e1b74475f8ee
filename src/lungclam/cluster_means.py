"""Voxel-wise means of subjects' maps or scans by cluster: the one definition that the
``clam_cluster_mean`` rule and the cluster figures share.

A cluster can end up empty (DEC may leave one); its mean is an all-zero map, so that the
population mean (the mean of the K cluster means) and the figures count it the same way.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np


def cluster_mean(members: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Voxel-wise mean of one cluster's member arrays (each of ``shape``, e.g. ``(z, y, x)``);
    all zeros (float64) for a cluster without members."""
    if not len(members):
        return np.zeros(shape)
    return np.mean(members, axis=0)


def cluster_means(
    arrays: Mapping[str, np.ndarray], labels: Mapping[str, Hashable], clusters: Iterable[Hashable]
) -> dict[Hashable, np.ndarray]:
    """Mean array of each of ``clusters`` over the subjects ``labels`` assigns to it.

    Args:
        arrays: subject -> array, all of one shape.
        labels: subject -> cluster; subjects in it absent from ``arrays`` are an error.
        clusters: every cluster to report, in order, those without members included.
    """
    shape = next(iter(arrays.values())).shape
    return {k: cluster_mean([arrays[s] for s, label in labels.items() if label == k], shape) for k in clusters}
