"""Figures of the simulation study (Ryan et al., section 4, Figs 2-6).

Every figure reads the per-case arrays that :func:`lungclam.simulation.cases.run_case`
returns (and ``workflow/scripts/simulation_case.py`` saves as ``arrays.npz``), a mapping with:

* ``clam_images_hu``: ``(M, rows, cols)`` HU of the images whose CLAMs were computed;
* ``clam_maps``: ``(M, rows, cols)`` their CLAM for the assigned cluster, importance in
  ``[0, 1]``; ``clam_labels``: ``(M,)`` assigned cluster; ``clam_masks``: ``(M, rows, cols)``
  bool abnormality; ``clam_index``: ``(M,)`` their index among all N images;
* ``truth``: ``(N,)`` true cluster of every image; ``base_lungs``: ``(rows, cols)`` bool;
* ``features_before``: ``(N, J)`` pretrained embedding; ``features_after_k{K}`` and
  ``labels_k{K}`` for every fitted K.

Slices are shown as stored: row 0 anterior at the top, column 0 the patient's right on the
left (radiological view). CT in the lung window, CLAM with the ``jet`` map over it inside
the lungs only, colour bars in HU and importance (see :mod:`lungclam.figure_panels`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from lungclam.figure_panels import (
    CLAM_ALPHA,
    SliceGrid,
    bare,
    imshow_clam,
    imshow_ct,
    markers,
    new_figure,
    pc_label,
    pca2,
    row_label,
    save,
)

Arrays = Mapping[str, np.ndarray]

__all__ = [
    "cluster_clam_figure",
    "examples_figure",
    "pca_grid_figure",
    "population_clam_figure",
    "single_clam_figure",
]


def _true_of_clam_images(arrays: Arrays) -> np.ndarray:
    return np.asarray(arrays["truth"])[np.asarray(arrays["clam_index"])]


def _first_of_each(groups: np.ndarray, k: int) -> list[int | None]:
    """Position of the first member of each group 0..k-1 (None for an empty group)."""
    out: list[int | None] = []
    for g in range(k):
        hits = np.flatnonzero(groups == g)
        out.append(int(hits[0]) if hits.size else None)
    return out


def _empty(ax, text: str = "none") -> None:
    bare(ax)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8)


def _one_per_true_cluster(
    cases: Mapping[str, Arrays], draw: Callable[[Axes, Arrays, int, int], None]
) -> tuple[SliceGrid, int]:
    """A grid with one row per scenario and one column per true cluster; ``draw(ax,
    arrays, pick, column)`` fills each panel with the first mapped image of that true
    cluster (``pick`` indexes the ``clam_*`` arrays). Returns the grid and K."""
    k = max(int(np.asarray(a["truth"]).max()) + 1 for a in cases.values())
    grid = SliceGrid(len(cases), k, panel=1.5)
    for i, (scenario, arrays) in enumerate(cases.items()):
        for j, pick in enumerate(_first_of_each(_true_of_clam_images(arrays), k)):
            if pick is None:
                _empty(grid.axes[i, j])
            else:
                draw(grid.axes[i, j], arrays, pick, j)
        row_label(grid.axes[i, 0], scenario)
    return grid, k


def examples_figure(cases: Mapping[str, Arrays], path: str | Path) -> None:
    """One simulated image per true cluster, one row per scenario (the paper's Fig 2).

    ``cases`` maps a scenario name to its case arrays (one true K, e.g. 5).
    """

    def draw(ax: Axes, arrays: Arrays, pick: int, column: int) -> None:
        imshow_ct(ax, arrays["clam_images_hu"][pick])
        if column == 0:
            markers(ax, "R", "L")

    grid, k = _one_per_true_cluster(cases, draw)
    for j in range(k):
        grid.axes[0, j].set_title(f"true cluster {j}", fontsize=9)
    grid.colour_bars(importance=False)
    grid.texts(
        f"Simulated images, one per true cluster (K = {k})",
        "one disc per image; intensity, location or size differs between clusters",
    )
    save(grid.fig, path)


def pca_grid_figure(arrays: Arrays, fitted_ks: Sequence[int], title: str, path: str | Path) -> None:
    """First two principal components of the embedding before clustering (coloured by the
    true cluster) and after the clustering phase for each fitted K (coloured by the
    assigned cluster): the paper's Fig 3 for one case."""
    panels = [("before clustering (true clusters)", arrays["features_before"], arrays["truth"])]
    panels += [
        (f"after, fitted K = {k}", arrays[f"features_after_k{k}"], arrays[f"labels_k{k}"])
        for k in fitted_ks
        if f"features_after_k{k}" in arrays
    ]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = new_figure(3.0 * ncols, 2.8 * nrows)
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    for ax, (name, features, labels) in zip(axes.flat, panels):
        scores, share = pca2(np.asarray(features, dtype=float))
        labels = np.asarray(labels)
        for c in np.unique(labels):
            sel = labels == c
            ax.scatter(scores[sel, 0], scores[sel, 1], s=8, color=f"C{int(c) % 10}", alpha=0.8, linewidths=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(pc_label(0, share[0]), fontsize=8)
        ax.set_ylabel(pc_label(1, share[1]), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    n_colours = max(int(np.max(labels)) + 1 for _, _, labels in panels)
    handles = [Line2D([], [], marker="o", ls="", color=f"C{c % 10}", label=f"cluster {c}") for c in range(n_colours)]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle(title)
    save(fig, path)


def population_clam_figure(cases: Mapping[str, Arrays], path: str | Path) -> None:
    """Per scenario, the mean of the mapped images and the mean CLAM over them (the
    paper's Fig 4): CT, CLAM over CT."""
    grid = SliceGrid(len(cases), 2, panel=2.0)
    for i, (scenario, arrays) in enumerate(cases.items()):
        lungs = np.asarray(arrays["base_lungs"], dtype=bool)
        mean_ct = np.asarray(arrays["clam_images_hu"]).mean(axis=0)
        mean_clam = np.asarray(arrays["clam_maps"]).mean(axis=0)
        imshow_ct(grid.axes[i, 0], mean_ct)
        imshow_ct(grid.axes[i, 1], mean_ct)
        imshow_clam(grid.axes[i, 1], mean_clam, lungs, CLAM_ALPHA)
        markers(grid.axes[i, 0], "R", "L")
        row_label(grid.axes[i, 0], f"{scenario} (n = {len(arrays['clam_maps'])})")
    grid.axes[0, 0].set_title("mean image", fontsize=9)
    grid.axes[0, 1].set_title("mean CLAM", fontsize=9)
    grid.colour_bars()
    grid.texts("Population-averaged image and CLAM", "CLAM of each image for its assigned cluster")
    save(grid.fig, path)


def cluster_clam_figure(cases: Mapping[str, Arrays], path: str | Path) -> None:
    """Per scenario (rows) and assigned cluster (columns), the mean CLAM over the cluster's
    mapped images on their mean image (the paper's Fig 5)."""
    k = max(int(np.asarray(a["clam_labels"]).max()) + 1 for a in cases.values())
    grid = SliceGrid(len(cases), k, panel=1.5)
    for i, (scenario, arrays) in enumerate(cases.items()):
        lungs = np.asarray(arrays["base_lungs"], dtype=bool)
        labels = np.asarray(arrays["clam_labels"])
        for j in range(k):
            ax = grid.axes[i, j]
            sel = labels == j
            if not sel.any():
                _empty(ax, "no images")
                continue
            imshow_ct(ax, np.asarray(arrays["clam_images_hu"])[sel].mean(axis=0))
            imshow_clam(ax, np.asarray(arrays["clam_maps"])[sel].mean(axis=0), lungs, CLAM_ALPHA)
            ax.set_title(f"cluster {j} (n = {int(sel.sum())})", fontsize=8)
        row_label(grid.axes[i, 0], scenario)
    grid.colour_bars()
    grid.texts("Cluster-averaged CLAMs", "columns: assigned clusters; mean CLAM over each cluster's mapped images")
    save(grid.fig, path)


def single_clam_figure(cases: Mapping[str, Arrays], path: str | Path) -> None:
    """One image per true cluster with its CLAM, one row per scenario (the paper's Fig 6);
    the abnormality's outline in white."""

    def draw(ax: Axes, arrays: Arrays, pick: int, column: int) -> None:
        imshow_ct(ax, arrays["clam_images_hu"][pick])
        imshow_clam(ax, arrays["clam_maps"][pick], np.asarray(arrays["base_lungs"], dtype=bool), CLAM_ALPHA)
        mask = np.asarray(arrays["clam_masks"][pick], dtype=float)
        if mask.any():
            ax.contour(mask, levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(f"true {column}, assigned {int(arrays['clam_labels'][pick])}", fontsize=8)

    grid, _ = _one_per_true_cluster(cases, draw)
    grid.colour_bars()
    grid.texts("Single-image CLAMs", "white outline: the simulated abnormality")
    save(grid.fig, path)
