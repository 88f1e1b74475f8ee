"""Figures of the pipeline: mean maps, example subjects, PCA, losses, associations, QC,
the choice of K and cluster stability.

Every function draws on matplotlib's Agg canvas directly (no pyplot, no display, the
global backend is left alone) with the panels, style and colour bars of
:mod:`lungclam.figure_panels`, and saves one PNG at :data:`lungclam.figure_panels.DPI`
dots per inch, creating parent folders. Figures carry only the subject IDs the caller
passes in; nothing is ever read from DICOM headers here.

Volumes are ``(z, y, x)`` arrays of an LPS image (``x`` towards the patient's left, ``y``
posterior, ``z`` superior), CT in HU, CLAM importance in ``[0, 1]``, lung masks labelled
1 right and 2 left (any value > 0 is lung). Panels are shown in the radiological view:
the patient's right on the image's left in axial and coronal panels, anterior (axial) or
superior (coronal, sagittal) at the top; :mod:`lungclam.figure_panels` states the
conventions in full.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from lungclam.figure_panels import (
    CLAM_ALPHA,
    SliceGrid,
    axial_levels,
    axial_panel,
    bare,
    coronal_panel,
    hu_colourbar,
    imshow_clam,
    imshow_ct,
    markers,
    new_figure,
    pc_label,
    pca2,
    row_label,
    sagittal_panel,
    save,
)
from lungclam.rimcheck import RIM_CAVEAT_SHARE
from lungclam.splittest import no_split_is_real, split_is_real

__all__ = [
    "choose_examples",
    "contact_sheet",
    "forest_figure",
    "k_selection_figure",
    "k_selection_title",
    "loss_figure",
    "mean_maps_figure",
    "pca_figure",
    "qc_figure",
    "stability_figure",
    "stability_verdict",
    "subject_examples_figure",
]

#: Outline colours of the lung labels: 1 right lung, 2 left lung.
LABEL_COLOURS = {1: "tab:red", 2: "deepskyblue"}
LABEL_NAMES = {1: "right lung (1)", 2: "left lung (2)"}
TEMPLATE_COLOUR = "gold"


# ------------------------------------------------------------------- where to cut


def _mask_centre(mask: np.ndarray) -> tuple[int, int, int]:
    """Centre ``(z, y, x)`` of the bounding box of ``mask > 0``; the volume's centre if empty."""
    nz = np.nonzero(np.asarray(mask) > 0)
    if nz[0].size == 0:
        return tuple(s // 2 for s in mask.shape)  # type: ignore[return-value]
    return tuple(int(round((int(a.min()) + int(a.max())) / 2)) for a in nz)  # type: ignore[return-value]


def _sagittal_cuts(mask: np.ndarray, by_label: bool) -> list[tuple[int | None, str]]:
    """Two sagittal x indices (right, then left) with a caption each.

    ``by_label``: the median x of label 1 (right lung) and of label 2 (left lung); an
    absent label gives None. Otherwise (a binary outline such as a template mask), labels
    1 and 2 are still used when both are present, else the mask is split at the centre of
    its bounding box and each side's median x is taken. An empty mask gives x at one and
    two thirds of the width.
    """
    mask = np.asarray(mask)
    width = mask.shape[2]
    xs_all = np.nonzero(mask > 0)[2]
    if xs_all.size == 0:
        return [(width // 3, "(no lung mask)"), ((2 * width) // 3, "(no lung mask)")]
    right = np.nonzero(mask == 1)[2]
    left = np.nonzero(mask == 2)[2]
    if by_label or (right.size and left.size):
        return [
            (int(np.median(right)) if right.size else None, "(right lung)"),
            (int(np.median(left)) if left.size else None, "(left lung)"),
        ]
    centre = (int(xs_all.min()) + int(xs_all.max())) / 2
    sides = (xs_all[xs_all <= centre], xs_all[xs_all > centre])
    return [
        (int(np.median(side)) if side.size else None, caption)
        for side, caption in zip(sides, ("(right side)", "(left side)"))
    ]


# ------------------------------------------------------------------- checks and labels


def _check_volume(name: str, volume: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"{name} must be 3D (z, y, x), got shape {volume.shape}")
    if shape is not None and volume.shape != tuple(shape):
        raise ValueError(f"{name} has shape {volume.shape}, expected {tuple(shape)} (the mask's)")
    return volume


def _fmt_p(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "< 0.001"
    return f"= {p:.3f}" if p < 0.1 else f"= {p:.2f}"


# ------------------------------------------------------------------- CLAM figures


def mean_maps_figure(
    ct_means: Mapping[str, np.ndarray],
    clam_means: Mapping[str, np.ndarray],
    mask: np.ndarray,
    path: str | Path,
    n_slices: int = 8,
    title: str = "",
    overlay: bool = True,
) -> None:
    """Mean CT and mean CLAM per group on axial slices (the paper's Fig 7).

    Args:
        ct_means: group name (e.g. ``"population"``, ``"cluster 1"``) -> mean CT
            ``(z, y, x)`` in HU on the model grid; the figure follows this dict's order.
        clam_means: the same groups -> mean CLAM ``(z, y, x)``, importance in ``[0, 1]``.
        mask: template lung mask ``(z, y, x)`` on the same grid (> 0 = lung). It chooses
            the slices (:func:`~lungclam.figure_panels.axial_levels`, apex to base, left
            to right) and limits where importance is drawn.
        path: PNG to write.
        n_slices: slices per row.
        title: figure title (a default one is used when empty).
        overlay: True draws the CLAM semi-transparently over the group's mean CT in grey
            (anatomy stays readable); False draws the CLAM alone on black.

    Per group two rows: the mean CT, then the mean CLAM on the same slices. One HU colour
    bar (lung window) and one importance colour bar (``[0, 1]``) serve the whole figure.
    Panels are square; the grid is assumed isotropic in x and y (the model grid is).
    """
    mask = _check_volume("mask", mask)
    groups = list(ct_means)
    if not groups:
        raise ValueError("ct_means is empty: no groups to draw")
    if set(groups) != set(clam_means):
        raise ValueError(
            f"ct_means and clam_means must name the same groups: {sorted(ct_means)} vs {sorted(clam_means)}"
        )
    levels = axial_levels(mask, n_slices)
    inside = mask > 0
    layout = SliceGrid(2 * len(groups), n_slices, panel=1.45, row_gaps={2 * g + 1: 0.2 for g in range(len(groups))})
    axes = layout.axes
    for g, group in enumerate(groups):
        ct = _check_volume(f"ct_means[{group!r}]", ct_means[group], mask.shape)
        clam = _check_volume(f"clam_means[{group!r}]", clam_means[group], mask.shape)
        for j, z in enumerate(levels):
            top, bottom = axes[2 * g, j], axes[2 * g + 1, j]
            imshow_ct(top, axial_panel(ct, z))
            if overlay:
                imshow_ct(bottom, axial_panel(ct, z))
                imshow_clam(bottom, axial_panel(clam, z), axial_panel(inside, z), CLAM_ALPHA)
            else:
                bottom.set_facecolor("black")
                imshow_clam(bottom, axial_panel(clam, z), axial_panel(inside, z), 1.0)
            markers(top, "R", "L", 6)
            markers(bottom, "R", "L", 6)
            if g == 0:
                top.set_title(f"z = {z}", fontsize=8)
        row_label(axes[2 * g, 0], f"{group}\nmean CT")
        row_label(axes[2 * g + 1, 0], f"{group}\nmean CLAM")
    layout.colour_bars()
    layout.texts(
        title or "Mean CT and mean CLAM per group",
        "Axial slices from the lung apices (left) to the bases (right); radiological view "
        "(R = patient's right, anterior at the top)." + ("" if overlay else " CLAM shown alone, inside the lungs."),
    )
    save(layout.fig, path)


def subject_examples_figure(
    cts: Mapping[str, np.ndarray],
    clams: Mapping[str, np.ndarray],
    clusters: Mapping[str, int],
    mask: np.ndarray,
    path: str | Path,
    n_slices: int = 5,
) -> None:
    """CT and CLAM of chosen subjects (the paper's Figs 8 and 9), one row per subject.

    Args:
        cts: subject ID -> CT ``(z, y, x)`` in HU on the model grid; rows follow this order.
        clams: subject ID -> CLAM ``(z, y, x)`` in ``[0, 1]`` (its assigned cluster's map).
        clusters: subject ID -> cluster number, shown in the row label
            ``"subject (cluster k)"``.
        mask: template lung mask ``(z, y, x)`` on the same grid; chooses the slices
            (:func:`~lungclam.figure_panels.axial_levels`) and limits where importance is
            drawn.
        path: PNG to write.
        n_slices: axial slices per subject.

    Each row holds the ``n_slices`` CT slices (apex to base), then the same slices with the
    CLAM drawn over the CT. One HU and one importance colour bar for the figure.
    """
    mask = _check_volume("mask", mask)
    subjects = list(cts)
    if not subjects:
        raise ValueError("cts is empty: no subjects to draw")
    missing = [s for s in subjects if s not in clams or s not in clusters]
    if missing:
        raise ValueError(f"subjects without a CLAM map or a cluster: {missing}")
    levels = axial_levels(mask, n_slices)
    inside = mask > 0
    layout = SliceGrid(len(subjects), 2 * n_slices, panel=1.3, col_gaps={n_slices - 1: 0.3})
    for i, subject in enumerate(subjects):
        ct = _check_volume(f"cts[{subject!r}]", cts[subject], mask.shape)
        clam = _check_volume(f"clams[{subject!r}]", clams[subject], mask.shape)
        for j, z in enumerate(levels):
            left, right = layout.axes[i, j], layout.axes[i, n_slices + j]
            imshow_ct(left, axial_panel(ct, z))
            imshow_ct(right, axial_panel(ct, z))
            imshow_clam(right, axial_panel(clam, z), axial_panel(inside, z), CLAM_ALPHA)
            markers(left, "R", "L", 6)
            markers(right, "R", "L", 6)
            if i == 0:
                left.set_title(f"CT, z = {z}", fontsize=8)
                right.set_title(f"CLAM, z = {z}", fontsize=8)
        row_label(layout.axes[i, 0], f"{subject}\n(cluster {clusters[subject]})", 8)
    layout.colour_bars()
    layout.texts(
        "Example subjects: CT (left) and CLAM of the assigned cluster (right)",
        "Axial slices from the lung apices to the bases; radiological view (R = patient's right, anterior at the top).",
    )
    save(layout.fig, path)


def choose_examples(clusters: pd.DataFrame, per_cluster: int = 3, seed: int = 0) -> list[str]:
    """Up to ``per_cluster`` subjects drawn at random from each cluster.

    ``clusters`` is ``clusters.tsv`` (columns ``subject``, ``cluster``; others ignored; rows
    without a cluster are skipped). Subjects are sorted within each cluster before the draw
    (without replacement, ``numpy.random.default_rng(seed)``, clusters in sorted order), so
    the result depends only on the seed and the table's content, not its row order. A
    cluster with fewer members gives all of them. Returned as text IDs sorted by cluster,
    then subject.
    """
    if per_cluster < 1:
        raise ValueError(f"per_cluster must be at least 1, got {per_cluster}")
    for column in ("subject", "cluster"):
        if column not in clusters.columns:
            raise ValueError(f"clusters table has no {column!r} column")
    table = clusters.dropna(subset=["cluster"])
    rng = np.random.default_rng(seed)
    picked: list[tuple[object, str]] = []
    for label in sorted(pd.unique(table["cluster"])):
        members = sorted({str(s) for s in table.loc[table["cluster"] == label, "subject"]})
        take = min(per_cluster, len(members))
        chosen = rng.choice(len(members), size=take, replace=False)
        picked += [(label, members[c]) for c in sorted(chosen)]
    return [subject for _, subject in sorted(picked, key=lambda t: (t[0], t[1]))]


# ------------------------------------------------------------------- training figures


def pca_figure(before: pd.DataFrame, after: pd.DataFrame | None, clusters: pd.DataFrame, path: str | Path) -> None:
    """First two principal components of the embeddings before and after the clustering
    phase, coloured by cluster (the paper's Fig 3).

    Args:
        before: ``subject, f1..fJ`` embeddings of the pretrained autoencoder.
        after: the same after the clustering phase, or None (then one panel).
        clusters: ``subject, cluster`` (``clusters.tsv``); subjects not in it are drawn
            grey as "unassigned".
        path: PNG to write.

    PCA (centred SVD) is fitted to each table separately; axis labels give each
    component's share of the variance. Feature columns are all columns but ``subject``.
    """
    tables = [("Before clustering (pretrained embedding)", before)]
    if after is not None:
        tables.append(("After the clustering phase", after))
    assign = {str(s): c for s, c in zip(clusters["subject"], clusters["cluster"]) if pd.notna(c)}
    labels = sorted(set(assign.values()))
    palette = [f"C{i % 10}" for i in range(len(labels))]
    fig = new_figure(5.2 * len(tables) + 1.4, 4.6)
    axes = np.atleast_1d(fig.subplots(1, len(tables), squeeze=False)[0])
    unassigned = False
    for ax, (name, table) in zip(axes, tables):
        feature_cols = [c for c in table.columns if c != "subject"]
        if not feature_cols or table.empty:
            ax.text(0.5, 0.5, "no features", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(name)
            continue
        scores, share = pca2(table[feature_cols].to_numpy(dtype=float))
        subj = table["subject"].astype(str).to_numpy()
        group = np.array([assign.get(s) for s in subj], dtype=object)
        for label, colour in zip(labels, palette):
            sel = np.array([g == label for g in group])
            if sel.any():
                ax.scatter(
                    scores[sel, 0], scores[sel, 1], s=22, color=colour, alpha=0.8, edgecolors="white", linewidths=0.4
                )
        none = np.array([g is None for g in group])
        unassigned = unassigned or bool(none.any())
        if none.any():
            ax.scatter(scores[none, 0], scores[none, 1], s=18, color="lightgrey", edgecolors="grey", linewidths=0.4)
        ax.set_xlabel(pc_label(0, share[0]))
        ax.set_ylabel(pc_label(1, share[1]))
        ax.set_title(name)
        ax.axhline(0, color="0.85", lw=0.8, zorder=0)
        ax.axvline(0, color="0.85", lw=0.8, zorder=0)
    counts = pd.Series(list(assign.values())).value_counts() if assign else pd.Series(dtype=int)
    handles = [
        Line2D([], [], marker="o", ls="", color=colour, label=f"cluster {label} (n = {int(counts[label])})")
        for label, colour in zip(labels, palette)
    ]
    if unassigned:
        handles.append(Line2D([], [], marker="o", ls="", color="lightgrey", markeredgecolor="grey", label="unassigned"))
    if handles:
        fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle("Embeddings, first two principal components")
    save(fig, path)


def _use_log(values: Sequence[np.ndarray]) -> bool:
    """Log scale when every finite value is positive and they span more than a factor 3."""
    finite = np.concatenate([np.asarray(v, dtype=float)[np.isfinite(v)] for v in values] or [np.array([])])
    return finite.size > 0 and bool((finite > 0).all()) and finite.max() / finite.min() > 3.0


def loss_figure(pretrain: pd.DataFrame, cluster: pd.DataFrame | None, path: str | Path) -> None:
    """Training curves: pretraining loss and, if given, the clustering-phase losses.

    Args:
        pretrain: ``pretrain_loss.tsv``: ``epoch, loss`` (reconstruction MSE), optionally
            ``val_loss`` (held-out MSE, drawn when finite) and ``best`` (the epoch whose
            weights were kept, marked); other columns ignored.
        cluster: ``cluster_loss.tsv``: ``epoch, reconstruction, kl, loss`` (reconstruction
            MSE, KL(P || Q) and their weighted sum), or None (then one panel).
        path: PNG to write.

    The y axis is logarithmic when all values are positive and span more than a factor 3,
    linear otherwise (the axis label says which).
    """
    n_panels = 1 if cluster is None else 2
    fig = new_figure(5.0 * n_panels, 3.8)
    axes = np.atleast_1d(fig.subplots(1, n_panels, squeeze=False)[0])

    def curves(ax: Axes, table: pd.DataFrame, columns: list[tuple[str, str, str]], title: str) -> None:
        present = [
            (c, name, style)
            for c, name, style in columns
            if c in table.columns and np.isfinite(table[c].to_numpy(dtype=float)).any()
        ]
        if table.empty or not present:
            ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title)
            return
        for c, name, style in present:
            ax.plot(table["epoch"], table[c], style, label=name, ms=3)
        log = _use_log([table[c].to_numpy(dtype=float) for c, _, _ in present])
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        first, last = float(table["epoch"].min()), float(table["epoch"].max())
        if last - first < 2:  # a phase that converged at once: keep whole-epoch ticks
            ax.set_xlim(first - 1, last + 1)
        if len(table) == 1:
            ax.text(0.04, 0.5, "one epoch recorded", ha="left", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_ylabel("loss (log scale)" if log else "loss")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        if len(present) > 1:
            ax.legend(fontsize=8)

    curves(
        axes[0],
        pretrain,
        [("loss", "reconstruction MSE", "o-"), ("val_loss", "held-out MSE", "s--")],
        "Pretraining (reconstruction MSE)",
    )
    if "best" in pretrain.columns and pretrain["best"].astype(bool).any() and len(pretrain) > 1:
        kept = int(pretrain.loc[pretrain["best"].astype(bool), "epoch"].iloc[0])
        axes[0].axvline(kept, color="tab:red", linestyle=":", linewidth=1)
        axes[0].text(
            kept,
            0.98,
            f" weights kept: epoch {kept}",
            transform=axes[0].get_xaxis_transform(),
            va="top",
            fontsize=7,
            color="tab:red",
        )
    if cluster is not None:
        curves(
            axes[1],
            cluster,
            [("reconstruction", "reconstruction MSE", "o-"), ("kl", "KL(P || Q)", "s--"), ("loss", "total loss", "^-")],
            "Clustering phase",
        )
    fig.suptitle("Training loss")
    save(fig, path)


# ------------------------------------------------------------------- associations


def _forest_rows(associations: pd.DataFrame) -> tuple[pd.DataFrame, list]:
    """The rows a forest plot can draw (finite estimate and CI) and the outcomes left
    with none. ValueError when a non-empty table lacks a needed column."""
    needed = ["outcome", "term", "estimate", "ci_low", "ci_high"]
    missing = [c for c in needed if c not in associations.columns]
    if missing:
        if len(associations):
            raise ValueError(f"associations table lacks columns {missing}")
        return pd.DataFrame(columns=needed), []
    values = associations[["estimate", "ci_low", "ci_high"]].apply(pd.to_numeric, errors="coerce")
    shown = associations[np.isfinite(values.to_numpy(dtype=float)).all(axis=1)]
    kept = set(shown["outcome"])
    return shown, [o for o in pd.unique(associations["outcome"]) if o not in kept]


def forest_figure(associations: pd.DataFrame, path: str | Path) -> None:
    """Forest plot of cluster contrasts per clinical outcome (the paper's Fig 10).

    ``associations`` is ``associations.tsv`` (:func:`lungclam.stats.associations`): rows
    ``outcome, term, estimate, ci_low, ci_high, p_value, f_p_value, ...``. One panel per
    outcome (outcomes keep their first-appearance order; each panel has its own x scale,
    in the outcome's units): per term the estimate as a point and its 95 % CI as a
    horizontal bar, a vertical line at 0 (no difference from the reference cluster), the
    term's t-test p on the right, and the outcome's cluster F-test p in the panel title.
    Rows with a NaN estimate or CI are skipped (outcomes left with none are listed under
    the figure); a table with nothing to draw gives a figure saying "no associations".
    """
    shown, skipped = _forest_rows(associations)
    if shown.empty:
        fig = new_figure(6.0, 2.2)
        ax = fig.add_subplot()
        ax.axis("off")
        note = "no associations"
        if skipped:
            note += "\n(not estimated: " + ", ".join(map(str, skipped)) + ")"
        ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=12, transform=ax.transAxes)
        fig.suptitle("Cluster contrasts per outcome")
        save(fig, path)
        return
    outcomes = list(pd.unique(shown["outcome"]))
    sizes = [int((shown["outcome"] == o).sum()) for o in outcomes]
    fig = new_figure(7.0, 0.9 + sum(0.38 * s + 0.6 for s in sizes) + (0.3 if skipped else 0))
    axes = fig.subplots(len(outcomes), 1, squeeze=False, gridspec_kw={"height_ratios": [s + 1.2 for s in sizes]})[:, 0]
    for ax, outcome in zip(axes, outcomes):
        rows = shown[shown["outcome"] == outcome]
        y = np.arange(len(rows))[::-1].astype(float)
        est = rows["estimate"].to_numpy(dtype=float)
        lo, hi = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
        ax.hlines(y, lo, hi, color="tab:blue", lw=2)
        ax.plot(est, y, "o", color="navy", ms=6, zorder=3)
        ax.axvline(0.0, color="0.3", ls="--", lw=1)
        ax.set_yticks(y, [str(t) for t in rows["term"]])
        ax.set_ylim(-0.7, len(rows) - 0.3)
        span = max(hi.max(), 0.0) - min(lo.min(), 0.0)
        pad = 0.08 * span if span > 0 else 1.0
        ax.set_xlim(min(lo.min(), 0.0) - pad, max(hi.max(), 0.0) + pad)
        if "p_value" in rows.columns:
            right = ax.secondary_yaxis("right")
            right.set_yticks(y, [f"p {_fmt_p(p)}" for p in rows["p_value"].to_numpy(dtype=float)])
            right.tick_params(length=0, labelsize=8)
        title = str(outcome)
        if "f_p_value" in rows.columns:
            title += f"   (cluster F-test p {_fmt_p(float(rows['f_p_value'].iloc[0]))})"
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel(f"difference in {outcome} vs reference cluster (95 % CI)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Adjusted cluster contrasts per outcome (estimate and 95 % CI)")
    if skipped:
        fig.supxlabel("Not estimated: " + ", ".join(map(str, skipped)), fontsize=8, x=0.01, ha="left")
    save(fig, path)


# ------------------------------------------------------------------- quality control


def _outline(ax: Axes, mask2d: np.ndarray, colour: str) -> None:
    if mask2d.any() and not mask2d.all():
        ax.contour(mask2d.astype(float), levels=[0.5], colors=[colour], linewidths=1.0)


def _qc_row(
    axes: Sequence[Axes],
    volume: np.ndarray,
    labels: np.ndarray | None,
    spacing: Sequence[float],
    outlines: dict[int, str],
    merge_labels: bool,
) -> None:
    """Axial and coronal through the centre of the lungs, sagittal through each lung."""
    sx, sy, sz = (float(s) for s in spacing)
    ref = labels if labels is not None else np.zeros(volume.shape, dtype=np.uint8)
    cz, cy, cx = _mask_centre(ref)
    planes = [
        (f"axial, z = {cz}", lambda v: axial_panel(v, cz), sy / sx, ("R", "L")),
        (f"coronal, y = {cy}", lambda v: coronal_panel(v, cy), sz / sx, ("R", "L")),
    ]
    for x, caption in _sagittal_cuts(ref, by_label=not merge_labels):
        if x is None:
            planes.append((f"sagittal\n{caption[:-1]} absent)", None, 1.0, ("A", "P")))
        else:
            planes.append((f"sagittal, x = {x}\n{caption}", lambda v, x=x: sagittal_panel(v, x), sz / sy, ("A", "P")))
    for ax, (name, cut, aspect, marks) in zip(axes, planes):
        bare(ax)
        ax.set_title(name, fontsize=8)
        if cut is None:
            ax.set_facecolor("black")
            continue
        imshow_ct(ax, cut(volume), aspect)
        if labels is not None:
            shown = cut(labels)
            if merge_labels:
                _outline(ax, shown > 0, outlines[0])
            else:
                for label, colour in outlines.items():
                    _outline(ax, shown == label, colour)
        markers(ax, *marks)


def qc_figure(
    ct: np.ndarray,
    mask: np.ndarray,
    registered: np.ndarray | None,
    template_mask: np.ndarray | None,
    path: str | Path,
    subject: str,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    registered_spacing: tuple[float, float, float] | None = None,
) -> None:
    """Per-subject quality control of segmentation and registration.

    Args:
        ct: the subject's scan ``(z, y, x)`` in HU.
        mask: its lung labels ``(z, y, x)``, same shape (0 background, 1 right, 2 left).
        registered: the scan registered to the template ``(z, y, x)`` in HU, or None
            (then the figure has one row).
        template_mask: the template's lung labels on the registered grid, or None (the
            registered scan is then shown without an outline).
        path: PNG to write.
        subject: the subject ID, used as the title (never a name from the headers).
        spacing: voxel size ``(x, y, z)`` in mm of ``ct``; sets the aspect ratio of the
            coronal and sagittal panels.
        registered_spacing: voxel size ``(x, y, z)`` in mm of ``registered``; defaults to
            ``spacing``.

    Row 1: the scan with the outline of label 1 (red) and label 2 (blue); row 2: the
    registered scan with the template lungs outlined (gold). Columns: axial and coronal
    slices through the centre of the lung mask's bounding box, and one sagittal slice
    through the median x of each lung (a sagittal cut through the centre would pass
    between the lungs; a binary template mask is split at its centre). An empty mask
    falls back to the volume's centre and is said so in the title.
    """
    ct = _check_volume("ct", ct)
    mask = _check_volume("mask", mask, ct.shape)
    rows = 1 if registered is None else 2
    fig = new_figure(11.0, 3.0 * rows + 0.8)
    axes = fig.subplots(rows, 4, squeeze=False)
    _qc_row(axes[0], ct, mask, spacing, LABEL_COLOURS, merge_labels=False)
    row_label(axes[0, 0], "scan + lung mask")
    handles = [Line2D([], [], color=c, lw=1.5, label=LABEL_NAMES[k]) for k, c in LABEL_COLOURS.items()]
    if registered is not None:
        registered = _check_volume("registered", registered)
        if template_mask is not None:
            template_mask = _check_volume("template_mask", template_mask, registered.shape)
        _qc_row(
            axes[1], registered, template_mask, registered_spacing or spacing, {0: TEMPLATE_COLOUR}, merge_labels=True
        )
        row_label(axes[1, 0], "registered scan\n+ template lungs" if template_mask is not None else "registered scan")
        if template_mask is not None:
            handles.append(Line2D([], [], color=TEMPLATE_COLOUR, lw=1.5, label="template lungs"))
    hu_colourbar(fig, axes.ravel().tolist(), shrink=0.7, aspect=30, pad=0.01)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    title = str(subject)
    if not (mask > 0).any():
        title += "  (lung mask is empty)"
    fig.suptitle(title, fontsize=12)
    save(fig, path)


def contact_sheet(
    images: Sequence[str | Path],
    path: str | Path,
    columns: int = 6,
    labels: Sequence[str] | None = None,
) -> None:
    """Tile existing PNGs into one PNG, each with a label under it (default: file stem).

    Tiles are scaled to a common width, keeping each image's aspect ratio; the grid has
    ``columns`` columns and as many rows as needed. ValueError for no images, ``columns``
    below 1 or a label list of the wrong length.
    """
    from matplotlib.image import imread

    paths = [Path(p) for p in images]
    if not paths:
        raise ValueError("no images to tile")
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    if labels is None:
        labels = [p.stem for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} images")
    pictures = [imread(p) for p in paths]
    ncol = min(columns, len(paths))
    nrow = math.ceil(len(paths) / ncol)
    ratio = max(p.shape[0] / p.shape[1] for p in pictures)
    tile = 3.5
    fig = new_figure(tile * ncol, (tile * ratio + 0.35) * nrow, constrained=False)
    fig.subplots_adjust(
        left=0.005,
        right=0.995,
        top=0.995,
        bottom=0.005 + 0.3 / ((tile * ratio + 0.35) * nrow),
        wspace=0.03,
        hspace=0.35 / (tile * ratio),
    )
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, picture, label in zip(axes.ravel(), pictures, labels):
        ax.imshow(picture)
        ax.text(0.5, -0.02, str(label), transform=ax.transAxes, ha="center", va="top", fontsize=8)
    save(fig, path)


# ------------------------------------------------------------------- number of clusters


def _mark_chosen_k(ax: Axes, choices: pd.DataFrame | None, methods: Sequence[str], colours: Sequence[str]) -> None:
    """Dashed vertical lines at the K each of ``methods`` chose (the default drawn bold)."""
    if choices is None:
        return
    for method, colour in zip(methods, colours):
        row = choices.loc[choices["method"] == method]
        if row.empty:
            continue
        default = bool(row["default"].iloc[0])
        ax.axvline(
            int(row["k"].iloc[0]),
            color=colour,
            linestyle="--",
            linewidth=2.5 if default else 1.0,
            alpha=0.9 if default else 0.6,
        )


def _shade_skipped(
    axes: Sequence[Axes], ks: Sequence[int], min_share: float | None, max_split_p: float | None = None
) -> None:
    """Grey bands at ``ks``, the Ks the reproducibility rules skip (:func:`lungclam.kselect.choose`):
    their smallest k-means cluster is below ``min_share`` of the subjects, or their weakest
    split's p-value is above ``max_split_p``."""
    size = f"a cluster < {min_share:.0%} of subjects" if min_share else "a cluster too small"
    split = f"a split p > {max_split_p:g}" if max_split_p is not None and max_split_p < 1 else ""
    label = f"skipped: {size}" + (f"\nor {split}" if split else "")
    for ax in axes:
        for i, k in enumerate(ks):
            ax.axvspan(k - 0.4, k + 0.4, color="0.88", zorder=0, label=label if i == 0 else None)


def k_selection_figure(
    table: pd.DataFrame,
    path: str | Path,
    choices: pd.DataFrame | None = None,
    thresholds: Mapping[str, float] | None = None,
    skipped: Sequence[int] = (),
) -> None:
    """The criteria for the number of clusters K, one panel per kind of criterion.

    Args:
        table: ``k_selection.tsv`` (:func:`lungclam.kselect.select_k`): per ``k`` the
            silhouettes of k-means and sparse k-means, the gap statistic (``gap``,
            ``gap_sd``), resampling stability and prediction strength (each with its
            ``_sd``) and PAC.
        path: PNG to write.
        choices: ``k_criteria.tsv`` (:func:`lungclam.kselect.choices_table`) or None:
            dashed lines mark each criterion's K, the one that ``n_clusters: auto``
            follows drawn bold; the title names it with its runner-up and margin.
        thresholds: criterion (``stability``, ``prediction_strength``, ``pac``) ->
            the threshold its choice used (:data:`lungclam.kselect.THRESHOLDS` merged with
            the config's), drawn as a dotted line; a criterion missing here gets none.
            ``most_stable``'s tolerance is drawn that far below the largest stability.
            ``min_cluster_share`` and ``max_split_p`` label the grey bands of ``skipped``.
        skipped: the Ks the reproducibility rules skipped for a too small cluster or a
            split no stronger than one group's (``choose_k.split_null``, ``split_statistic``)
            (:func:`lungclam.kselect.skipped_ks`), shaded grey; ``most_stable``'s
            tolerance is drawn below the largest stability of the other Ks.

    Panels: silhouettes, the gap statistic (+/- gap_sd), stability and prediction strength
    (+/- sd), and PAC. Title: :func:`k_selection_title`.
    """
    limits = dict(thresholds or {})
    fig = new_figure(16, 4, constrained=False)
    sil, gap, stab, pac_ax = fig.subplots(1, 4)
    data = table.sort_values("k")
    sil.plot(data["k"], data["silhouette_kmeans"], "o-", color="tab:blue", label="k-means")
    sil.plot(data["k"], data["silhouette_sparse_kmeans"], "s--", color="tab:orange", label="sparse k-means")
    sil.set(xlabel="number of clusters K", ylabel="mean silhouette", title="Silhouette (higher is better)")
    gap.errorbar(data["k"], data["gap"], yerr=data["gap_sd"], fmt="o-", capsize=3, color="tab:green")
    gap.set(xlabel="number of clusters K", ylabel="gap", title="Gap statistic")
    stab.errorbar(
        data["k"],
        data["stability"],
        yerr=data["stability_sd"],
        fmt="o-",
        capsize=3,
        color="tab:purple",
        label="stability (ARI of subsamples)",
    )
    stab.errorbar(
        data["k"],
        data["prediction_strength"],
        yerr=data["prediction_strength_sd"],
        fmt="s--",
        capsize=3,
        color="tab:brown",
        label="prediction strength",
    )
    for criterion, colour in (("stability", "tab:purple"), ("prediction_strength", "tab:brown")):
        if criterion in limits:
            stab.axhline(limits[criterion], color=colour, linestyle=":", linewidth=1)
    _shade_skipped((stab, pac_ax), list(skipped), limits.get("min_cluster_share"), limits.get("max_split_p"))
    considered = data.loc[~data["k"].isin(list(skipped))]
    if "most_stable" in limits and considered["stability"].notna().any():  # a tolerance below the best
        stab.axhline(
            float(considered["stability"].max()) - limits["most_stable"], color="tab:pink", linestyle=":", linewidth=1
        )
    stab.set(
        xlabel="number of clusters K",
        ylabel="agreement",
        ylim=(-0.05, 1.05),
        title="Reproducibility (higher is better)",
    )
    pac_ax.plot(data["k"], data["pac"], "o-", color="tab:red")
    if "pac" in limits:
        pac_ax.axhline(limits["pac"], color="tab:red", linestyle=":", linewidth=1)
    pac_ax.set(
        xlabel="number of clusters K",
        ylabel="PAC",
        ylim=(-0.02, max(0.3, float(data["pac"].max()) + 0.02)),
        title="PAC (lower is better)",
    )
    _mark_chosen_k(sil, choices, ("silhouette_kmeans", "silhouette_sparse_kmeans"), ("tab:blue", "tab:orange"))
    _mark_chosen_k(gap, choices, ("gap",), ("tab:green",))
    _mark_chosen_k(
        stab,
        choices,
        ("stability", "most_stable", "stable_split", "prediction_strength"),
        ("tab:purple", "tab:pink", "tab:olive", "tab:brown"),
    )
    _mark_chosen_k(pac_ax, choices, ("pac",), ("tab:red",))
    for ax in (sil, stab):
        ax.legend(fontsize=8)
    if pac_ax.get_legend_handles_labels()[0]:
        pac_ax.legend(fontsize=8)
    for ax in (sil, gap, stab, pac_ax):
        ax.set_xticks(data["k"].to_numpy())
    fig.suptitle(k_selection_title(data, choices, limits))
    fig.tight_layout()
    save(fig, path)


def k_selection_title(
    table: pd.DataFrame, choices: pd.DataFrame | None = None, thresholds: Mapping[str, float] | None = None
) -> str:
    """The k_selection figure's title: the K that ``n_clusters: auto`` follows, by which
    criterion, its runner-up and margin, and how many criteria agree (from ``choices``); a
    second line when no K's ``split_p`` in ``table`` is at most ``thresholds["max_split_p"]``
    (the embedding may hold no distinct clusters)."""
    limits = dict(thresholds or {})
    title = "Choosing the number of clusters"
    if choices is not None and choices["default"].any():
        row = choices.loc[choices["default"]].iloc[0]
        agree = int((choices["k"] == row["k"]).sum())
        runner = f"runner-up K = {row['runner_up']}" if int(row["runner_up"]) > 0 else "no runner-up"
        title += (
            f": K = {row['k']} by {row['method']} ({runner}, margin "
            f"{row['margin']:.3g}); {agree} of {len(choices)} criteria agree"
        )
    most = limits.get("max_split_p")
    if "split_p" in table.columns and most is not None and no_split_is_real(table["split_p"], most):
        title += f"\nno K splits the subjects more clearly than one group would (split p > {most:g} at every K)"
    return title


# ------------------------------------------------------------------- cluster stability


#: A fitting is called solid when at least this share of subjects has confidence >= 0.9.
SOLID_SHARE = 0.9


def stability_verdict(
    stability: pd.DataFrame,
    clusters: pd.DataFrame,
    threshold: float,
    pretraining_plateaued: bool | None = None,
    rim_explained: float | None = None,
    max_split_p: float | None = None,
) -> tuple[bool, str]:
    """Whether the clusters are solid, and one line saying why.

    Solid: the stability (mean pairwise ARI of subsample clusterings) at the fitted K is at
    least ``threshold`` and at least :data:`SOLID_SHARE` of the subjects have a confidence
    of 0.9 or more. ``stability``: ``model/stability.tsv``; ``clusters``: ``clusters.tsv``
    with a ``confidence`` column. The replicas behind both share one embedding, so they
    cannot see an embedding that is still changing: when ``pretraining_plateaued`` is False
    (:func:`lungclam.train.stopped_before_maximum`: pretraining ended at its epoch maximum
    while its held-out error was still improving) the line carries that caveat. It does not
    make the clusters shaky by itself: a slowly improving embedding often already holds
    the final clusters. ``rim_explained``, the share of the variance of the subjects' rim
    shares that the clusters explain (:mod:`lungclam.rimcheck`), adds a caveat at
    :data:`lungclam.rimcheck.RIM_CAVEAT_SHARE` or more: the clusters may follow how much
    chest wall registration left inside the template lungs. ``max_split_p`` (the K rules'
    threshold, :mod:`lungclam.splittest`) adds a caveat when the fitted K's ``split_p`` in
    ``stability`` is above it: the weakest split of neighbouring clusters is no more than
    one group shows, which happens when no K passed the test (the size check alone chose)
    or when ``n_clusters`` was set by hand. Subsamples agree on such a cut as readily as on
    a true one, so stability alone cannot flag it.
    """
    k = len([c for c in clusters.columns if c.startswith("q_")])  # the fitted K, empty clusters included
    row = stability.loc[stability["k"] == k]
    value = float(row["stability"].iloc[0]) if len(row) else float("nan")
    split_p = float(row["split_p"].iloc[0]) if len(row) and "split_p" in row else float("nan")
    share = float((clusters["confidence"] >= 0.9).mean())
    solid = bool(np.isfinite(value) and value >= threshold and share >= SOLID_SHARE)
    word = "SOLID" if solid else "SHAKY"
    caveat = (
        "\ncaveat: pretraining ended at its epoch maximum while still improving; "
        "more train.epochs may change the clusters"
        if pretraining_plateaued is False
        else ""
    )
    if rim_explained is not None and rim_explained >= RIM_CAVEAT_SHARE:
        caveat += (
            f"\ncaveat: the clusters explain {rim_explained:.0%} of the variance of the chest-wall rim "
            "left by registration; see the QC pages"
        )
    if max_split_p is not None and np.isfinite(split_p) and not split_is_real(split_p, max_split_p):
        caveat += (
            f"\ncaveat: at K = {k} the weakest split of neighbouring clusters has p = {split_p:.2f} "
            f"(above {max_split_p:.2f}): two clusters may be one group cut in two"
        )
    return solid, (
        f"{word}: stability at K = {k} is {value:.2f} (threshold {threshold:.2f}); "
        f"{share:.0%} of subjects have confidence >= 0.9{caveat}"
    )


def stability_figure(
    stability: pd.DataFrame,
    clusters: pd.DataFrame,
    threshold: float,
    path: str | Path,
    pretraining_plateaued: bool | None = None,
    min_cluster_share: float | None = None,
    max_split_p: float | None = None,
    rim_explained: float | None = None,
) -> None:
    """Stability per K (mean pairwise ARI of subsample clusterings, +/- sd; the fitted K
    marked; the Ks that ``stability``'s ``skipped`` column marks, shaded grey, labelled
    with ``min_cluster_share`` and ``max_split_p``) and each subject's confidence by cluster (dots, jittered),
    titled with :func:`stability_verdict` (``rim_explained`` and ``max_split_p``: its caveats)."""
    _, verdict = stability_verdict(stability, clusters, threshold, pretraining_plateaued, rim_explained, max_split_p)
    k_fit = len([c for c in clusters.columns if c.startswith("q_")])
    fig = new_figure(11.0, 4.0)
    left, right = fig.subplots(1, 2)
    data = stability.sort_values("k")
    left.errorbar(data["k"], data["stability"], yerr=data["stability_sd"], fmt="o-", capsize=3, color="tab:purple")
    left.axhline(threshold, color="tab:purple", linestyle=":", linewidth=1, label=f"threshold {threshold:.2f}")
    left.axvline(k_fit, color="tab:red", linestyle="--", label=f"fitted K = {k_fit}")
    if "skipped" in data.columns:
        skipped = data.loc[data["skipped"].astype(bool), "k"].tolist()
        _shade_skipped((left,), skipped, min_cluster_share, max_split_p)
    left.set(
        xlabel="number of clusters K",
        ylabel="mean pairwise ARI of subsample clusterings",
        ylim=(-0.05, 1.05),
        title="Stability per K",
    )
    left.set_xticks(data["k"].to_numpy())
    left.legend(fontsize=8)
    rng = np.random.default_rng(0)
    for k, members in clusters.groupby("cluster"):
        x = k + rng.uniform(-0.15, 0.15, len(members))
        right.scatter(x, members["confidence"], s=14, alpha=0.8)
    right.axhline(0.9, color="grey", linestyle=":", linewidth=1)
    right.set(
        xlabel="cluster",
        ylabel="confidence (share of replicas that agree)",
        ylim=(-0.05, 1.05),
        title="Each subject's confidence",
    )
    right.set_xticks(sorted(clusters["cluster"].unique()))
    fig.suptitle(verdict)
    save(fig, path)
