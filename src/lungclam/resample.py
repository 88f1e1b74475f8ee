"""Resampling and cropping of CT volumes (SimpleITK, physical LPS space, mm).

Values below -1024 HU are the scanner's padding outside the field of view (-2048, -3024),
not tissue: they are clipped to air (-1024 HU) before interpolation, so a linear blend of
padding and body at the edge of the field of view cannot invent air inside the body.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

AIR_HU = -1024


def clip_padding(image: sitk.Image, air_hu: int = AIR_HU) -> sitk.Image:
    """Clip values below ``air_hu`` (padding outside the field of view) to ``air_hu``."""
    return sitk.Maximum(sitk.Cast(image, sitk.sitkFloat32), float(air_hu))


def grid_like(image: sitk.Image, spacing_mm: float | tuple[float, float, float]) -> sitk.Image:
    """An empty reference image covering the same physical extent at a new spacing.

    The new grid keeps the origin corner's outer edge and direction; its size is rounded
    so the covered extent changes by less than one new voxel.
    """
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    old_spacing = np.asarray(image.GetSpacing())
    extent = old_spacing * np.asarray(image.GetSize())
    size = [max(1, int(math.floor(e / s + 0.5))) for e, s in zip(extent, spacing)]
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    # Voxel centres: shift the origin so that the first new voxel's outer edge
    # coincides with the first old voxel's outer edge.
    corner = np.asarray(image.GetOrigin()) - direction @ (old_spacing / 2)
    origin = corner + direction @ (spacing / 2)
    reference = sitk.Image(size, sitk.sitkUInt8)
    reference.SetSpacing(tuple(spacing))
    reference.SetOrigin(tuple(origin))
    reference.SetDirection(image.GetDirection())
    return reference


def resample_ct(image: sitk.Image, spacing_mm: float | tuple[float, float, float]) -> sitk.Image:
    """Resample a CT (HU) to ``spacing_mm`` with linear interpolation; returns int16 HU."""
    reference = grid_like(image, spacing_mm)
    moved = sitk.Resample(
        clip_padding(image), reference, sitk.Transform(), sitk.sitkLinear, float(AIR_HU), sitk.sitkFloat32
    )
    return sitk.Cast(sitk.Round(moved), sitk.sitkInt16)


def resample_labels(labels: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Resample a label image onto ``reference``'s grid by nearest neighbour (uint8)."""
    return sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def mask_bounding_box(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest index (x, y, z) of the non-zero voxels of ``mask``."""
    array = sitk.GetArrayViewFromImage(mask)
    nonzero = np.nonzero(array)
    if nonzero[0].size == 0:
        raise ValueError("mask is empty")
    low_zyx = np.array([a.min() for a in nonzero])
    high_zyx = np.array([a.max() for a in nonzero])
    return low_zyx[::-1], high_zyx[::-1]


def crop_to_mask(image: sitk.Image, mask: sitk.Image, margin_mm: float, pad_value: float) -> sitk.Image:
    """Crop ``image`` to the bounding box of ``mask`` plus ``margin_mm`` on every side.

    Where the box plus margin leaves the image, the image is padded with ``pad_value``,
    so the lungs always sit inside a margin of known size.
    """
    low, high = mask_bounding_box(mask)
    margin = np.ceil(margin_mm / np.asarray(image.GetSpacing())).astype(int)
    low = low - margin
    high = high + margin
    size = np.asarray(image.GetSize())
    pad_low = np.maximum(0, -low)
    pad_high = np.maximum(0, high - (size - 1))
    if pad_low.any() or pad_high.any():
        image = sitk.ConstantPad(image, pad_low.tolist(), pad_high.tolist(), pad_value)
        low = low + pad_low
        high = high + pad_low
    return sitk.RegionOfInterest(image, (high - low + 1).tolist(), low.tolist())
