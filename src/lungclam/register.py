"""Registration of a subject's CT to the study template with ANTs SyN (antspyx).

ANTs and SimpleITK share ITK's physical LPS space, so images pass between them with
their geometry intact (``ants.from_sitk`` / ``ants.to_sitk``). Registration runs on the
HU image cropped to the lungs plus a margin, at the template's spacing: the chest wall in
the margin anchors the lung boundary, and the cropped volume keeps SyN fast.

Memory: SyN holds about 380 bytes per voxel of the grid it optimises on (float32 fields
for both halves of the symmetric transform, their inverses, metric gradients and
smoothing buffers), so a 1 mm chest CT cropped to its lungs (about 300x240x300 voxels)
needs 8.4 GB. ``syn_spacing_mm`` lets the warp be estimated on a coarser grid (2 mm:
an eighth of the voxels) and then applied to the images at the template's spacing: the
outputs stay on the fine grid, only the deformation is smoother (its update field is
smoothed over several voxels of the SyN grid anyway).

Method: Avants et al., "Symmetric diffeomorphic image registration with cross-correlation",
Med Image Anal 12(1), 2008; as used for lung CT in Ryan et al., "Cluster Activation Mapping
with Applications to Medical Imaging".
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import ants
import numpy as np
import SimpleITK as sitk

from lungclam.metrics import dice
from lungclam.resample import AIR_HU, clip_padding, crop_to_mask, grid_like

log = logging.getLogger(__name__)

#: Transform file names inside ``transforms/{subject}/``, in ANTs' application order.
AFFINE_FILE = "0GenericAffine.mat"
WARP_FILE = "1Warp.nii.gz"
INVERSE_WARP_FILE = "1InverseWarp.nii.gz"


@dataclass
class RegistrationResult:
    """Output of :func:`register_to_template`; images are on the template's grid."""

    warped: sitk.Image  # float32 HU
    warped_labels: sitk.Image  # uint8 lung labels (1 right, 2 left)
    forward_transforms: list[str]  # moving -> template, for ants.apply_transforms
    inverse_transforms: list[str]
    lung_dice: float  # union-of-lungs Dice with the template mask


def prepare_moving(
    image: sitk.Image, labels: sitk.Image, spacing_mm: float, margin_mm: float
) -> tuple[sitk.Image, sitk.Image]:
    """Crop a subject to its lungs plus ``margin_mm`` and resample to ``spacing_mm``.

    Returns float32 HU (padding clipped to air) and uint8 labels on the same grid.
    """
    hu = clip_padding(image)
    cropped = crop_to_mask(hu, labels, margin_mm, float(AIR_HU))
    reference = grid_like(cropped, spacing_mm)
    hu_out = sitk.Resample(cropped, reference, sitk.Transform(), sitk.sitkLinear, float(AIR_HU), sitk.sitkFloat32)
    labels_out = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return hu_out, labels_out


def ants_seed(seed: int) -> int:
    """Our seed (any integer >= 0) as a nonzero 31-bit ANTs seed (0 would mean unseeded)."""
    return int(seed) % (2**31 - 1) + 1


def syn_grid_spacing(template_spacing_mm: float, syn_spacing_mm: float | None) -> float:
    """The spacing (mm) SyN optimises on: the template's, or ``syn_spacing_mm`` if coarser."""
    if syn_spacing_mm is None:
        return float(template_spacing_mm)
    return max(float(template_spacing_mm), float(syn_spacing_mm))


def coarsen(image: ants.ANTsImage, spacing_mm: float) -> ants.ANTsImage:
    """``image`` resampled to an isotropic ``spacing_mm`` over the same extent (``image``
    itself when that is not coarser).

    A Gaussian (FWHM the new spacing, less what the old voxel already spans) is applied
    first, so that fine texture does not alias onto the coarse grid.
    """
    old = float(min(image.spacing))
    if spacing_mm <= old * (1 + 1e-6):
        return image
    sigma_mm = math.sqrt(spacing_mm**2 - old**2) / (2 * math.sqrt(2 * math.log(2)))
    fine = ants.to_sitk(image)
    smoothed = sitk.SmoothingRecursiveGaussian(sitk.Cast(fine, sitk.sitkFloat32), sigma_mm)
    reference = grid_like(fine, spacing_mm)
    coarse = sitk.Resample(smoothed, reference, sitk.Transform(), sitk.sitkLinear, float(AIR_HU), sitk.sitkFloat32)
    return ants.from_sitk(coarse)


def register_images(
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    *,
    transform: str,
    reg_iterations: tuple[int, ...],
    seed: int,
    out_prefix: str,
    syn_spacing_mm: float | None = None,
    warp_moving: bool = True,
) -> dict:
    """One seeded antspyx registration of ``moving`` to ``fixed`` (both HU), the transform
    estimated on a grid of ``syn_spacing_mm`` where that is coarser than ``fixed``.

    Transforms are written under ``out_prefix``; returns antspyx's result dict. Its
    ``warpedmovout`` is on ``fixed``'s own grid either way (on a coarser SyN grid, the
    transforms applied to the full-resolution ``moving``, outside it 0 as in ANTs' own
    output); ``warp_moving=False`` skips that image for callers that warp it themselves.

    ANTs takes a random seed of 0 to mean "no seed" (its metric sampling then differs on
    every call), so our seed ``s >= 0`` is passed as ``s + 1``. Bit-identical results also
    need a single ITK thread (see :func:`lungclam.runtime.set_threads`).
    """
    spacing = syn_grid_spacing(float(min(fixed.spacing)), syn_spacing_mm)
    syn_fixed = coarsen(fixed, spacing)
    result = ants.registration(
        fixed=syn_fixed,
        moving=coarsen(moving, spacing),
        type_of_transform=transform,
        reg_iterations=tuple(reg_iterations),
        random_seed=ants_seed(seed),
        outprefix=out_prefix,
        verbose=False,
    )
    if syn_fixed is not fixed:  # ANTs warped onto the coarse grid: warp the fine image instead
        result["warpedmovout"] = (
            ants.apply_transforms(fixed, moving, result["fwdtransforms"], interpolator="linear")
            if warp_moving
            else None
        )
    return result


def warp_labels(labels: sitk.Image, template: ants.ANTsImage, transforms: list[str]) -> sitk.Image:
    """Bring a label image into template space with nearest-neighbour interpolation."""
    moving = ants.from_sitk(sitk.Cast(labels, sitk.sitkFloat32))
    warped = ants.apply_transforms(template, moving, transforms, interpolator="nearestNeighbor")
    return sitk.Cast(ants.to_sitk(warped), sitk.sitkUInt8)


def register_to_template(
    image: sitk.Image,
    labels: sitk.Image,
    template: sitk.Image,
    template_labels: sitk.Image,
    transform_dir: str | Path,
    *,
    transform: str = "SyN",
    reg_iterations: tuple[int, ...] = (40, 20, 0),
    margin_mm: float = 10.0,
    syn_spacing_mm: float | None = None,
    seed: int = 0,
) -> RegistrationResult:
    """Register a subject's CT (any grid) to the template and keep its transforms.

    ``image`` is HU, ``labels`` its lung labels on the same grid. Transforms are written to
    ``transform_dir`` as ``0GenericAffine.mat``, ``1Warp.nii.gz`` and ``1InverseWarp.nii.gz``.
    The warp is estimated on a grid of ``syn_spacing_mm`` where that is coarser than the
    template (see :func:`register_images`); the outputs are on the template's grid either way.
    """
    transform_dir = Path(transform_dir)
    transform_dir.mkdir(parents=True, exist_ok=True)
    spacing = float(template.GetSpacing()[0])
    moving_hu, moving_labels = prepare_moving(image, labels, spacing, margin_mm)
    fixed = ants.from_sitk(sitk.Cast(template, sitk.sitkFloat32))
    moving = ants.from_sitk(moving_hu)
    prefix = str(transform_dir / "ants_")
    result = register_images(
        fixed,
        moving,
        transform=transform,
        reg_iterations=reg_iterations,
        seed=seed,
        out_prefix=prefix,
        syn_spacing_mm=syn_spacing_mm,
        warp_moving=False,
    )
    forward, inverse = _keep_transforms(result, transform_dir)
    warped = ants.to_sitk(
        ants.apply_transforms(fixed, moving, forward, interpolator="linear", defaultvalue=float(AIR_HU))
    )
    warped_labels = warp_labels(moving_labels, fixed, forward)
    score = lung_dice(warped_labels, template_labels)
    log.info("registered: lung Dice with template %.4f", score)
    return RegistrationResult(sitk.Cast(warped, sitk.sitkFloat32), warped_labels, forward, inverse, score)


def _keep_transforms(result: dict, transform_dir: Path) -> tuple[list[str], list[str]]:
    """Move ANTs' temporary transform files to stable names; return forward/inverse lists.

    ANTs lists forward transforms as [warp, affine] and inverse as [affine, inverse warp]
    (with the affine to be inverted); rigid/affine-only registrations have no warp.
    """
    forward: list[str] = []
    for path in result["fwdtransforms"]:
        name = AFFINE_FILE if path.endswith(".mat") else WARP_FILE
        target = transform_dir / name
        shutil.move(path, target)
        forward.append(str(target))
    inverse: list[str] = []
    for path in result["invtransforms"]:
        if path.endswith(".mat"):
            inverse.append(str(transform_dir / AFFINE_FILE))
        else:
            target = transform_dir / INVERSE_WARP_FILE
            shutil.move(path, target)
            inverse.append(str(target))
    for leftover in transform_dir.glob("ants_*"):
        leftover.unlink()
    return forward, inverse


def lung_dice(a: sitk.Image, b: sitk.Image) -> float:
    """Dice of the union of lungs (labels > 0) of two label images on one grid."""
    return dice(np.asarray(sitk.GetArrayViewFromImage(a)) > 0, np.asarray(sitk.GetArrayViewFromImage(b)) > 0)
