"""Training-time augmentation that chest anatomy allows: small shifts, small rotations and
an intensity jitter, never a left-right flip (the lungs are not mirror images: the heart,
the two fissures of the right lung, the left's lingula).

An autoencoder trained on a few hundred noisy images can learn them by heart, noise
included; showing it each image displaced by a registration's typical residual and with
its window slightly moved is a regulariser that needs no labels (DEC with augmentation:
Guo, Zhu, Liu & Yin 2018, cited by Ryan et al.). Images are channel-first batches
``(B, C, *spatial)`` of 2D ``(H, W)`` or 3D ``(D, H, W)`` grids, intensities normalised to
``[0, 1]`` (:func:`lungclam.intensity.normalize_hu`). Shifts are in voxels of that grid and
rotations in degrees about the grid's centre, in voxel space (the grid is isotropic: 3 mm
in the pipeline and in the simulation), so a rotation is a rotation whatever the grid's
proportions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Random displacement and intensity change of each image in a batch.

    shift_voxels: each axis's translation is uniform in ``[-shift, shift]`` voxels.
    rotate_degrees: each rotation angle is uniform in ``[-rotate, rotate]`` degrees; in 2D
        one angle in the image plane, in 3D one about each axis (composed z, y, x).
    intensity_jitter: the image becomes ``x * (1 + a) + b`` with ``a`` and ``b`` uniform in
        ``[-jitter, jitter]`` (on ``[0, 1]`` intensities; 0.01 is about 12 HU in the
        pipeline's window of 1224 HU).

    Resampling is nearest-neighbour, so an augmented image holds only values of the
    original (its noise keeps its texture and variance; linear interpolation would smooth
    it), and voxels pulled from outside the grid repeat its border (air at a scan's edge).
    """

    shift_voxels: float = 0.0
    rotate_degrees: float = 0.0
    intensity_jitter: float = 0.0

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) < 0:
                raise ValueError(f"augmentation {field.name} must be >= 0, got {getattr(self, field.name)}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> "Augmentation":
        """From a config's ``augment`` mapping (keys as the fields; absent ones are 0)."""
        section = section or {}
        return cls(**{f.name: float(section.get(f.name, 0.0)) for f in fields(cls)})

    @property
    def active(self) -> bool:
        """Whether this changes any image at all."""
        return bool(self.shift_voxels or self.rotate_degrees or self.intensity_jitter)

    def describe(self) -> str:
        """A short phrase for logs."""
        if not self.active:
            return "no augmentation"
        return (
            f"augmentation: shifts up to {self.shift_voxels:g} voxels, rotations up to "
            f"{self.rotate_degrees:g} degrees, intensity jitter {self.intensity_jitter:g}"
        )

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augmented copy of ``x`` (B, C, *spatial); the random draws come from ``generator``
        (a CPU generator, so a seeded run draws the same on any device)."""
        if not self.active:
            return x
        out = x
        if self.shift_voxels or self.rotate_degrees:
            out = _displace(out, self._affines(x.shape[0], x.ndim - 2, generator), x.shape[2:])
        if self.intensity_jitter:
            ab = (torch.rand((x.shape[0], 2), generator=generator, dtype=torch.float64) * 2 - 1) * self.intensity_jitter
            shape = (-1,) + (1,) * (x.ndim - 1)
            scale = (1 + ab[:, 0]).to(x.device, x.dtype).view(shape)
            offset = ab[:, 1].to(x.device, x.dtype).view(shape)
            out = out * scale + offset
        return out

    def _affines(self, batch: int, dims: int, generator: torch.Generator) -> torch.Tensor:
        """(B, dims, dims + 1) voxel-space maps from output to input positions, axes in
        grid_sample's (x, y[, z]) order, about the grid's centre."""
        n_angles = 1 if dims == 2 else 3
        angles = torch.rand((batch, n_angles), generator=generator, dtype=torch.float64)
        angles = (angles * 2 - 1) * math.radians(self.rotate_degrees)
        shifts = (torch.rand((batch, dims), generator=generator, dtype=torch.float64) * 2 - 1) * self.shift_voxels
        rotation = _rotation_2d(angles[:, 0]) if dims == 2 else _rotation_3d(angles)
        return torch.cat([rotation, shifts[:, :, None]], dim=2)


def _rotation_2d(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _rotation_3d(angles: torch.Tensor) -> torch.Tensor:
    """Rotations about the x, y and z axes, composed (B, 3, 3)."""
    eye = torch.eye(3, dtype=angles.dtype).expand(len(angles), 3, 3)
    total = eye
    for axis in range(3):
        c, s = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        i, j = [a for a in range(3) if a != axis]
        r = eye.clone()
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
        total = r @ total
    return total


def _displace(x: torch.Tensor, voxel_affines: torch.Tensor, spatial: torch.Size) -> torch.Tensor:
    """Resample ``x`` with voxel-space affines, converted to grid_sample's normalised
    coordinates: with ``align_corners=False`` a voxel offset ``v`` from the centre along an
    axis of ``n`` voxels is ``2 v / n`` there, so ``A_norm = S A S^-1`` and
    ``t_norm = S t`` with ``S = diag(2 / n)`` in (x, y[, z]) order."""
    sizes = torch.tensor(list(reversed(spatial)), dtype=torch.float64)
    scale = 2.0 / sizes
    linear = voxel_affines[:, :, :-1] * scale[None, :, None] / scale[None, None, :]
    translation = voxel_affines[:, :, -1] * scale[None, :]
    theta = torch.cat([linear, translation[:, :, None]], dim=2).to(x.device, torch.float32)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="border", align_corners=False)
    return moved.to(x.dtype)
