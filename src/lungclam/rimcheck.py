"""Do the clusters follow the registration rim rather than the disease?

Registration never matches the template's lung boundary exactly, so the template lung mask
holds a rim of the subject's chest wall and mediastinum (soft tissue, about +40 HU against
the lungs' -850). Its size varies between subjects with body habitus and registration
quality, and an autoencoder can spend its largest latent direction on it: on one demo-like
cohort (phantom seed 3, README "Choosing K") the clusters explained 74 % of the
between-subject variance of the rim share and the true patterns 15 %, while on five others
the clusters explained 0-26 %, as much as the patterns did. Disease can change the lungs'
shape too (emphysema enlarges them, fibrosis shrinks them), so a high share is a reason to
look at the registration QC pages, not proof of an artefact.

Arrays are (z, y, x) label or mask volumes on the template's grid; any value > 0 is lung.
"""

from __future__ import annotations

import numpy as np

#: The share of the rim's variance explained by the clusters at or above which the
#: stability figure's verdict carries a caveat (:func:`lungclam.figures.stability_verdict`).
RIM_CAVEAT_SHARE = 0.5


def rim_share(lungs: np.ndarray, template_mask: np.ndarray) -> float:
    """Share (0..1) of the template lung mask's voxels that lie outside the subject's
    registered lungs ``lungs`` (same grid). ValueError for different shapes or an empty
    template mask."""
    subject = np.asarray(lungs) > 0
    template = np.asarray(template_mask) > 0
    if subject.shape != template.shape:
        raise ValueError(
            f"registered lungs {subject.shape} and template mask {template.shape} differ in shape (z, y, x)"
        )
    if not template.any():
        raise ValueError("the template lung mask is empty")
    return float((~subject[template]).mean())


def explained_share(values: np.ndarray, labels: np.ndarray) -> float:
    """Share (0..1) of the variance of ``values`` (n,) between the groups of ``labels``
    (n,): the between-group sum of squares over the total (eta squared). NaN when the
    values do not vary or there are fewer than 2 groups."""
    v = np.asarray(values, dtype=float)
    groups = np.asarray(labels)
    if v.shape != groups.shape:
        raise ValueError(f"values {v.shape} and labels {groups.shape} differ in shape")
    total = float(((v - v.mean()) ** 2).sum())
    present = np.unique(groups)
    if total <= 0 or present.size < 2:
        return float("nan")
    between = sum(float((groups == g).sum() * (v[groups == g].mean() - v.mean()) ** 2) for g in present)
    return between / total
