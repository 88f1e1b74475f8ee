"""The simulation study's data (base slice, scenarios, images) and its scores (seconds)."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage, stats

from lungclam.imageio import write_image
from lungclam.simulation.data import (
    BACKGROUND_HU,
    BaseSlice,
    _builtin_phantom,
    active_area,
    base_from_template,
    best_match_accuracy,
    builtin_base,
    cluster_sizes,
    compare_across_clusters,
    disc,
    localization_scores,
    make_scenario,
    mean_hu_in_active_area,
    simulate,
)


@cache
def base0() -> BaseSlice:
    """The default built-in base (seed 0), shared by the tests: treat as read-only."""
    return builtin_base()


# --------------------------------------------------------------------------- base slice


def test_builtin_base_is_a_plausible_lung_slice():
    base = base0()
    assert base.hu.shape == (64, 64) and base.lungs.shape == (64, 64)
    assert base.hu.dtype == np.float32 and base.lungs.dtype == bool
    assert base.pixel_mm == 3.0
    assert np.all(base.hu[~base.lungs] == BACKGROUND_HU)
    assert 0.20 <= base.lungs.mean() <= 0.60
    # Lungs keep off the canvas edge.
    assert not (base.lungs[0].any() or base.lungs[-1].any() or base.lungs[:, 0].any() or base.lungs[:, -1].any())
    median = float(np.median(base.hu[base.lungs]))
    assert -950.0 <= median <= -700.0
    # Two lungs side by side: two components, centroids apart in columns, rows overlapping.
    comps, n = ndimage.label(base.lungs)
    assert n == 2
    (r1, c1), (r2, c2) = ndimage.center_of_mass(base.lungs, comps, [1, 2])
    assert abs(c1 - c2) > 15 and abs(r1 - r2) < 10
    # Noise: a 1D sample of deviations around zero with a lung-like spread.
    assert base.noise.ndim == 1 and base.noise.dtype == np.float32 and base.noise.size > 1000
    assert abs(float(base.noise.mean())) < 1.0
    assert 20.0 < float(base.noise.std()) < 300.0


def test_builtin_base_is_in_radiological_convention():
    base = base0()
    right_cols = np.nonzero(base.labels == 1)[1]  # label 1: the patient's right lung
    left_cols = np.nonzero(base.labels == 2)[1]
    assert right_cols.size and left_cols.size
    assert right_cols.max() < 32 <= left_cols.min()
    assert np.array_equal(base.lungs, base.labels > 0)


def test_builtin_base_is_deterministic_for_a_seed():
    again = builtin_base(seed=0)
    assert np.array_equal(again.hu, base0().hu) and np.array_equal(again.noise, base0().noise)
    other = builtin_base(seed=1)
    assert not np.array_equal(other.hu, base0().hu)


def _toy_template(tmp_path: Path) -> tuple[Path, Path]:
    """A 3 mm LPS toy CT with box lungs, written in RAS orientation: the right lung (label 1,
    low x) reaches further anterior (low y) than the left one."""
    nz, ny, nx = 20, 40, 50
    hu = np.full((nz, ny, nx), 40, dtype=np.int16)
    labels = np.zeros((nz, ny, nx), dtype=np.uint8)
    labels[3:17, 8:30, 5:20] = 1
    labels[3:17, 15:30, 28:45] = 2
    hu[labels > 0] = -850
    hu[:, :, 0] = -2048  # a padding column, as outside a scanner's field of view
    images = []
    for array in (hu, labels):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((3.0, 3.0, 3.0))
        image.SetOrigin((-75.0, -60.0, 100.0))
        images.append(sitk.DICOMOrient(image, "RAS"))
    assert images[0].GetDirection()[0] == -1.0  # really stored flipped
    write_image(images[0], tmp_path / "toy.nii.gz")
    write_image(images[1], tmp_path / "toy_mask.nii.gz")
    return tmp_path / "toy.nii.gz", tmp_path / "toy_mask.nii.gz"


def test_base_from_template_orientation_and_background(tmp_path):
    ct, mask = _toy_template(tmp_path)
    base = base_from_template(ct, mask)
    assert base.hu.shape == (64, 64)
    assert np.all(base.hu[~base.lungs] == BACKGROUND_HU)
    assert np.all(base.hu[base.lungs] == -850.0)
    rows_r, cols_r = np.nonzero(base.labels == 1)
    rows_l, cols_l = np.nonzero(base.labels == 2)
    assert cols_r.max() < cols_l.min()  # patient's right on the viewer's left
    assert rows_r.min() < rows_l.min()  # anterior at the top: the right box starts higher
    assert (rows_r.max() - rows_r.min() + 1, cols_r.max() - cols_r.min() + 1) == (22, 15)
    assert base.lungs.sum() == 22 * 15 + 15 * 17
    with pytest.raises(ValueError, match="does not fit"):
        base_from_template(ct, mask, size=32)


def test_base_from_template_matches_the_builtin_phantom(tmp_path):
    phantom = _builtin_phantom(64, 3.0, 0, 1.3)  # the phantom builtin_base(seed=0) draws first
    write_image(phantom.image(), tmp_path / "ph.nii.gz")
    write_image(phantom.image(phantom.lungs), tmp_path / "ph_mask.nii.gz")
    base = base_from_template(tmp_path / "ph.nii.gz", tmp_path / "ph_mask.nii.gz")
    assert np.array_equal(base.hu, base0().hu)
    assert np.array_equal(base.lungs, base0().lungs)
    # Without a mask, the lungs are segmented: close to the true ones.
    seg = base_from_template(tmp_path / "ph.nii.gz")
    dice = 2 * (seg.lungs & base.lungs).sum() / (seg.lungs.sum() + base.lungs.sum())
    assert dice > 0.9


# --------------------------------------------------------------------------- disc


@pytest.mark.parametrize("radius", [3.0, 4.0, 5.0, 6.0, 10.0])
def test_disc_area_is_close_to_pi_r_squared(radius):
    mask = disc((64, 64), (30.0, 33.0), radius)
    assert mask.dtype == bool and mask.shape == (64, 64)
    assert abs(mask.sum() - math.pi * radius**2) <= 0.15 * math.pi * radius**2
    assert mask[30, 33]
    rows, cols = np.nonzero(mask)
    assert np.all((rows - 30.0) ** 2 + (cols - 33.0) ** 2 <= radius**2)
    assert rows.min() == 30 - int(radius) and cols.max() == 33 + int(radius)


def test_disc_small_and_off_grid():
    assert disc((9, 9), (4, 4), 0).sum() == 1
    assert disc((9, 9), (4, 4), 1).sum() == 5  # centre and its 4 neighbours
    assert disc((9, 9), (4.5, 4.5), 0.75).sum() == 4  # the four pixels around the point


# --------------------------------------------------------------------------- scenarios


def _check_common(name: str, k: int):
    base = base0()
    scenario = make_scenario(name, k, base)
    assert scenario.name == name and scenario.true_k == k
    assert len(scenario.intensities) == len(scenario.centres) == len(scenario.radii) == k
    images, labels, masks = simulate(scenario, base, n_images=300, seed=3)
    assert images.shape == (300, 64, 64) and images.dtype == np.float32
    assert labels.shape == (300,) and masks.shape == (300, 64, 64) and masks.dtype == bool
    counts = np.bincount(labels, minlength=k)
    assert counts.size == k and counts.max() - counts.min() <= 1 and counts.sum() == 300
    assert not np.all(np.diff(labels) >= 0)  # shuffled, not in blocks
    for j in range(k):
        expected = disc((64, 64), scenario.centres[j], scenario.radii[j])
        assert expected.sum() > 0
        assert np.all(masks[labels == j] == expected)
    assert not (masks & ~base.lungs).any()  # every disc inside the lungs
    assert np.all(images[:, ~base.lungs] == BACKGROUND_HU)  # background untouched
    return base, scenario, images, labels, masks


@pytest.mark.parametrize("k", [3, 4, 5])
def test_intensity_scenario(k):
    base, scenario, images, labels, masks = _check_common("intensity", k)
    levels = scenario.intensities
    assert levels == sorted(set(levels)) and levels[0] == 0.0 and levels[-1] == 400.0
    assert all(v % 100 == 0 for v in levels)
    assert len(set(scenario.centres)) == 1 and len(set(scenario.radii)) == 1
    diff = images - base.hu
    for j in range(k):
        inside = diff[labels == j][masks[labels == j]]
        assert abs(inside.mean() - levels[j]) < 15.0
    outside = diff[:, base.lungs & ~masks[0]]
    assert abs(outside.mean()) < 5.0
    assert abs(outside.std() - base.noise.std()) < 0.1 * base.noise.std()


def test_intensity_and_size_levels_rule():
    base = base0()
    assert make_scenario("intensity", 5, base).intensities == [0, 100, 200, 300, 400]
    assert make_scenario("intensity", 4, base).intensities == [0, 100, 300, 400]
    assert make_scenario("intensity", 3, base).intensities == [0, 200, 400]
    assert make_scenario("size", 5, base).radii == [2, 3, 4, 5, 6]
    assert make_scenario("size", 4, base).radii == [2, 3, 5, 6]
    assert make_scenario("size", 3, base).radii == [2, 4, 6]


@pytest.mark.parametrize("k", [3, 4, 5])
def test_size_scenario(k):
    base, scenario, images, labels, masks = _check_common("size", k)
    radii = scenario.radii
    assert radii == sorted(set(radii)) and radii[0] == 2 and radii[-1] == 6
    assert len(set(scenario.centres)) == 1 and len(set(scenario.intensities)) == 1
    areas = [masks[labels == j][0].sum() for j in range(k)]
    assert all(a < b for a, b in zip(areas, areas[1:]))
    # Nested discs around one centre.
    for j in range(k - 1):
        assert not (masks[labels == j][0] & ~masks[labels == j + 1][0]).any()


@pytest.mark.parametrize("k", [3, 4, 5])
def test_location_scenario(k):
    base, scenario, images, labels, masks = _check_common("location", k)
    assert len(set(scenario.centres)) == k
    assert len(set(scenario.radii)) == 1 and len(set(scenario.intensities)) == 1
    radius = scenario.radii[0]
    centres = np.array(scenario.centres)
    gaps = np.hypot(*(centres[:, None] - centres[None]).transpose(2, 0, 1))
    assert gaps[~np.eye(k, dtype=bool)].min() >= 2 * radius + 2
    per_cluster = np.stack([masks[labels == j][0] for j in range(k)])
    assert per_cluster.sum(axis=0).max() == 1  # no overlap
    # Spread over both lungs.
    sides = {int(base.labels[int(r), int(c)]) for r, c in scenario.centres}
    assert sides == {1, 2}
    # The same disc intensity in every cluster.
    diff = images - base.hu
    means = [diff[labels == j][masks[labels == j]].mean() for j in range(k)]
    assert np.ptp(means) < 25.0


def test_simulate_is_seeded():
    base = base0()
    scenario = make_scenario("intensity", 3, base)
    a = simulate(scenario, base, n_images=30, seed=5)
    b = simulate(scenario, base, n_images=30, seed=5)
    c = simulate(scenario, base, n_images=30, seed=6)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    # Same labels, different noise.
    same = a[1] == c[1]
    assert same.any() and not np.array_equal(a[0][same], c[0][same])


def test_simulate_without_noise_is_base_plus_disc():
    base = base0()
    scenario = make_scenario("size", 3, base)
    images, labels, masks = simulate(scenario, base, n_images=12, seed=0, noise_scale=0.0)
    expected = base.hu[None] + 300.0 * masks
    assert np.array_equal(images, expected.astype(np.float32))
    scaled, _, _ = simulate(scenario, base, n_images=12, seed=0, noise_scale=2.0)
    plain, _, _ = simulate(scenario, base, n_images=12, seed=0, noise_scale=1.0)
    np.testing.assert_allclose(scaled - expected, 2.0 * (plain - expected), atol=1e-3)


def test_make_scenario_rejects_bad_input():
    base = base0()
    with pytest.raises(ValueError, match="unknown scenario"):
        make_scenario("texture", 3, base)
    with pytest.raises(ValueError):
        make_scenario("intensity", 6, base)
    with pytest.raises(ValueError):
        make_scenario("size", 1, base)
    # Lungs too thin for the discs.
    hu = np.full((64, 64), BACKGROUND_HU, dtype=np.float32)
    lungs = np.zeros((64, 64), dtype=bool)
    lungs[20:44, 30:35] = True
    hu[lungs] = -850.0
    thin = BaseSlice(hu=hu, lungs=lungs, noise=np.zeros(10, np.float32), pixel_mm=3.0)
    for name in ("intensity", "location", "size"):
        with pytest.raises(ValueError):
            make_scenario(name, 3, thin)


# --------------------------------------------------------------------------- scores


def test_best_match_accuracy_hand_made():
    acc, mapping = best_match_accuracy(np.array([0, 0, 1, 1, 2, 2]), np.array([2, 2, 0, 0, 1, 1]))
    assert acc == 1.0 and mapping == {2: 0, 0: 1, 1: 2}
    true = np.array([0] * 5 + [1] * 5)
    pred = np.array([1] * 5 + [0] * 4 + [1])
    acc, mapping = best_match_accuracy(true, pred)
    assert acc == pytest.approx(0.9) and mapping == {1: 0, 0: 1}
    acc, mapping = best_match_accuracy(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 2]))
    assert acc == pytest.approx(0.75) and mapping[2] == 1 and len(mapping) == 2
    acc, mapping = best_match_accuracy(np.array([0, 0, 1, 1]), np.array([3, 3, 3, 3]))
    assert acc == pytest.approx(0.5) and list(mapping) == [3]


def test_cluster_sizes():
    assert cluster_sizes(np.array([0, 2, 2, 4]), 5) == [1, 0, 2, 0, 1]
    assert cluster_sizes(np.array([], dtype=int), 2) == [0, 0]
    with pytest.raises(ValueError):
        cluster_sizes(np.array([0, 3]), 3)


def test_localization_scores_hand_made():
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[:, 6:9, 6:9] = True
    clam = np.zeros((3, 16, 16))
    clam[0] = masks[0] * 0.8  # the map is the mask
    clam[1, 8, 10] = 1.0  # 2 pixels right of the mask (columns 6..8)
    table = localization_scores(clam, masks, margin=2)  # clam[2]: all zero
    assert list(table.index) == [0, 1, 2]
    assert table.loc[0, "mass_inside"] == pytest.approx(1.0) and table.loc[0, "max_inside"]
    assert table.loc[0, "active_area"] == 9
    assert table.loc[1, "mass_inside"] == 0.0 and table.loc[1, "mass_inside_margin"] == pytest.approx(1.0)
    assert not table.loc[1, "max_inside"] and table.loc[1, "max_inside_margin"]
    assert table.loc[1, "active_area"] == 1
    assert math.isnan(table.loc[2, "mass_inside"]) and math.isnan(table.loc[2, "mass_inside_margin"])
    assert not table.loc[2, "max_inside"] and not table.loc[2, "max_inside_margin"]
    # A disc element: a diagonal step of (2, 2) is farther than 2 pixels.
    diag = np.zeros((1, 16, 16))
    diag[0, 10, 10] = 1.0
    row = localization_scores(diag, masks[:1], margin=2).iloc[0]
    assert row["mass_inside_margin"] == 0.0 and not row["max_inside_margin"]


def test_active_area_and_mean_hu():
    clam = np.zeros((2, 4, 4))
    clam[0, :2, :2] = [[0.5, 0.9], [0.49, 1.0]]
    images = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    assert active_area(clam).tolist() == [3, 0]
    assert active_area(clam, threshold=0.95).tolist() == [1, 0]
    mean_hu = mean_hu_in_active_area(images, clam)
    assert mean_hu[0] == pytest.approx((0 + 1 + 5) / 3) and math.isnan(mean_hu[1])


def test_compare_across_clusters_matches_scipy():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    values = rng.normal(0.0, 1.0, 60) + 0.8 * labels
    values[5] = np.nan  # dropped
    out = compare_across_clusters(values, labels)
    groups = [values[(labels == j) & np.isfinite(values)] for j in range(3)]
    direct = stats.f_oneway(*groups)
    assert out["anova_p"] == pytest.approx(direct.pvalue)
    assert out["f_stat"] == pytest.approx(direct.statistic)
    assert out["kruskal_p"] == pytest.approx(stats.kruskal(*groups).pvalue)
    assert out["means"][1] == pytest.approx(groups[1].mean()) and set(out["means"]) == {0, 1, 2}
    same = compare_across_clusters(np.ones(6), np.array([0, 0, 1, 1, 2, 2]))
    assert math.isnan(same["kruskal_p"])
    single = compare_across_clusters(np.arange(4.0), np.zeros(4, int))
    assert math.isnan(single["anova_p"]) and single["means"] == {0: 1.5}


def test_kernel_scale_settings() -> None:
    from lungclam.simulation.cases import StudySettings, _kernel_scale

    settings = StudySettings()
    square = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    features = np.vstack([square, square + [50.0, 0.0]])
    assert _kernel_scale("median", features, 2, settings) is None
    assert _kernel_scale("within", features, 2, settings) == pytest.approx(np.sqrt(2.0))
    assert _kernel_scale("2 within", features, 2, settings) == pytest.approx(2 * np.sqrt(2.0))
    assert _kernel_scale(0.5, features, 2, settings) == 0.5
    with pytest.raises(ValueError, match="kernel_scale"):
        _kernel_scale("largest", features, 2, settings)


def test_pretrain_case_takes_the_augmentation_from_the_settings() -> None:
    import torch

    from lungclam.simulation.cases import StudySettings, pretrain_case

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (12, 1, 16, 16)).astype(np.float32)
    model = {"channels": [4, 8], "strides": [2, 2], "kernel": 4, "latent_dim": 4}

    def losses(augment: dict) -> list[float]:
        settings = StudySettings(pretrain_epochs=2, batch_size=4, model=model, augment=augment)
        return pretrain_case(x, (16, 16), settings, torch.device("cpu"))[1]["loss"].tolist()

    plain = losses({})
    assert losses({"shift_voxels": 0, "rotate_degrees": 0, "intensity_jitter": 0}) == plain
    assert losses({"shift_voxels": 1, "rotate_degrees": 5}) != plain
    assert StudySettings.from_config({"augment": {"shift_voxels": 1}}, seed=0).augment == {"shift_voxels": 1}
