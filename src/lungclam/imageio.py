"""Reading and writing images on disk.

Convention used across lungclam: images live in memory as ``SimpleITK.Image`` in ITK's
physical LPS space (x to the patient's left, y to posterior, z to superior, millimetres).
``sitk.GetArrayFromImage`` gives numpy arrays in (z, y, x) index order. On disk, images are
NIfTI (``.nii.gz``) written by SimpleITK, which converts LPS to the RAS affine NIfTI uses,
so any viewer overlays them correctly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lungclam.atomic import atomic_path
from lungclam.errors import SubjectError
from lungclam.intensity import normalize_hu


def read_image(path: str | Path) -> sitk.Image:
    """Read a NIfTI (or any ITK-readable) image."""
    return sitk.ReadImage(str(path))


def write_image(image: sitk.Image, path: str | Path) -> None:
    """Write ``image`` atomically: to a temporary name first, then rename.

    A job killed mid-write therefore never leaves a truncated file under the final name.
    """
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def to_lps(image: sitk.Image) -> sitk.Image:
    """Reorient to identity direction (LPS), so array axes are (z=S, y=P, x=L)."""
    return sitk.DICOMOrient(image, "LPS")


def read_array(path: str | Path) -> np.ndarray:
    """Voxel array of an image in SimpleITK order ``(z, y, x)`` (2D: ``(y, x)``)."""
    return sitk.GetArrayFromImage(read_image(path))


def write_map(array: np.ndarray, reference: sitk.Image, path: str | Path) -> None:
    """Write a ``(z, y, x)`` float map with the geometry (origin, spacing, direction) of
    ``reference``, so viewers overlay it on images of that grid; float32, atomic."""
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    if image.GetSize() != reference.GetSize():
        raise ValueError(f"map of size {image.GetSize()} does not fit the reference grid {reference.GetSize()}")
    image.CopyInformation(reference)
    write_image(image, path)


def load_volumes(
    paths: Sequence[str | Path], subjects: Sequence[str], min_hu: float = -1024.0, max_hu: float = 200.0
) -> np.ndarray:
    """Stack downsampled volumes into model inputs ``(N, 1, z, y, x)`` float32 in ``[0, 1]``
    (:func:`lungclam.intensity.normalize_hu` with the window ``min_hu..max_hu``).

    All volumes must share one grid (the downsample stage guarantees it); a volume that
    does not, or cannot be read, raises :class:`SubjectError` naming its subject.
    """
    arrays = []
    for subject, path in zip(subjects, paths, strict=True):
        try:
            arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        except RuntimeError as exc:
            raise SubjectError(subject, f"cannot read model input: {exc}", path) from exc
        if arrays and arr.shape != arrays[0].shape:
            raise SubjectError(subject, f"grid {arr.shape} differs from {arrays[0].shape} of the others", path)
        arrays.append(normalize_hu(arr, min_hu, max_hu))
    return np.stack(arrays)[:, None]
