"""Resampling keeps physical geometry; padding never becomes tissue; cropping keeps lungs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lungclam.downsample import downsample_to_grid, fill_outside_lungs, grid_mask, lung_coverage, lung_grid
from lungclam.resample import crop_to_mask, grid_like, resample_ct, resample_labels


def ball_image(size=(40, 30, 20), spacing=(0.8, 0.8, 2.5), centre_mm=(16.0, 12.0, 25.0), radius_mm=8.0):
    """A bright ball (100 HU) in air, with -2048 padding in one corner; LPS, identity."""
    z, y, x = np.indices(size[::-1]).astype(float)
    px, py, pz = x * spacing[0], y * spacing[1], z * spacing[2]
    inside = (px - centre_mm[0]) ** 2 + (py - centre_mm[1]) ** 2 + (pz - centre_mm[2]) ** 2 <= radius_mm**2
    array = np.where(inside, 100, -1000).astype(np.int16)
    array[:, :3, :3] = -2048
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image, inside


def test_resample_preserves_extent_and_position() -> None:
    image, inside = ball_image()
    out = resample_ct(image, 2.0)
    assert out.GetPixelID() == sitk.sitkInt16
    assert out.GetSpacing() == (2.0, 2.0, 2.0)
    # Same physical extent within one voxel, and the ball's centre of mass stays put.
    extent_in = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    extent_out = np.asarray(out.GetSize()) * 2.0
    assert np.all(np.abs(extent_in - extent_out) <= 2.0)

    def centre(img):
        arr = sitk.GetArrayFromImage(img) > 0
        idx = np.argwhere(arr).mean(axis=0)[::-1]
        return np.asarray(img.TransformContinuousIndexToPhysicalPoint(idx.tolist()))

    assert np.linalg.norm(centre(image) - centre(out)) < 1.0
    # Padding is clipped to air, not interpolated below it.
    assert sitk.GetArrayFromImage(out).min() >= -1024


def test_resample_labels_nearest_keeps_label_values() -> None:
    image, inside = ball_image()
    labels = sitk.GetImageFromArray(inside.astype(np.uint8) * 2)
    labels.CopyInformation(image)
    out = resample_labels(labels, grid_like(image, 1.5))
    assert set(np.unique(sitk.GetArrayFromImage(out))) == {0, 2}


def test_crop_to_mask_keeps_margin_and_pads_outside() -> None:
    image, inside = ball_image()
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(image)
    cropped = crop_to_mask(image, mask, margin_mm=20.0, pad_value=-1024)
    # The ball sits 8 mm from the z=0 face at 2.5 mm slices: a 20 mm margin needs padding.
    arr = sitk.GetArrayFromImage(cropped)
    assert (arr == 100).sum() == inside.sum()
    low = np.asarray(cropped.GetOrigin())
    assert low[2] < image.GetOrigin()[2]


def test_lung_grid_is_centred_and_downsample_masks_outside() -> None:
    image, inside = ball_image(size=(60, 60, 40), spacing=(1.0, 1.0, 1.0), centre_mm=(30, 30, 20), radius_mm=10)
    labels = sitk.GetImageFromArray(inside.astype(np.uint8))
    labels.CopyInformation(image)
    reference = lung_grid(labels, 3.0, (12, 12, 12))
    centre = np.asarray(reference.TransformContinuousIndexToPhysicalPoint([5.5, 5.5, 5.5]))
    assert np.allclose(centre, (30, 30, 20), atol=1.0)
    assert lung_coverage(labels, reference) > 0.9
    mask = grid_mask(labels, reference)
    out = downsample_to_grid(image, mask, reference, background_hu=-1024)
    arr, m = sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(mask)
    assert out.GetPixelID() == sitk.sitkFloat32
    assert np.all(arr[m == 0] == -1024)
    assert arr[m > 0].max() > 50  # the ball's core survives the anti-alias smoothing


def test_fill_outside_lungs_removes_the_chest_wall_rim_from_the_model_input() -> None:
    # a "lung" ball of -850 HU inside soft tissue (+40 HU); the template mask is a larger
    # ball, as after a registration that leaves a rim of chest wall inside it
    size, spacing = (40, 40, 40), (1.0, 1.0, 1.0)
    z, y, x = np.indices(size[::-1]).astype(float)
    r = np.sqrt((x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2)
    lung = r <= 12
    array = np.where(lung, -850.0, 40.0).astype(np.float32)
    array[lung & (x > 26)] = -600.0  # an abnormal region at the lung's edge must survive
    image = sitk.GetImageFromArray(array)
    lungs = sitk.GetImageFromArray(lung.astype(np.uint8))
    template_mask = sitk.GetImageFromArray((r <= 15).astype(np.uint8))
    for im in (image, lungs, template_mask):
        im.SetSpacing(spacing)
    filled = sitk.GetArrayFromImage(fill_outside_lungs(image, lungs))
    np.testing.assert_array_equal(filled[lung], array[lung])
    assert np.all(filled[~lung] == np.median(array[lung]))
    reference = lung_grid(template_mask, 2.0, (16, 16, 16))
    mask = grid_mask(template_mask, reference)
    inside = sitk.GetArrayFromImage(mask) > 0
    kept = sitk.GetArrayFromImage(downsample_to_grid(image, mask, reference, -1024))[inside]
    clean = sitk.GetArrayFromImage(downsample_to_grid(image, mask, reference, -1024, lungs=lungs))[inside]
    assert kept.max() > -100  # the rim of soft tissue is in the input without the subject's mask
    assert clean.max() < -550 and clean.max() > -700  # with it: lung and the abnormal region only
    with pytest.raises(ValueError, match="empty"):
        fill_outside_lungs(image, lungs * 0)
    with pytest.raises(ValueError, match="grid"):
        fill_outside_lungs(image, sitk.GetImageFromArray(np.ones((4, 4, 4), np.uint8)))


def test_a_shallow_fill_takes_the_rim_and_keeps_dense_disease_that_the_lung_mask_left_out() -> None:
    # a lung ball whose mask leaves out a dense block (+40 HU consolidation, 8 voxels deep)
    # at its edge, as a -300 HU threshold would; spacing 2 mm on x, so depths are in mm
    size, spacing = (40, 40, 40), (2.0, 1.0, 1.0)  # x, y, z
    z, y, x = np.indices(size[::-1]).astype(float)
    r = np.sqrt(((x - 20) * 2) ** 2 + (y - 20) ** 2 + (z - 20) ** 2)
    lung = r <= 14
    consolidation = lung & (y > 26)
    lungs_mask = lung & ~consolidation
    array = np.where(lung, -850.0, 40.0).astype(np.float32)
    array[consolidation] = 40.0
    image = sitk.GetImageFromArray(array)
    lungs = sitk.GetImageFromArray(lungs_mask.astype(np.uint8))
    for im in (image, lungs):
        im.SetSpacing(spacing)
    distance = ndimage.distance_transform_edt(~lungs_mask, sampling=spacing[::-1])
    filled = sitk.GetArrayFromImage(fill_outside_lungs(image, lungs, depth_mm=2.0))
    median = np.median(array[lungs_mask])
    np.testing.assert_array_equal(filled[lungs_mask], array[lungs_mask])
    assert np.all(filled[~lungs_mask & (distance <= 2.0)] == median)  # the shell, 1 voxel on x and 2 on y, z
    assert np.all(filled[distance > 2.0] == array[distance > 2.0])
    deep = consolidation & (y > 28)
    assert deep.sum() > 100 and np.all(filled[deep] == 40.0)  # the block's bulk survives
    everything = sitk.GetArrayFromImage(fill_outside_lungs(image, lungs))
    assert np.all(everything[deep] == median)  # what the unlimited fill would lose
    with pytest.raises(ValueError, match="depth"):
        fill_outside_lungs(image, lungs, depth_mm=-1.0)
