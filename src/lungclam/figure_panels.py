"""Drawing primitives shared by the pipeline's figures and the simulation study's figures.

:mod:`lungclam.figures` (mean maps, example subjects, PCA, losses, associations, QC, K
selection, stability) and :mod:`lungclam.simulation.figures` (the paper's Figs 2-6 on
simulated slices) draw their panels with the pieces here, so that both show CT, CLAM,
orientation and colour bars the same way: the display style (:data:`DPI`, the lung window
:data:`HU_WINDOW`, the colour maps and the CLAM's opacity), the slice extractors in the
radiological view, a fixed grid of square image panels (:class:`SliceGrid`), the image,
marker, label and colour-bar helpers, and the two-component PCA both PCA figures plot.

Everything draws on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``;
no pyplot, no display, the global backend is left alone); :func:`save` writes one PNG at
:data:`DPI` dots per inch, atomically, creating parent folders.

Array and orientation conventions
---------------------------------
Volumes are numpy arrays in SimpleITK index order ``(z, y, x)`` of an image in ITK's LPS
space with an identity (axis-aligned) direction, which is what lungclam writes after
conversion, registration and downsampling: index ``x`` grows towards the patient's
**left**, ``y`` towards **posterior**, ``z`` towards **superior**. CT values are Hounsfield
units (HU); CLAM maps are importance in ``[0, 1]``; lung masks are labels (0 background,
1 right lung, 2 left lung), any value > 0 counting as lung. A simulated slice is a
``(y, x)`` array with the same meaning of its axes.

Radiological convention is the view from the patient's feet (axial) or front (coronal):
the patient's right on the image's left, anterior (axial) or superior (coronal) at the
top. With ``imshow(..., origin="upper")`` row 0 is drawn at the top and column 0 at the
left, so:

- axial ``volume[z]`` is a ``(y, x)`` array: row 0 is ``y = 0``, the most anterior row,
  at the top; column 0 is ``x = 0``, the patient's rightmost column, at the left. That is
  already the radiological view; no flip (:func:`axial_panel`).
- coronal ``volume[:, y, :]`` is ``(z, x)``: row 0 would be ``z = 0``, the most inferior
  slice, so the rows are reversed to put superior at the top; columns as in axial, right
  on the left (:func:`coronal_panel`).
- sagittal ``volume[:, :, x]`` is ``(z, y)``: rows reversed as in coronal (superior at the
  top); column 0 is ``y = 0``, anterior, at the left (:func:`sagittal_panel`).

A scan with a non-identity direction (e.g. a gantry-tilted series kept rotated) is shown
in its index frame; the orientation labels are then only approximately right.

Display: CT in grey with the lung window :data:`HU_WINDOW` (-1000..200 HU); CLAM with the
``jet`` colour map on ``[0, 1]``, drawn semi-transparent over the CT and only inside the
lung mask (outside it every model input is one constant, so importance there means
nothing). Colour bars show the colour maps at full opacity, labelled "HU" and
"importance". Axial and coronal panels carry small "R"/"L" markers, sagittal ones "A"/"P"
(:func:`markers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colorbar import Colorbar
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from lungclam.atomic import save_png

__all__ = [
    "CLAM_ALPHA",
    "CLAM_CMAP",
    "CT_CMAP",
    "DPI",
    "HU_NORM",
    "HU_WINDOW",
    "IMPORTANCE_NORM",
    "SliceGrid",
    "axial_levels",
    "axial_panel",
    "bare",
    "coronal_panel",
    "hu_colourbar",
    "importance_colourbar",
    "imshow_clam",
    "imshow_ct",
    "markers",
    "new_figure",
    "pc_label",
    "pca2",
    "row_label",
    "sagittal_panel",
    "save",
]

#: Resolution of every saved PNG, dots per inch.
DPI = 120
#: Lung window for CT display, HU (low, high).
HU_WINDOW: tuple[float, float] = (-1000.0, 200.0)
#: Colour map of CT panels.
CT_CMAP = "gray"
#: Colour map of CLAM importance.
CLAM_CMAP = "jet"
#: Opacity of the CLAM overlay on the CT.
CLAM_ALPHA = 0.55
#: CT values (HU) to colours: the lung window.
HU_NORM = Normalize(*HU_WINDOW)
#: CLAM importance to colours: ``[0, 1]``.
IMPORTANCE_NORM = Normalize(0.0, 1.0)

# Orientation letters stay readable on any grey level.
_OUTLINE = [patheffects.withStroke(linewidth=2.0, foreground="black")]


# ------------------------------------------------------------------- planes and levels


def axial_panel(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a ``(z, y, x)`` LPS volume as displayed (``(y, x)``, no flip):
    anterior at the top, the patient's right on the left (radiological view)."""
    return np.asarray(volume)[int(z)]


def coronal_panel(volume: np.ndarray, y: int) -> np.ndarray:
    """Coronal slice ``y`` of a ``(z, y, x)`` LPS volume as displayed (``(z, x)`` with z
    reversed): superior at the top, the patient's right on the left."""
    return np.asarray(volume)[:, int(y), :][::-1]


def sagittal_panel(volume: np.ndarray, x: int) -> np.ndarray:
    """Sagittal slice ``x`` of a ``(z, y, x)`` LPS volume as displayed (``(z, y)`` with z
    reversed): superior at the top, anterior on the left."""
    return np.asarray(volume)[:, :, int(x)][::-1]


def axial_levels(mask: np.ndarray, n: int = 8) -> np.ndarray:
    """``n`` axial indices (int64) evenly spaced over the z extent of ``mask > 0``.

    ``mask`` is ``(z, y, x)``. The first value is the highest z holding any mask voxel
    (most superior, the lung apices), the last the lowest (the bases): ordered top to
    bottom. ``n = 1`` gives the middle level. Values repeat when the mask spans fewer than
    ``n`` slices. ValueError for an empty mask or ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D (z, y, x), got shape {mask.shape}")
    zs = np.flatnonzero((mask > 0).any(axis=(1, 2)))
    if zs.size == 0:
        raise ValueError("mask is empty: no lung voxels to place slices in")
    top, bottom = int(zs.max()), int(zs.min())
    if n == 1:
        return np.array([round((top + bottom) / 2)], dtype=np.int64)
    return np.rint(np.linspace(top, bottom, n)).astype(np.int64)


# ------------------------------------------------------------------- figures and panels


def new_figure(width: float, height: float, constrained: bool = True) -> Figure:
    """A figure of ``width`` x ``height`` inches on its own Agg canvas (constrained layout
    unless ``constrained`` is False)."""
    fig = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as a PNG at :data:`DPI`, atomically, creating parent folders."""
    save_png(fig, path, DPI)


def bare(ax: Axes) -> None:
    """No ticks, no frame; axis labels stay usable as row labels."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def imshow_ct(ax: Axes, image: np.ndarray, aspect: float | str = 1.0) -> AxesImage:
    """Draw a displayed 2D CT panel (HU) in the lung window, row 0 at the top."""
    im = ax.imshow(image, cmap=CT_CMAP, norm=HU_NORM, origin="upper", aspect=aspect)
    bare(ax)
    return im


def imshow_clam(
    ax: Axes, image: np.ndarray, inside: np.ndarray | None, alpha: float, aspect: float | str = 1.0
) -> AxesImage:
    """Draw a displayed 2D importance panel on ``[0, 1]``, hidden where ``inside`` (bool,
    same shape) is False; ``inside`` None shows it everywhere."""
    data = np.ma.masked_where(~inside, image) if inside is not None else image
    im = ax.imshow(data, cmap=CLAM_CMAP, norm=IMPORTANCE_NORM, origin="upper", aspect=aspect, alpha=alpha)
    bare(ax)
    return im


def markers(ax: Axes, left: str, right: str, size: float = 7.0) -> None:
    """Small orientation letters (e.g. "R", "L") at the middle of the panel's left and
    right edges, ``size`` in points."""
    style = {
        "transform": ax.transAxes,
        "color": "white",
        "fontsize": size,
        "fontweight": "bold",
        "va": "center",
        "path_effects": _OUTLINE,
    }
    ax.text(0.02, 0.5, left, ha="left", **style)
    ax.text(0.98, 0.5, right, ha="right", **style)


def row_label(ax: Axes, text: str, size: float = 9.0) -> None:
    """A label left of a row of panels (the first panel's y-axis label), ``size`` in points."""
    ax.set_ylabel(text, fontsize=size, rotation=90, labelpad=4)


def _colourbar(fig: Figure, norm: Normalize, cmap: str, axes, label: str, **kw) -> Colorbar:
    if axes is not None:
        kw["ax"] = axes
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), **kw)
    bar.set_label(label)
    return bar


def hu_colourbar(fig: Figure, axes, **kw) -> Colorbar:
    """The CT colour bar (lung window, labelled "HU"), beside ``axes`` or in ``cax=``."""
    bar = _colourbar(fig, HU_NORM, CT_CMAP, axes, "HU", **kw)
    bar.set_ticks([-1000, -800, -600, -400, -200, 0, 200])
    return bar


def importance_colourbar(fig: Figure, axes, **kw) -> Colorbar:
    """The CLAM colour bar (``[0, 1]``, labelled "importance"), beside ``axes`` or in ``cax=``."""
    bar = _colourbar(fig, IMPORTANCE_NORM, CLAM_CMAP, axes, "importance", **kw)
    bar.set_ticks([0.0, 0.25, 0.5, 0.75, 1.0])
    return bar


class SliceGrid:
    """A fixed layout (inches) of square image panels with room for row labels on the
    left, titles on top, a note at the bottom and two colour bars on the right.

    Constrained layout costs seconds for dozens of panels; the image figures do not need it.
    ``col_gaps[j]`` is the gap after column ``j`` (``wgap`` by default); likewise rows.
    ``fig`` is the figure, ``axes`` an ``(nrows, ncols)`` object array of its panels.
    """

    left, right, top, bottom = 0.75, 2.1, 0.75, 0.45

    def __init__(
        self,
        nrows: int,
        ncols: int,
        panel: float,
        wgap: float = 0.05,
        hgap: float = 0.06,
        col_gaps: Mapping[int, float] | None = None,
        row_gaps: Mapping[int, float] | None = None,
    ):
        col_gaps, row_gaps = col_gaps or {}, row_gaps or {}
        xs, x = [], self.left
        for j in range(ncols):
            xs.append(x)
            x += panel + col_gaps.get(j, wgap)
        ys, y = [], self.top
        for i in range(nrows):
            ys.append(y)
            y += panel + row_gaps.get(i, hgap)
        self.grid_w = xs[-1] + panel - self.left
        self.grid_h = ys[-1] + panel - self.top
        self.width = self.left + self.grid_w + self.right
        self.height = self.top + self.grid_h + self.bottom
        self.fig = new_figure(self.width, self.height, constrained=False)
        w, h = self.width, self.height
        self.axes = np.empty((nrows, ncols), dtype=object)
        for i, yi in enumerate(ys):
            for j, xj in enumerate(xs):
                self.axes[i, j] = self.fig.add_axes((xj / w, (h - yi - panel) / h, panel / w, panel / h))

    def colour_bars(self, importance: bool = True) -> None:
        """The HU bar and (unless the panels show no CLAM) the importance bar, side by
        side right of the panels."""
        w, h = self.width, self.height
        bar_h = min(self.grid_h, max(0.6 * self.grid_h, 2.0))
        y0 = self.bottom + (self.grid_h - bar_h) / 2
        x0 = self.left + self.grid_w + 0.15
        if importance:
            imp = self.fig.add_axes(((x0) / w, y0 / h, 0.14 / w, bar_h / h))
            importance_colourbar(self.fig, None, cax=imp)
            x0 += 0.95
        hu = self.fig.add_axes((x0 / w, y0 / h, 0.14 / w, bar_h / h))
        hu_colourbar(self.fig, None, cax=hu)

    def texts(self, title: str, note: str) -> None:
        """The title above the grid and a one-line note below it."""
        self.fig.suptitle(title, fontsize=11, y=1 - 0.12 / self.height, va="top")
        self.fig.text(0.5, 0.12 / self.height, note, fontsize=8, ha="center", va="bottom")


# ------------------------------------------------------------------- principal components


def pca2(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two principal component scores ``(N, 2)`` of ``features`` ``(N, J)`` and
    their variance shares ``(2,)``.

    Centred SVD; each component's sign is fixed so that its largest-magnitude loading is
    positive (reproducible across runs). A missing second component (one feature, or
    fewer than three points) is returned as zeros with share NaN.
    """
    x = np.asarray(features, dtype=float)
    x = x - x.mean(axis=0, keepdims=True)
    scores = np.zeros((x.shape[0], 2))
    share = np.full(2, np.nan)
    if x.shape[0] < 2:
        return scores, share
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    total = float((s**2).sum())
    for c in range(min(2, s.size)):
        if s[c] <= 1e-12 * max(s[0], 1e-300):
            continue
        sign = np.sign(vt[c, np.argmax(np.abs(vt[c]))]) or 1.0
        scores[:, c] = sign * u[:, c] * s[c]
        share[c] = s[c] ** 2 / total if total > 0 else np.nan
    return scores, share


def pc_label(c: int, share: float) -> str:
    """Axis label of component ``c`` (0-based) with its share of the variance (0..1)."""
    return f"PC{c + 1} (n/a)" if not np.isfinite(share) else f"PC{c + 1} ({100 * share:.1f} % variance)"
