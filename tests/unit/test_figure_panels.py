"""Figure panels: slice levels, display orientation (array and rendered pixels), the CLAM
drawn only inside the lungs, the panel grid, and the two-component PCA."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lungclam import figure_panels as P

SHAPE = (20, 24, 28)  # (z, y, x)


def test_axial_levels_top_to_bottom_within_mask():
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[4:15, 6:10, 6:10] = 1  # z = 4..14
    levels = P.axial_levels(mask, n=6)
    assert len(levels) == 6
    assert levels[0] == 14 and levels[-1] == 4  # superior (highest z) first
    assert np.all(np.diff(levels) < 0)
    assert levels.min() >= 4 and levels.max() <= 14
    assert np.all(mask[levels].any(axis=(1, 2)))
    assert len(P.axial_levels(mask, n=1)) == 1 and 4 <= P.axial_levels(mask, n=1)[0] <= 14
    with pytest.raises(ValueError):
        P.axial_levels(np.zeros(SHAPE), n=4)


def _rendered(draw, shape: tuple[int, int]) -> np.ndarray:
    """Call ``draw(ax)`` on a black figure exactly ``shape`` pixels in size (one screen
    pixel per voxel) and return the RGB of each screen pixel (0..255)."""
    rows, cols = shape
    fig = Figure(figsize=(cols / 10, rows / 10), dpi=10, facecolor="black")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_facecolor("black")
    draw(ax)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(float)


def _rendered_ct(image: np.ndarray) -> np.ndarray:
    """The grey level of each screen pixel of a displayed CT panel."""
    return _rendered(lambda ax: P.imshow_ct(ax, image, aspect="auto"), image.shape)[..., 0]


def test_axial_panel_is_radiological():
    vol = np.full(SHAPE, -1000.0)
    vol[:, :, :14] = 0.0  # the patient's right half (small x) is bright
    vol[:, :4, 20:] = 200.0  # an anterior (small y) marker on the left side
    panel = P.axial_panel(vol, 10)
    half = panel.shape[1] // 2
    assert panel[:, :half].mean() > panel[:, half:].mean()  # right on the image's left
    assert panel[:4, 20:].min() == 200.0 and panel[-4:, 20:].max() == -1000.0  # marker at top
    shown = _rendered_ct(panel)
    assert shown.shape == (24, 28)
    assert shown[:, :12].mean() > shown[:, 16:].mean() + 50
    assert shown[:3, 22:].mean() > shown[-3:, 22:].mean() + 100


def test_coronal_and_sagittal_panels_put_superior_on_top():
    vol = np.full(SHAPE, -1000.0)
    vol[15:, :, :] = 0.0  # superior slab
    vol[:, :, :5] += 100.0  # patient's right edge
    vol[:, :5, :] += 150.0  # anterior edge
    cor = P.coronal_panel(vol, 12)
    assert cor.shape == (20, 28)
    assert cor[:5].mean() > cor[-5:].mean()  # superior at the top
    assert cor[:, :5].mean() > cor[:, -5:].mean()  # patient's right on the left
    shown = _rendered_ct(cor)
    assert shown[:4].mean() > shown[-4:].mean() + 100
    sag = P.sagittal_panel(vol, 14)
    assert sag.shape == (20, 24)
    assert sag[:5].mean() > sag[-5:].mean()
    assert sag[:, :5].mean() > sag[:, -5:].mean()  # anterior on the left


def test_clam_is_drawn_only_inside_the_lungs():
    importance = np.ones((20, 30))
    inside = np.zeros((20, 30), dtype=bool)
    inside[:, :15] = True
    shown = _rendered(lambda ax: P.imshow_clam(ax, importance, inside, alpha=1.0, aspect="auto"), (20, 30))
    assert shown[:, 2:13, 0].mean() > 100  # importance 1 is the jet map's dark red
    assert shown[:, 17:].max() == 0  # outside the lungs the black background shows


def test_slice_grid_places_square_panels_in_rows_and_columns():
    grid = P.SliceGrid(2, 3, panel=1.0, col_gaps={0: 0.5})
    assert grid.axes.shape == (2, 3)
    boxes = [[ax.get_position() for ax in row] for row in grid.axes]
    width, height = grid.fig.get_size_inches()
    assert np.isclose(boxes[0][0].width * width, 1.0) and np.isclose(boxes[0][0].height * height, 1.0)
    assert boxes[0][0].y0 > boxes[1][0].y0  # row 0 on top
    gap_after_first = (boxes[0][1].x0 - boxes[0][0].x1) * width
    gap_after_second = (boxes[0][2].x0 - boxes[0][1].x1) * width
    assert np.isclose(gap_after_first, 0.5) and np.isclose(gap_after_second, 0.05)


def test_pca2_scores_and_shares():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0, 0, 0], [4, 0, 0, 0], [0, 4, 0, 0]])
    feats = rng.normal(size=(24, 4)) + centres[np.arange(24) % 3]
    scores, share = P.pca2(feats)
    assert share[0] > share[1] > 0 and share.sum() <= 1.0
    assert np.isclose(scores[:, 0].var(), np.linalg.svd(feats - feats.mean(0), compute_uv=False)[0] ** 2 / 24)
    flipped, _ = P.pca2(-feats)  # the sign is fixed by the loadings: negated data, negated scores
    assert np.allclose(flipped, -scores)
    one_feature, one_share = P.pca2(feats[:, :1])
    assert np.all(one_feature[:, 1] == 0) and np.isnan(one_share[1])
    assert P.pc_label(1, float("nan")) == "PC2 (n/a)" and P.pc_label(0, 0.5) == "PC1 (50.0 % variance)"
