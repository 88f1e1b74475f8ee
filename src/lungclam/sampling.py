"""Seeded subject sampling, importable without ITK or ANTs (the workflow calls it at parse time)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def sample_subjects(
    subjects: list[str], fraction: float, minimum: int, seed: int, exclude: Iterable[str] = ()
) -> list[str]:
    """A seeded random sample of ``fraction`` of the subjects, at least ``minimum`` (sorted).

    The sample depends only on the sorted subject list and the seed, not on sheet order.
    ``exclude`` (subjects left out of the run) are replaced by further seeded draws from the
    others, so leaving out a subject outside the sample keeps the sample, and the template.
    """
    pool = sorted(subjects)
    n = min(len(pool), max(minimum, int(round(fraction * len(pool)))))
    rng = np.random.default_rng(seed)
    picked = rng.choice(pool, size=n, replace=False).tolist()
    excluded = set(exclude)
    if excluded & set(picked):
        kept = [s for s in picked if s not in excluded]
        rest = [s for s in pool if s not in excluded and s not in kept]
        need = min(n - len(kept), len(rest))
        picked = kept + (rng.choice(rest, size=need, replace=False).tolist() if need else [])
    return sorted(picked)
