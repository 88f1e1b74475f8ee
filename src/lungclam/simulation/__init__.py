"""The simulation study of Ryan et al., section 4, in three modules.

* :mod:`~lungclam.simulation.data`: the synthetic 2D lung slices (base slice, scenarios,
  images, abnormality masks) and the scores of a clustering made of them;
* :mod:`~lungclam.simulation.cases`: one (scenario, true K) case, pretraining, clustering
  for every fitted K and CLAMs (needs torch);
* :mod:`~lungclam.simulation.figures`: the paper's Figs 2-6 (needs matplotlib).

The names below, from :mod:`~lungclam.simulation.data`, make a base slice, draw a
scenario's images and score a clustering of them. Importing the package loads neither
torch nor matplotlib, nor SimpleITK or pydicom (the built-in base slice imports those when
it is made).
"""

from lungclam.simulation.data import (
    BACKGROUND_HU,
    BaseSlice,
    base_from_template,
    best_match_accuracy,
    builtin_base,
    cluster_sizes,
    make_scenario,
    simulate,
)

__all__ = [
    "BACKGROUND_HU",
    "BaseSlice",
    "base_from_template",
    "best_match_accuracy",
    "builtin_base",
    "cluster_sizes",
    "make_scenario",
    "simulate",
]
