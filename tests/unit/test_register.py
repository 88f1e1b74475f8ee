"""Template building and registration with real antspyx runs on small synthetic chests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lungclam.metrics import dice
from lungclam.register import AFFINE_FILE, INVERSE_WARP_FILE, WARP_FILE, register_to_template
from lungclam.sampling import sample_subjects
from lungclam.template import build_template


def toy_chest(rng: np.random.Generator, scale: float, shift_mm=(0.0, 0.0)) -> tuple[sitk.Image, sitk.Image]:
    """Soft-tissue ellipse with two ellipsoid lungs (labels 1 right = small x, 2 left), 4 mm."""
    size, sp = (70, 60, 60), 4.0
    z, y, x = np.indices(size[::-1]).astype(float) * sp
    cx, cy, cz = 140 + shift_mm[0], 120 + shift_mm[1], 120
    body = ((x - cx) / (120 * scale)) ** 2 + ((y - cy) / (90 * scale)) ** 2 <= 1
    hu = np.where(body, 40, -1000).astype(np.int16)
    labels = np.zeros(hu.shape, np.uint8)
    for label, dx in ((1, -55), (2, 55)):
        lung = ((x - cx - dx * scale) / (40 * scale)) ** 2 + ((y - cy) / (55 * scale)) ** 2 + (
            (z - cz) / (90 * scale)
        ) ** 2 <= 1
        labels[lung] = label
    hu[labels > 0] = -850
    hu = hu + rng.normal(0, 15, hu.shape).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((sp,) * 3)
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    return image, label_image


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(0)
    return [toy_chest(rng, s, shift) for s, shift in ((0.9, (5, 0)), (1.0, (0, 0)), (1.1, (-5, 5)), (0.95, (10, -8)))]


@pytest.fixture(scope="module")
def template(cohort):
    return build_template([c[0] for c in cohort[:3]], [c[1] for c in cohort[:3]], spacing_mm=4.0, max_iterations=3)


def test_sample_subjects_is_seeded_sized_and_order_free() -> None:
    subjects = [f"s{i:02d}" for i in range(40)]
    a = sample_subjects(subjects, 0.1, 3, seed=1)
    assert len(a) == 4 and a == sorted(a)
    assert sample_subjects(list(reversed(subjects)), 0.1, 3, seed=1) == a
    assert len(sample_subjects(subjects[:5], 0.1, 3, seed=1)) == 3
    assert sample_subjects(subjects, 0.1, 3, seed=2) != a


def test_sample_subjects_replaces_only_excluded_members() -> None:
    subjects = [f"s{i:02d}" for i in range(40)]
    a = sample_subjects(subjects, 0.1, 3, seed=1)
    outsider = next(s for s in subjects if s not in a)
    assert sample_subjects(subjects, 0.1, 3, seed=1, exclude=[outsider]) == a
    b = sample_subjects(subjects, 0.1, 3, seed=1, exclude=[a[0]])
    assert len(b) == len(a) and a[0] not in b and set(a[1:]) <= set(b)
    assert sample_subjects(subjects[:4], 0.1, 3, seed=1, exclude=subjects[:2]) == subjects[2:4]


def test_template_has_both_lungs_and_logs_iterations(template) -> None:
    labels = sitk.GetArrayFromImage(template.labels)
    assert set(np.unique(labels)) == {0, 1, 2}
    # Right lung (label 1) sits at smaller x (patient right in LPS).
    assert np.argwhere(labels == 1)[:, 2].mean() < np.argwhere(labels == 2)[:, 2].mean()
    it = template.iterations
    assert list(it.columns[:3]) == ["iteration", "dice_with_previous", "mean_subject_dice"]
    assert 1 <= len(it) <= 3
    assert it["mean_subject_dice"].iloc[-1] > 0.9
    # Either it converged, or it ran every iteration.
    assert it["dice_with_previous"].iloc[-1] >= 0.99 or len(it) == 3
    assert template.image.GetSpacing() == (4.0, 4.0, 4.0)


def test_registration_aligns_an_unseen_subject(cohort, template, tmp_path: Path) -> None:
    image, labels = cohort[3]
    result = register_to_template(image, labels, template.image, template.labels, tmp_path / "tf", seed=0)
    assert result.lung_dice > 0.93
    for name in (AFFINE_FILE, WARP_FILE, INVERSE_WARP_FILE):
        assert (tmp_path / "tf" / name).is_file()
    assert not list((tmp_path / "tf").glob("ants_*"))
    # Output lives on the template grid, and registration really moved the lungs.
    assert result.warped.GetSize() == template.image.GetSize()
    before = sitk.Resample(labels, template.labels, sitk.Transform(), sitk.sitkNearestNeighbor)
    before_dice = dice(sitk.GetArrayFromImage(before) > 0, sitk.GetArrayFromImage(template.labels) > 0)
    assert result.lung_dice > before_dice + 0.05
    # Labels keep their sides after warping.
    warped = sitk.GetArrayFromImage(result.warped_labels)
    assert np.argwhere(warped == 1)[:, 2].mean() < np.argwhere(warped == 2)[:, 2].mean()


@pytest.mark.parametrize("seed", [0, 3])
def test_registration_is_deterministic_for_a_seed(cohort, template, tmp_path: Path, seed: int) -> None:
    """Bit-identical for a seed, 0 (the default config's seed, which ANTs itself would take
    as "unseeded") included; single-threaded ITK is set in tests/conftest.py."""
    image, labels = cohort[3]
    a = register_to_template(image, labels, template.image, template.labels, tmp_path / "a", seed=seed)
    b = register_to_template(image, labels, template.image, template.labels, tmp_path / "b", seed=seed)
    assert np.array_equal(sitk.GetArrayFromImage(a.warped), sitk.GetArrayFromImage(b.warped))
    assert (tmp_path / "a" / WARP_FILE).read_bytes() == (tmp_path / "b" / WARP_FILE).read_bytes()


def test_coarsen_keeps_the_extent_and_skips_finer_grids(cohort) -> None:
    import ants

    from lungclam.register import coarsen, syn_grid_spacing

    image = ants.from_sitk(sitk.Cast(cohort[0][0], sitk.sitkFloat32))
    coarse = coarsen(image, 8.0)
    assert coarse.spacing == (8.0, 8.0, 8.0) and coarse.shape == (35, 30, 30)
    extent = np.asarray(image.shape) * np.asarray(image.spacing)
    assert np.allclose(np.asarray(coarse.shape) * np.asarray(coarse.spacing), extent)
    # Mean HU survives (smoothing and linear resampling, no aliasing artefacts of note).
    assert abs(coarse.numpy().mean() - image.numpy().mean()) < 10
    assert coarsen(image, 2.0) is image  # finer than the image: nothing to do
    assert syn_grid_spacing(1.0, 2.0) == 2.0 and syn_grid_spacing(3.0, 2.0) == 3.0
    assert syn_grid_spacing(1.0, None) == 1.0


def test_registration_on_a_coarser_syn_grid_keeps_outputs_on_the_template_grid(
    cohort, template, tmp_path: Path
) -> None:
    """SyN estimated at 8 mm for a 4 mm template: an eighth of the voxels (the memory bound),
    outputs still on the 4 mm grid, and the lungs still aligned."""
    image, labels = cohort[3]
    result = register_to_template(
        image, labels, template.image, template.labels, tmp_path / "tf", syn_spacing_mm=8.0, seed=0
    )
    assert result.warped.GetSize() == template.image.GetSize()
    assert result.warped.GetSpacing() == template.image.GetSpacing()
    warp = sitk.ReadImage(str(tmp_path / "tf" / WARP_FILE))
    assert warp.GetSpacing() == (8.0, 8.0, 8.0)
    before = sitk.Resample(labels, template.labels, sitk.Transform(), sitk.sitkNearestNeighbor)
    before_dice = dice(sitk.GetArrayFromImage(before) > 0, sitk.GetArrayFromImage(template.labels) > 0)
    assert result.lung_dice > 0.9 and result.lung_dice > before_dice + 0.05


def test_template_with_a_coarser_syn_grid_stays_at_its_spacing(cohort) -> None:
    built = build_template(
        [c[0] for c in cohort[:3]], [c[1] for c in cohort[:3]], spacing_mm=4.0, syn_spacing_mm=8.0, max_iterations=2
    )
    assert built.image.GetSpacing() == (4.0, 4.0, 4.0)
    assert set(np.unique(sitk.GetArrayFromImage(built.labels))) == {0, 1, 2}
    assert built.iterations["mean_subject_dice"].iloc[-1] > 0.9
