"""Seeded synthetic chest CTs, and a demo cohort written as real DICOM series.

:func:`make_chest_phantom` draws one subject: an elliptical trunk (fat over muscle), spine,
ribs, sternum, mediastinum, heart and aorta, two lungs of plausible shape (right larger,
domed bases over the diaphragm, rounded apices, cardiac notch on the left) with textured
parenchyma, branching vessel and airway trees, trachea and main bronchi, a patient table,
scanner blur and noise, and the scanner's padding value outside the circular field of view.
Each subject carries one disease pattern from :data:`PATTERNS` (:data:`ALL_PATTERNS` adds a
fourth) whose extent and density scale with a severity in [0, 1].

:func:`write_dicom_series` and :func:`write_localizer` write a phantom as DICOM (one file per
axial slice, plus an optional one-image localizer series), and :func:`write_demo_cohort`
writes a whole cohort with ``samples.tsv``, ``clinical.tsv`` and ``truth.tsv``.

Conventions: physical coordinates are ITK LPS millimetres (x to the patient's left, y to
posterior, z to superior); numpy arrays are indexed (z, y, x); intensities are Hounsfield
units (HU). Internally the anatomy is drawn in a *body frame* (u, v, w): u and v are x and
y rotated by the subject's small roll angle about z and centred on the trunk, and w is
height in mm above the lowest point of the lungs (the deepest costophrenic recess).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds
from scipy import ndimage

from lungclam.atomic import write_table
from lungclam.imageio import write_image

#: The patterns of the default demo cohort (exactly three, balanced).
PATTERNS: tuple[str, ...] = ("near_normal", "upper_reticulation", "perihilar_nodules")
#: Every pattern :func:`make_chest_phantom` knows.
ALL_PATTERNS: tuple[str, ...] = PATTERNS + ("lower_ground_glass",)

# Tissue values (HU) of a non-contrast chest CT.
AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_HU = 40.0  # muscle, mediastinum, heart and vessels (blood without contrast)
LIVER_HU = 55.0
CARTILAGE_HU = 120.0
DISC_HU = 80.0
CANCELLOUS_HU = 420.0  # vertebral body interior
CORTICAL_HU = 700.0  # vertebral body rim and posterior elements
RIB_HU = 550.0
STERNUM_HU = 450.0
TABLE_HU = 150.0
BRONCHIAL_WALL_HU = 20.0
PARENCHYMA_HU = -885.0  # lung tissue between vessels; with vessels the lung mean is ~ -845
NODULE_HU = 35.0
#: Value written outside the reconstruction circle, as many scanners do.
PADDING_HU = -2048
#: Scanner range of real HU (12-bit data shifted by -1024).
HU_MIN, HU_MAX = -1024, 3071

#: Nominal lung height (deepest recess to apex, mm) at body scale 1.
LUNG_HEIGHT_MM = 225.0


@dataclass
class Phantom:
    """One synthetic chest CT with its ground truth.

    Arrays are indexed (z, y, x) on an axis-aligned LPS grid (identity direction).

    Attributes:
        hu: CT values in HU, int16; ``PADDING_HU`` outside the field of view.
        lungs: true lung labels, uint8: 0 background, 1 right lung (smaller x in LPS),
            2 left lung. Vessels and intrapulmonary airways count as lung; the trachea and
            main bronchi do not.
        disease: uint8 mask (0/1) of where the disease pattern was placed (inside the lungs).
        spacing: voxel size (x, y, z) in mm.
        origin: LPS position (x, y, z) in mm of voxel (0, 0, 0).
        pattern: the disease pattern's name.
        severity: the pattern's severity in [0, 1].
        info: the subject's drawn parameters (sizes in mm, angle in degrees, noise in HU).
    """

    hu: np.ndarray
    lungs: np.ndarray
    disease: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    pattern: str = "near_normal"
    severity: float = 0.0
    info: dict[str, float] = field(default_factory=dict)

    def image(self, array: np.ndarray | None = None) -> sitk.Image:
        """``array`` (default: ``hu``), shaped like ``hu``, as a SimpleITK image on this grid."""
        image = sitk.GetImageFromArray(self.hu if array is None else array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        return image


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Frame:
    """The voxel grid and the subject's pose (maps scanner LPS mm to the body frame)."""

    shape: tuple[int, int, int]  # (nz, ny, nx)
    spacing: tuple[float, float, float]  # (x, y, z) mm
    origin: tuple[float, float, float]  # (x, y, z) mm
    cx: float  # trunk centre x, mm
    cy: float  # trunk centre y, mm
    angle: float  # roll about z, radians
    z_low: float  # LPS z (mm) of body-frame height w = 0

    def axis(self, i: int) -> np.ndarray:
        """Physical coordinates (mm) of the voxel centres along x (0), y (1) or z (2)."""
        n = self.shape[2 - i]
        return self.origin[i] + self.spacing[i] * np.arange(n)

    def uv(self) -> tuple[np.ndarray, np.ndarray]:
        """Body-frame lateral u and antero-posterior v (mm) of every (y, x) pixel."""
        dx = self.axis(0)[None, :] - self.cx
        dy = self.axis(1)[:, None] - self.cy
        c, s = math.cos(self.angle), math.sin(self.angle)
        return c * dx + s * dy, -s * dx + c * dy

    def w(self) -> np.ndarray:
        """Body-frame height (mm above the lowest lung point) of every slice, shape (nz,)."""
        return self.axis(2) - self.z_low

    def to_lps(self, p: np.ndarray) -> np.ndarray:
        """Body-frame points (..., 3) as (u, v, w) mm to LPS (..., 3) as (x, y, z) mm."""
        p = np.asarray(p, dtype=float)
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = self.cx + c * p[..., 0] - s * p[..., 1]
        y = self.cy + s * p[..., 0] + c * p[..., 1]
        return np.stack([x, y, p[..., 2] + self.z_low], axis=-1)

    def sigma(self, mm: float) -> tuple[float, float, float]:
        """A Gaussian width of ``mm`` in voxels, in (z, y, x) order for scipy."""
        return (mm / self.spacing[2], mm / self.spacing[1], mm / self.spacing[0])


@dataclass(frozen=True)
class _Body:
    """The subject's anatomy sizes in mm (body frame); all positions derive from these."""

    s: float  # in-plane scale (1 = nominal adult)
    a: float  # trunk semi-axis, lateral
    b: float  # trunk semi-axis, antero-posterior
    fat: float  # subcutaneous fat thickness
    height: float  # lung height, deepest recess to apex

    @property
    def wall(self) -> float:
        """Chest wall (muscle and ribs) between the fat and the pleura."""
        return 14.0 * self.s

    @property
    def cavity(self) -> tuple[float, float]:
        """Semi-axes of the thoracic cavity (inside the chest wall)."""
        inset = self.fat + self.wall
        return self.a - inset, self.b - inset

    @property
    def mid(self) -> float:
        """Midline of the mediastinum (u); shifted to the patient's left with the heart."""
        return 5.0 * self.s

    @property
    def med(self) -> float:
        """Half-width of the mediastinum between the lungs."""
        return 20.0 * self.s

    @property
    def carina(self) -> np.ndarray:
        """Tracheal bifurcation (u, v, w)."""
        return np.array([0.0, 5.0 * self.s, 0.6 * self.height])

    def hilum(self, side: int) -> np.ndarray:
        """Where the main bronchus of a lung ends (side -1 right, +1 left): (u, v, w).

        The right main bronchus is shorter and steeper than the left one.
        """
        reach = 12.0 * self.s if side < 0 else 14.0 * self.s
        drop = 22.0 if side < 0 else 30.0
        u = self.mid + side * (self.med + reach)
        return np.array([u, 12.0 * self.s, self.carina[2] - drop * self.height / LUNG_HEIGHT_MM])

    def lung_centre(self, side: int) -> tuple[float, float]:
        """Centre u and half-width of a lung between the mediastinum and the lateral wall."""
        ac, _ = self.cavity
        medial = self.mid + side * self.med
        return (medial + side * ac) / 2.0, abs(side * ac - medial) / 2.0

    @property
    def heart(self) -> tuple[np.ndarray, np.ndarray]:
        """Heart ellipsoid: centre (u, v, w) and semi-axes, anterior and left of centre."""
        h = self.height / LUNG_HEIGHT_MM
        centre = np.array([18.0 * self.s, -30.0 * self.s, 80.0 * h])
        return centre, np.array([62.0 * self.s, 45.0 * self.s, 50.0 * h])

    @property
    def vertebra(self) -> tuple[float, float]:
        """Vertebral body centre v and radius (centre u is 0)."""
        return 0.5 * self.b, 16.0 * self.s

    @property
    def aorta(self) -> tuple[float, float, float]:
        """Descending aorta centre (u, v) and radius, left of the spine."""
        return 22.0 * self.s, 30.0 * self.s, 12.0 * self.s

    def dome(self, side: int) -> float:
        """Height of a diaphragm dome's top above the lowest lung point; right dome higher."""
        return (0.20 if side < 0 else 0.15) * self.height


def _grid_frame(
    rng: np.random.Generator, matrix: int, pixel_mm: float, slice_mm: float, n_slices: int
) -> tuple[_Frame, _Body]:
    """Draw the subject's size and pose and fit them in the field of view and slab."""
    fov_r = matrix * pixel_mm / 2.0
    z_extent = (n_slices - 1) * slice_mm
    s = rng.uniform(0.9, 1.1)
    cx, cy = rng.uniform(-12.0, 12.0), rng.uniform(-8.0, 8.0)
    angle = math.radians(rng.uniform(-4.0, 4.0))
    # Smaller fields of view (tests) shrink the anatomy so the trunk stays inside.
    s = min(s, (0.95 * fov_r - math.hypot(cx, cy)) / 150.0)
    height = min(LUNG_HEIGHT_MM * s * rng.uniform(0.95, 1.05), 0.84 * z_extent)
    body = _Body(s=s, a=150.0 * s, b=115.0 * s, fat=rng.uniform(6.0, 22.0) * s, height=height)
    # Scanner isocentre at x = y = 0; a table position (z0) of whole millimetres.
    x0 = -(matrix - 1) / 2.0 * pixel_mm
    z0 = -float(rng.integers(250, 400))
    slack = (z_extent - height) / 2.0
    shift = rng.uniform(-1.0, 1.0) * max(0.0, min(10.0, slack - 15.0))
    frame = _Frame(
        shape=(n_slices, matrix, matrix),
        spacing=(pixel_mm, pixel_mm, slice_mm),
        origin=(x0, x0, z0),
        cx=cx,
        cy=cy,
        angle=angle,
        z_low=z0 + slack + shift,
    )
    return frame, body


# --------------------------------------------------------------------------- anatomy


def _ellipse_radius(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Normalised elliptical radius: < 1 inside the ellipse with semi-axes a, b."""
    return np.sqrt((u / a) ** 2 + (v / b) ** 2)


def _trunk(fr: _Frame, bd: _Body) -> np.ndarray:
    """Air, table, fat and muscle (HU, float32, (z, y, x)), the same on every slice."""
    u, v = fr.uv()
    plane = np.full(u.shape, AIR_HU, dtype=np.float32)
    # Table: a slightly curved plate under the patient's back, fixed to the scanner.
    x = fr.axis(0)[None, :]
    y = fr.axis(1)[:, None]
    c, s = math.cos(fr.angle), math.sin(fr.angle)
    back = fr.cy + math.hypot(bd.a * s, bd.b * c)
    top = back - (x - fr.cx) ** 2 / 1200.0
    plane[(y >= top) & (y < top + 8.0) & (np.abs(x - fr.cx) < 220.0)] = TABLE_HU
    plane[_ellipse_radius(u, v, bd.a, bd.b) < 1.0] = FAT_HU
    plane[_ellipse_radius(u, v, bd.a - bd.fat, bd.b - bd.fat) < 1.0] = SOFT_HU
    return np.repeat(plane[None], fr.shape[0], axis=0)


def _spine(hu: np.ndarray, fr: _Frame, bd: _Body) -> None:
    """Vertebral bodies (cortex, cancellous bone, discs), canal, arch, spinous process."""
    u, v = fr.uv()
    w = fr.w()
    vc, r = bd.vertebra
    dist = np.hypot(u, v - vc)
    canal_v = vc + r + 8.0 * bd.s
    canal = np.hypot(u, v - canal_v)
    arch = (canal >= 7.0 * bd.s) & (canal < 12.0 * bd.s) & (v > vc)
    process = (np.abs(u) < 4.0 * bd.s) & (v >= canal_v + 10.0 * bd.s) & (v < canal_v + 20.0 * bd.s)
    body_plane = np.where(dist < r - 2.0, CANCELLOUS_HU, CORTICAL_HU).astype(np.float32)
    inside = dist < r
    # Levels every 27 mm (scaled with the lung height), a 6 mm disc between them.
    period = 27.0 * bd.height / LUNG_HEIGHT_MM
    is_disc = np.mod(w, period) < 6.0
    for k in range(hu.shape[0]):
        hu[k][inside] = DISC_HU if is_disc[k] else body_plane[inside]
        hu[k][arch | process] = CORTICAL_HU
        hu[k][canal < 7.0 * bd.s] = 20.0


def _ribs(hu: np.ndarray, fr: _Frame, bd: _Body) -> None:
    """Ribs as sloping arcs in the chest wall, cartilage in front, and the sternum."""
    u, v = fr.uv()
    w = fr.w()
    ar, br = bd.a - bd.fat - 9.0 * bd.s, bd.b - bd.fat - 9.0 * bd.s
    rho = _ellipse_radius(u, v, ar, br)
    radial = np.hypot(u, v) * (1.0 - 1.0 / np.maximum(rho, 1e-6))
    band = np.abs(radial) < 3.5 * bd.s
    theta = np.arctan2(v, u)  # -pi/2 is straight anterior
    cartilage = np.abs(theta + math.pi / 2.0) < 0.55
    band &= ~((np.abs(u) < 30.0 * bd.s) & (v > 0))  # the spine takes over behind
    # Ribs descend from back to front: posterior ends sit ~18 mm higher.
    slope = 18.0 * bd.s * (v / br)
    period = 25.0 * bd.height / LUNG_HEIGHT_MM
    sternum = (np.abs(u) < 16.0 * bd.s) & (v > -(bd.b - bd.fat - 3.0 * bd.s)) & (v < -(bd.b - bd.fat - 13.0 * bd.s))
    for k, wk in enumerate(w):
        if -25.0 < wk < bd.height + 10.0:
            rib = band & (np.mod(wk - slope, period) < 9.0 * bd.s)
            hu[k][rib & ~cartilage] = RIB_HU
            hu[k][rib & cartilage] = CARTILAGE_HU
        if 0.2 * bd.height < wk < bd.height + 10.0:
            hu[k][sternum] = STERNUM_HU


def _lung_shapes(fr: _Frame, bd: _Body) -> np.ndarray:
    """Lung labels (uint8 (z, y, x): 1 right, 2 left) before the central airways are cut.

    Each lung is the thoracic cavity on its side of the mediastinum, above its diaphragm
    dome, inside an ellipse that narrows towards the apex, minus heart, spine and aorta.
    """
    u, v = fr.uv()
    w = fr.w()
    ac, bc = bd.cavity
    t = w / bd.height
    # Cone with a rounded apex: cross-sections shrink along a quarter ellipse above 35 %.
    taper = np.sqrt(np.clip(1.0 - ((t - 0.35) / 0.65).clip(0.0) ** 2, 0.0, None)) * (t <= 1.0)
    cavity = _ellipse_radius(u, v, ac, bc) < 1.0
    vc, r = bd.vertebra
    au, av, ar = bd.aorta
    keep_out = (np.hypot(u, v - vc) < r + 6.0 * bd.s) | ((np.abs(u) < r + 8.0 * bd.s) & (v > vc))
    keep_out |= np.hypot(u - au, v - av) < ar + 3.0 * bd.s
    labels = np.zeros(fr.shape, dtype=np.uint8)
    vl = 10.0 * bd.s
    for label, side in ((1, -1), (2, 1)):
        uc, hw = bd.lung_centre(side)
        medial = side * (u - bd.mid) > bd.med
        ell = ((u - uc) / (1.25 * hw)) ** 2 + ((v - vl) / (1.15 * bc)) ** 2
        dome = bd.dome(side) * np.clip(1.0 - ((u - uc) / (1.1 * hw)) ** 2 - ((v - vl) / bc) ** 2, 0.0, None)
        plane = cavity & medial & ~keep_out
        for k in range(fr.shape[0]):
            if taper[k] > 0:
                labels[k][plane & (ell < taper[k] ** 2) & (w[k] > dome)] = label
    labels[_ellipsoid(fr, *bd.heart, margin=1.05)] = 0
    return labels


def _ellipsoid(fr: _Frame, centre: np.ndarray, semi: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """Boolean (z, y, x) mask of a body-frame ellipsoid (semi-axes times ``margin``)."""
    u, v = fr.uv()
    w = fr.w()
    semi = semi * margin
    in_plane = ((u - centre[0]) / semi[0]) ** 2 + ((v - centre[1]) / semi[1]) ** 2
    along = ((w - centre[2]) / semi[2]) ** 2
    return in_plane[None] + along[:, None, None] < 1.0


def _below_diaphragm(hu: np.ndarray, fr: _Frame, bd: _Body) -> None:
    """Liver under the right dome, and a small gastric air bubble under the left one."""
    u, v = fr.uv()
    w = fr.w()
    ac, bc = bd.cavity
    cavity = _ellipse_radius(u, v, ac, bc) < 1.0
    uc, hw = bd.lung_centre(-1)
    dome = bd.dome(-1) * np.clip(1.0 - ((u - uc) / (1.3 * hw)) ** 2 - (v / bc) ** 2, 0.0, None)
    liver = cavity & (u < bd.mid)
    for k in range(fr.shape[0]):
        hu[k][liver & (w[k] < dome - 4.0)] = LIVER_HU
    centre = np.array([55.0 * bd.s, -10.0 * bd.s, bd.dome(1) - 30.0 * bd.s])
    hu[_ellipsoid(fr, centre, np.array([22.0, 18.0, 12.0]) * bd.s)] = AIR_HU


# --------------------------------------------------------------------------- tubes


def _rasterize_tube(frac: np.ndarray, fr: _Frame, p0: np.ndarray, p1: np.ndarray, radius: float) -> None:
    """Max-accumulate the partial-volume coverage (0..1) of a capsule into ``frac``.

    The capsule is the set of points within ``radius`` mm of the LPS segment p0-p1 (mm).
    Coverage ramps over one in-plane voxel across the surface. A tube thinner than a voxel
    is drawn one voxel wide but fainter, by (radius / half voxel)^2, so that its summed
    coverage stays close to its true cross-section, as partial volume does in a scanner.
    """
    sp = np.array(fr.spacing)
    org = np.array(fr.origin)
    soft = float(sp[:2].mean())
    drawn = max(radius, soft / 2.0)
    peak = (radius / drawn) ** 2
    lo = np.floor((np.minimum(p0, p1) - drawn - soft - org) / sp).astype(int)
    hi = np.ceil((np.maximum(p0, p1) + drawn + soft - org) / sp).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array(fr.shape[::-1]))
    if np.any(hi <= lo):
        return
    xs = fr.axis(0)[lo[0] : hi[0]][None, None, :] - p0[0]
    ys = fr.axis(1)[lo[1] : hi[1]][None, :, None] - p0[1]
    zs = fr.axis(2)[lo[2] : hi[2]][:, None, None] - p0[2]
    d = p1 - p0
    length2 = max(float(d @ d), 1e-9)
    t = np.clip((xs * d[0] + ys * d[1] + zs * d[2]) / length2, 0.0, 1.0)
    dist = np.sqrt((xs - t * d[0]) ** 2 + (ys - t * d[1]) ** 2 + (zs - t * d[2]) ** 2)
    cover = (peak * np.clip((drawn - dist) / soft + 0.5, 0.0, 1.0)).astype(np.float32)
    view = frac[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
    np.maximum(view, cover, out=view)


def _grow_tree(start: np.ndarray, targets: np.ndarray, r0: float, n_total: int, stop_at: int = 1) -> list[tuple]:
    """Segments (p0, p1, radius) of a branching tree from ``start`` towards ``targets``.

    Each node splits its targets in two halves along their main axis and sends a branch
    halfway to each half's centroid, so the tree fills the region the targets sample.
    Radii follow Murray's law (r^3 proportional to the number of leaves served). Groups of
    ``stop_at`` targets or fewer end the branch at their centroid. Points are LPS mm.
    """
    segments: list[tuple] = []
    stack = [(start, targets)]
    while stack:
        p0, group = stack.pop()
        radius = r0 * (len(group) / n_total) ** (1.0 / 3.0)
        centroid = group.mean(axis=0)
        if len(group) <= stop_at:
            segments.append((p0, centroid, radius))
            continue
        p1 = p0 + 0.5 * (centroid - p0)
        segments.append((p0, p1, radius))
        centred = group - centroid
        axis = np.linalg.svd(centred, full_matrices=False)[2][0]
        order = np.argsort(centred @ axis)
        half = len(group) // 2
        stack.append((p1, group[order[:half]]))
        stack.append((p1, group[order[half:]]))
    return segments


def _sample_points(rng: np.random.Generator, fr: _Frame, mask: np.ndarray, n: int) -> np.ndarray:
    """``n`` random LPS points (mm) inside ``mask``, jittered within their voxels."""
    flat = np.flatnonzero(mask)
    pick = rng.choice(flat, size=min(n, flat.size), replace=False)
    zyx = np.stack(np.unravel_index(pick, mask.shape), axis=1)[:, ::-1].astype(float)
    zyx += rng.uniform(-0.5, 0.5, zyx.shape)
    return np.array(fr.origin) + zyx * np.array(fr.spacing)


def _central_airways(fr: _Frame, bd: _Body) -> tuple[np.ndarray, np.ndarray]:
    """Trachea and main bronchi: (lumen, outer) partial-volume coverages, (z, y, x)."""
    top = np.array([0.0, 2.0 * bd.s, fr.w()[-1] + 20.0])
    carina = bd.carina
    lumen = np.zeros(fr.shape, dtype=np.float32)
    outer = np.zeros(fr.shape, dtype=np.float32)
    pieces = [(top, carina, 9.0), (carina, bd.hilum(-1), 7.0), (carina, bd.hilum(1), 6.0)]
    for a, b, r in pieces:
        p0, p1 = fr.to_lps(a), fr.to_lps(b)
        _rasterize_tube(lumen, fr, p0, p1, r * bd.s)
        _rasterize_tube(outer, fr, p0, p1, (r + 2.5) * bd.s)
    return lumen, outer


def _lung_trees(rng: np.random.Generator, fr: _Frame, bd: _Body, lungs: np.ndarray) -> tuple:
    """Pulmonary arteries, veins and intrapulmonary airways of both lungs.

    Returns coverages (vessel, airway lumen, airway wall), each float32 (z, y, x).
    Arteries leave from just above each hilum, veins from below it, airways from the end of
    the main bronchus; the airways stop after about three generations.
    """
    vessel = np.zeros(fr.shape, dtype=np.float32)
    lumen = np.zeros(fr.shape, dtype=np.float32)
    wall = np.zeros(fr.shape, dtype=np.float32)
    n = 128
    for label, side in ((1, -1), (2, 1)):
        hilum = bd.hilum(side)
        for dw, r0 in ((10.0, 5.5), (-15.0, 5.0)):
            start = fr.to_lps(hilum + np.array([0.0, 0.0, dw * bd.s]))
            for p0, p1, r in _grow_tree(start, _sample_points(rng, fr, lungs == label, n), r0 * bd.s, n):
                _rasterize_tube(vessel, fr, p0, p1, r)
        targets = _sample_points(rng, fr, lungs == label, n)
        for p0, p1, r in _grow_tree(fr.to_lps(hilum), targets, 5.0 * bd.s, n, stop_at=n // 8):
            _rasterize_tube(lumen, fr, p0, p1, r)
            _rasterize_tube(wall, fr, p0, p1, r + 0.2 * r + 0.5)
    return vessel, lumen, wall


def _smooth_noise(rng: np.random.Generator, fr: _Frame, shape: tuple, mm: float) -> np.ndarray:
    """Gaussian-smoothed white noise of unit standard deviation, float32."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), fr.sigma(mm))
    return field_ / max(float(field_.std()), 1e-6)


def _lung_box(lungs: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box (z, y, x slices) of the nonzero voxels."""
    return ndimage.find_objects((lungs > 0).astype(np.uint8))[0]


def _parenchyma(rng: np.random.Generator, fr: _Frame, bd: _Body, lungs: np.ndarray) -> np.ndarray:
    """Lung tissue HU (float32, (z, y, x), valid inside the lungs).

    -885 HU on average (vessels bring the whole lung to about -845), denser towards the
    back (supine gravity gradient, +-20 HU), with a spatially correlated texture (3 mm
    smoothing, sd 12 HU, so roughly +-30 HU).
    """
    _, v = fr.uv()
    _, bc = bd.cavity
    out = np.full(fr.shape, PARENCHYMA_HU, dtype=np.float32)
    box = _lung_box(lungs)
    texture = 12.0 * _smooth_noise(rng, fr, lungs[box].shape, 3.0)
    gravity = (20.0 * np.clip(v / bc, -1.0, 1.0)).astype(np.float32)[box[1:]]
    out[box] += texture + gravity[None]
    return out


# --------------------------------------------------------------------------- disease

# What a pattern returns, each (z, y, x): HU added to the lung tissue (float32), coverage of
# soft-tissue nodules drawn over everything else (float32, 0..1), and its disease mask (bool).
_Disease = tuple[np.ndarray, np.ndarray, np.ndarray]


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, a smooth ramp between."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _zone_weight(fr: _Frame, bd: _Body, lo: float | None, hi: float | None) -> np.ndarray:
    """Per-slice weight (nz,) that is 1 between heights lo and hi (fractions of lung height)."""
    t = fr.w() / bd.height
    weight = np.ones_like(t)
    if lo is not None:
        weight *= _smoothstep((t - lo) / 0.06 + 0.5)
    if hi is not None:
        weight *= 1.0 - _smoothstep((t - hi) / 0.06 + 0.5)
    return weight


def _reticulation(rng: np.random.Generator, fr: _Frame, bd: _Body, lungs: np.ndarray, severity: float) -> _Disease:
    """Upper-zone reticulation: a net of dense lines over mild haze in the top third.

    The net lines add 200-450 HU (with severity), the haze between them 30-90 HU; the zone
    covers the upper 30-38 % of the lung height (its extent varies little with severity, so
    the pattern stays one recognisable group in the demo cohort).
    """
    weight = _zone_weight(fr, bd, 1.0 - (0.30 + 0.08 * severity), None)
    add = np.zeros(fr.shape, dtype=np.float32)
    rows = np.flatnonzero(weight > 0.01)
    box = (slice(rows[0], rows[-1] + 1), slice(None), slice(None))
    shape = add[box].shape
    # Zero crossings of band-pass noise form a connected net of thin lines.
    white = rng.standard_normal(shape, dtype=np.float32)
    band = ndimage.gaussian_filter(white, fr.sigma(1.5)) - ndimage.gaussian_filter(white, fr.sigma(4.0))
    band /= max(float(band.std()), 1e-6)
    net = np.exp(-((band / 0.35) ** 2))
    patches = 0.75 + 0.25 * np.tanh(_smooth_noise(rng, fr, shape, 8.0))
    amp = 200.0 + 250.0 * severity
    haze = 30.0 + 60.0 * severity
    add[box] = weight[box[0], None, None] * patches * (haze + amp * net)
    mask = (lungs > 0) & (weight >= 0.5)[:, None, None]
    return add, np.zeros(fr.shape, dtype=np.float32), mask


def _ground_glass(rng: np.random.Generator, fr: _Frame, bd: _Body, lungs: np.ndarray, severity: float) -> _Disease:
    """Basal ground glass: +150..+300 HU haze in the lower 25-40 % of the lungs, back-heavy."""
    weight = _zone_weight(fr, bd, None, 0.25 + 0.15 * severity)
    _, v = fr.uv()
    _, bc = bd.cavity
    posterior = (0.7 + 0.3 * np.clip(v / bc, -1.0, 1.0)).astype(np.float32)
    patches = 0.85 + 0.15 * np.tanh(_smooth_noise(rng, fr, fr.shape, 6.0))
    add = (150.0 + 150.0 * severity) * weight[:, None, None].astype(np.float32) * posterior[None] * patches
    mask = (lungs > 0) & (weight >= 0.5)[:, None, None]
    return add, np.zeros(fr.shape, dtype=np.float32), mask


def _nodules(
    fr: _Frame, lungs: np.ndarray, centres_radii: list[tuple[np.ndarray, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of spherical nodules (LPS centre mm, radius mm) and its >= 0.5 mask in lung."""
    cover = np.zeros(fr.shape, dtype=np.float32)
    for centre, radius in centres_radii:
        _rasterize_tube(cover, fr, centre, centre, radius)
    cover *= lungs > 0
    return cover, cover >= 0.5


def _inside(fr: _Frame, mask: np.ndarray, p: np.ndarray) -> bool:
    """Whether the LPS point ``p`` (mm) falls in a voxel of ``mask``."""
    idx = np.rint((p - np.array(fr.origin)) / np.array(fr.spacing)).astype(int)
    if np.any(idx < 0) or np.any(idx >= np.array(fr.shape[::-1])):
        return False
    return bool(mask[idx[2], idx[1], idx[0]])


def _perihilar(rng: np.random.Generator, fr: _Frame, bd: _Body, lungs: np.ndarray, severity: float) -> _Disease:
    """40-100 soft-tissue nodules (4-10 mm across) clustered around both hila, over a haze.

    Nodule centres scatter ~20 mm around a point 20 mm lateral to each hilum (in the lung).
    The haze (peribronchovascular thickening) adds 150-300 HU, fading with a 28 mm Gaussian
    around the same points; the disease mask is the nodules plus where the haze is at least
    half its peak.
    """
    count = int(round(40 + 60 * severity))
    found: list[tuple[np.ndarray, float]] = []
    for i in range(count * 20):
        if len(found) == count:
            break
        side = -1 if i % 2 == 0 else 1
        centre = bd.hilum(side) + np.array([side * 20.0 * bd.s, 0.0, 0.0])
        centre = centre + rng.normal(0.0, 1.0, 3) * np.array([18.0, 20.0, 24.0]) * bd.s
        p = fr.to_lps(centre)
        radius = rng.uniform(2.0, 5.0)
        if _inside(fr, lungs == (1 if side < 0 else 2), p):
            found.append((p, radius))
    cover, mask = _nodules(fr, lungs, found)
    haze = _perihilar_haze(fr, bd)
    mask |= (haze >= 0.5) & (lungs > 0)
    return ((150.0 + 150.0 * severity) * haze).astype(np.float32), cover, mask


def _perihilar_haze(fr: _Frame, bd: _Body) -> np.ndarray:
    """Sum of two Gaussian blobs (peak 1, sd 28 mm) 20 mm lateral to the hila, (z, y, x)."""
    u, v = fr.uv()
    w = fr.w()
    out = np.zeros(fr.shape, dtype=np.float32)
    sd = 28.0 * bd.s
    for side in (-1, 1):
        c = bd.hilum(side) + np.array([side * 20.0 * bd.s, 0.0, 0.0])
        plane = np.exp(-((u - c[0]) ** 2 + (v - c[1]) ** 2) / (2 * sd**2))
        out += (plane[None] * np.exp(-((w - c[2]) ** 2) / (2 * sd**2))[:, None, None]).astype(np.float32)
    return np.minimum(out, 1.0)


def _near_normal(rng: np.random.Generator, fr: _Frame, bd: _Body, lungs: np.ndarray, severity: float) -> _Disease:
    """A few (0-5) tiny scattered densities, 2-4 mm across, anywhere in the lungs."""
    count = int(rng.integers(0, 2 + int(4 * severity)))
    points = _sample_points(rng, fr, lungs > 0, count) if count else []
    found = [(p, rng.uniform(1.0, 2.0)) for p in points]
    cover, mask = _nodules(fr, lungs, found)
    return np.zeros(fr.shape, dtype=np.float32), cover, mask


_DISEASES = {
    "near_normal": _near_normal,
    "upper_reticulation": _reticulation,
    "perihilar_nodules": _perihilar,
    "lower_ground_glass": _ground_glass,
}


# --------------------------------------------------------------------------- assembly


def _field_of_view(fr: _Frame) -> np.ndarray:
    """Boolean (y, x) disc inscribed in the matrix: the reconstruction circle."""
    x = fr.axis(0)[None, :] - (fr.axis(0)[0] + fr.axis(0)[-1]) / 2.0
    y = fr.axis(1)[:, None] - (fr.axis(1)[0] + fr.axis(1)[-1]) / 2.0
    radius = min(fr.shape[1] * fr.spacing[1], fr.shape[2] * fr.spacing[0]) / 2.0
    return np.hypot(x, y) <= radius


def _blend(hu: np.ndarray, cover: np.ndarray, value: float, where: np.ndarray | None = None) -> None:
    """hu <- (1 - c) hu + c value, in place, optionally only where ``where`` holds."""
    c = cover if where is None else cover * where
    hu += c * (value - hu)


def make_chest_phantom(
    rng: np.random.Generator,
    pattern: str = "near_normal",
    severity: float = 0.5,
    *,
    matrix: int = 192,
    pixel_mm: float = 1.875,
    slice_mm: float = 2.5,
    n_slices: int | None = None,
    z_extent_mm: float = 300.0,
) -> Phantom:
    """Draw one synthetic chest CT with its true lung labels and disease mask.

    Args:
        rng: the only source of randomness; the same generator state gives the same phantom.
        pattern: one of :data:`ALL_PATTERNS`.
        severity: in [0, 1]; scales the pattern's extent, count and density.
        matrix: in-plane size in pixels (square), field of view = matrix x pixel_mm.
        pixel_mm: in-plane pixel size in mm.
        slice_mm: slice spacing (= thickness) in mm.
        n_slices: number of slices; default ``round(z_extent_mm / slice_mm)``.
        z_extent_mm: the default scan length in mm.

    Per subject the trunk and lungs vary in size (+-10 %), the trunk centre moves +-12 mm
    (x) and +-8 mm (y), rolls +-4 degrees about z, and the lungs move along z within the
    margin left by their height; small fields of view shrink the anatomy to fit.
    """
    if pattern not in _DISEASES:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {ALL_PATTERNS}")
    severity = float(np.clip(severity, 0.0, 1.0))
    n_slices = n_slices or max(8, int(round(z_extent_mm / slice_mm)))
    fr, bd = _grid_frame(rng, matrix, pixel_mm, slice_mm, n_slices)
    hu = _trunk(fr, bd)
    _spine(hu, fr, bd)
    _ribs(hu, fr, bd)
    _below_diaphragm(hu, fr, bd)
    lungs = _lung_shapes(fr, bd)
    central_lumen, central_outer = _central_airways(fr, bd)
    # The trachea and main bronchi are not lung, though the bronchi end inside it.
    lungs[central_outer >= 0.5] = 0
    in_lung = lungs > 0
    hu[in_lung] = _parenchyma(rng, fr, bd, lungs)[in_lung]
    vessel, lumen, wall = _lung_trees(rng, fr, bd, lungs)
    add, nodule_cover, disease = _DISEASES[pattern](rng, fr, bd, lungs, severity)
    hu[in_lung] += add[in_lung]
    _blend(hu, vessel, SOFT_HU, in_lung)
    _blend(hu, wall, BRONCHIAL_WALL_HU, in_lung)
    _blend(hu, lumen, AIR_HU, in_lung)
    _blend(hu, nodule_cover, NODULE_HU, in_lung)
    _blend(hu, central_outer, BRONCHIAL_WALL_HU)
    _blend(hu, central_lumen, AIR_HU)
    noise_sd = rng.uniform(15.0, 20.0)
    # Scanner point-spread (about 1 mm) then quantum noise, then the 12-bit range.
    hu = ndimage.gaussian_filter(hu, sigma=fr.sigma(1.1))
    hu += noise_sd * rng.standard_normal(hu.shape, dtype=np.float32)
    out = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    out[:, ~_field_of_view(fr)] = PADDING_HU
    info = {
        "scale": bd.s,
        "fat_mm": bd.fat,
        "lung_height_mm": bd.height,
        "angle_deg": math.degrees(fr.angle),
        "shift_x_mm": fr.cx,
        "shift_y_mm": fr.cy,
        "noise_hu": noise_sd,
    }
    return Phantom(
        hu=out,
        lungs=lungs,
        disease=(disease & (lungs > 0)).astype(np.uint8),
        spacing=fr.spacing,
        origin=fr.origin,
        pattern=pattern,
        severity=severity,
        info=info,
    )


# --------------------------------------------------------------------------- DICOM

#: Fixed acquisition time written into every file: no clock reading, so bytes repeat.
STUDY_TIME = "093000"
_UID_ROOT = "lungclam-phantom"


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for ``value``, exact where it fits."""
    text = repr(float(value))
    if text.endswith(".0"):
        text = text[:-2]
    return text if len(text) <= 16 else format_number_as_ds(float(value))


def _uid(uid_key: str, *parts: object) -> str:
    """A deterministic UID from the subject's key and the object's role."""
    return generate_uid(entropy_srcs=[_UID_ROOT, uid_key, *map(str, parts)])


def _age(birth_date: str, study_date: str) -> str:
    """DICOM age string ('052Y') from two YYYYMMDD dates."""
    years = int(study_date[:4]) - int(birth_date[:4])
    if study_date[4:] < birth_date[4:]:
        years -= 1
    return f"{max(years, 0):03d}Y"


def _file_names(count: int, shuffle: bool, rng: np.random.Generator | None, prefix: str) -> list[str]:
    """One file name per image: ordered (PREFIX0001.dcm) or random hex unrelated to order."""
    if not shuffle:
        return [f"{prefix}{i + 1:04d}.dcm" for i in range(count)]
    if rng is None:
        raise ValueError("shuffle=True needs an rng for the random file names")
    names: list[str] = []
    while len(names) < count:
        name = f"{int(rng.integers(0, 2**48)):012X}"
        if name not in names:
            names.append(name)
    return names


def _patient_study(
    *,
    subject: str,
    uid_key: str,
    patient_name: str | None,
    patient_id: str | None,
    birth_date: str,
    sex: str,
    study_date: str,
) -> Dataset:
    """Patient and study attributes shared by every file of a subject.

    The identifying values are fake but look real on purpose: the pipeline must drop them.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name or f"DEMO^{subject.upper()}"
    ds.PatientID = patient_id or f"LC-{subject}"
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.PatientAge = _age(birth_date, study_date)
    ds.StudyInstanceUID = _uid(uid_key, "study")
    ds.StudyDate = study_date
    ds.StudyTime = STUDY_TIME
    ds.StudyID = "1"
    ds.AccessionNumber = "A" + ds.StudyInstanceUID[-8:]
    ds.StudyDescription = "CT CHEST WITHOUT CONTRAST"
    ds.ReferringPhysicianName = "DEMO^REFERRER"
    ds.InstitutionName = "lungclam demo hospital"
    ds.Manufacturer = "lungclam phantom"
    ds.ManufacturerModelName = "synthetic"
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.FrameOfReferenceUID = _uid(uid_key, "frame")
    ds.PositionReferenceIndicator = ""
    return ds


def _finish(ds: Dataset, sop_uid: str) -> None:
    """Add the SOP identity and file meta information (Explicit VR Little Endian)."""
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta


def _pixel_module(ds: Dataset, pixels: np.ndarray, signed: bool) -> None:
    """Grey-scale 16-bit pixel attributes and data for a (rows, columns) array."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()


def write_dicom_series(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    subject: str,
    series_number: int = 2,
    feet_first: bool = False,
    flip_columns: bool = False,
    shuffle: bool = False,
    rng: np.random.Generator | None = None,
    patient_name: str | None = None,
    patient_id: str | None = None,
    birth_date: str = "19700101",
    sex: str = "O",
    study_date: str = "20200115",
    kernel: str = "B45f",
    uid_key: str | None = None,
) -> list[Path]:
    """Write ``phantom.hu`` as an axial CT series, one file per slice, into ``out_dir``.

    Stored pixels are signed 16-bit with RescaleSlope 1 and RescaleIntercept -1024 (stored =
    HU + 1024), so the whole range -2048..3071 HU, padding included, round-trips exactly.

    Args:
        phantom: the volume; its grid gives ImagePositionPatient, PixelSpacing and the slice
            spacing (SliceThickness = SpacingBetweenSlices = slice spacing, mm).
        out_dir: folder to write into (created; other files there are left alone).
        subject: used for the default fake patient name (``DEMO^SUBJECT``) and ID.
        series_number: SeriesNumber of the CT (the localizer, if any, takes another).
        feet_first: PatientPosition FFS and InstanceNumber 1 at the most superior slice, so
            ImagePositionPatient z decreases with InstanceNumber (HFS: it increases).
        flip_columns: store each slice mirrored left-right with ImageOrientationPatient
            [-1,0,0,0,1,0] (as some scanners do for feet-first); geometry is unchanged.
        shuffle: random hexadecimal file names that do not follow slice order (needs rng).
        rng: source of the shuffled names.
        patient_name, patient_id, birth_date, sex, study_date: fake identifying values.
        kernel: ConvolutionKernel.
        uid_key: key from which all UIDs are derived (default: ``subject``); the same key
            gives the same UIDs, and :func:`write_localizer` with it joins the same study.

    Returns:
        The written paths, in slice order (inferior to superior).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uid_key = uid_key or subject
    nz, ny, nx = phantom.hu.shape
    dx, dy, dz = phantom.spacing
    x0, y0, z0 = phantom.origin
    series_uid = _uid(uid_key, "series", series_number)
    names = _file_names(nz, shuffle, rng, "CT")
    row_x = -1.0 if flip_columns else 1.0
    first_x = x0 + (nx - 1) * dx if flip_columns else x0
    paths = []
    for k in range(nz):
        instance = nz - k if feet_first else k + 1
        ds = _patient_study(
            subject=subject, uid_key=uid_key, patient_name=patient_name, patient_id=patient_id,
            birth_date=birth_date, sex=sex, study_date=study_date,
        )  # fmt: skip
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = f"Chest {_ds(dz)}mm {kernel}"
        ds.ProtocolName = "Chest non-contrast"
        ds.SeriesDate, ds.SeriesTime = study_date, STUDY_TIME
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = instance
        ds.PatientPosition = "FFS" if feet_first else "HFS"
        z = z0 + k * dz
        ds.ImagePositionPatient = [_ds(first_x), _ds(y0), _ds(z)]
        ds.ImageOrientationPatient = [_ds(row_x), "0", "0", "0", "1", "0"]
        ds.SliceLocation = _ds(z)
        ds.PixelSpacing = [_ds(dy), _ds(dx)]
        ds.SliceThickness = _ds(dz)
        ds.SpacingBetweenSlices = _ds(dz)
        ds.KVP = "120"
        ds.ConvolutionKernel = kernel
        ds.ReconstructionDiameter = _ds(nx * dx)
        ds.GantryDetectorTilt = "0"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        pixels = phantom.hu[k, :, ::-1] if flip_columns else phantom.hu[k]
        _pixel_module(ds, pixels.astype(np.int32) + 1024, signed=True)
        _finish(ds, _uid(uid_key, "sop", series_number, instance))
        path = out_dir / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_localizer(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    subject: str,
    series_number: int = 1,
    feet_first: bool = False,
    shuffle: bool = False,
    rng: np.random.Generator | None = None,
    patient_name: str | None = None,
    patient_id: str | None = None,
    birth_date: str = "19700101",
    sex: str = "O",
    study_date: str = "20200115",
    uid_key: str | None = None,
) -> Path:
    """Write a one-image coronal localizer (scout) of ``phantom`` into ``out_dir``.

    The image is the antero-posterior line integral of attenuation relative to water
    (0..400 mm water-equivalent mapped to 0..4095), rows running head to feet
    (ImageOrientationPatient [1,0,0,0,0,-1]), ImageType ORIGINAL\\PRIMARY\\LOCALIZER, in
    the same study as the CT (same ``uid_key``) but its own series UID and number.
    ``feet_first`` only sets PatientPosition (FFS), to match the CT. Identity arguments
    are as in :func:`write_dicom_series`. Returns the written path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uid_key = uid_key or subject
    dx, dy, dz = phantom.spacing
    x0, _, z0 = phantom.origin
    # Padding counts as air; water-equivalent path length in mm along y.
    mu = (np.maximum(phantom.hu.astype(np.float32), AIR_HU) - AIR_HU) / 1000.0
    path_mm = mu.sum(axis=1) * dy  # (z, x)
    pixels = np.clip(np.rint(path_mm[::-1] * 4095.0 / 400.0), 0, 4095).astype(np.uint16)
    ds = _patient_study(
        subject=subject, uid_key=uid_key, patient_name=patient_name, patient_id=patient_id,
        birth_date=birth_date, sex=sex, study_date=study_date,
    )  # fmt: skip
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesInstanceUID = _uid(uid_key, "series", series_number)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "Topogram AP"
    ds.SeriesDate, ds.SeriesTime = study_date, STUDY_TIME
    ds.InstanceNumber = 1
    ds.PatientPosition = "FFS" if feet_first else "HFS"
    z_top = z0 + (phantom.hu.shape[0] - 1) * dz
    ds.ImagePositionPatient = [_ds(x0), "0", _ds(z_top)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.PixelSpacing = [_ds(dz), _ds(dx)]
    ds.KVP = "120"
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    _pixel_module(ds, pixels, signed=False)
    _finish(ds, _uid(uid_key, "sop", series_number, 1))
    path = out_dir / _file_names(1, shuffle, rng, "LOC")[0]
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- cohort

_SCADDING = ("0", "I", "II", "III", "IV")
# Stage probabilities per pattern: related to the pattern, but no stage identifies it.
_SCADDING_P = {
    "near_normal": (0.45, 0.35, 0.15, 0.05, 0.00),
    "perihilar_nodules": (0.05, 0.30, 0.45, 0.15, 0.05),
    "upper_reticulation": (0.00, 0.05, 0.20, 0.40, 0.35),
    "lower_ground_glass": (0.10, 0.20, 0.30, 0.30, 0.10),
}
_KERNELS = ("B45f", "B50f", "STANDARD", "LUNG")


def demo_subject_ids(n_subjects: int) -> list[str]:
    """Subject IDs of the demo cohort: demo001, demo002, ..."""
    return [f"demo{i:03d}" for i in range(1, n_subjects + 1)]


def _cohort_plan(n_subjects: int, seed: int, patterns: Sequence[str]) -> pd.DataFrame:
    """Pattern, severity, feet-first and localizer flags per subject (balanced, shuffled).

    Each pattern gets ``n // len(patterns)`` subjects, the remainder going one each to the
    first patterns; about a third of the series are feet-first and, independently, about a
    third of the folders also hold a localizer.
    """
    rng = np.random.default_rng([seed, 7919])
    per = [n_subjects // len(patterns) + (i < n_subjects % len(patterns)) for i in range(len(patterns))]
    assigned = np.repeat(np.array(patterns, dtype=object), per)
    rng.shuffle(assigned)
    third = round(n_subjects / 3)
    feet_first = np.zeros(n_subjects, dtype=bool)
    feet_first[rng.choice(n_subjects, third, replace=False)] = True
    localizer = np.zeros(n_subjects, dtype=bool)
    localizer[rng.choice(n_subjects, third, replace=False)] = True
    return pd.DataFrame(
        {
            "subject": demo_subject_ids(n_subjects),
            "pattern": assigned,
            "severity": np.round(rng.uniform(0.4, 1.0, n_subjects), 3),
            "feet_first": feet_first,
            "localizer": localizer,
        }
    )


def _clinical_row(rng: np.random.Generator, subject: str, pattern: str, severity: float, phantom: Phantom) -> dict:
    """One subject's clinical values (see :func:`write_demo_cohort` for the model)."""
    ur = severity * (pattern == "upper_reticulation")
    pn = severity * (pattern == "perihilar_nodules")
    gg = severity * (pattern == "lower_ground_glass")
    age = int(np.clip(rng.normal(48.0, 11.0), 22, 80))
    sex = "F" if rng.random() < 0.55 else "M"
    race = str(rng.choice(["white", "black", "other"], p=[0.55, 0.35, 0.10]))
    fat = phantom.info["fat_mm"] / phantom.info["scale"]
    bmi = 21.0 + 0.5 * fat + rng.normal(0.0, 2.5)
    fvc = 98.0 - 22.0 * ur - 8.0 * pn - 10.0 * gg - 0.15 * (age - 50) + rng.normal(0.0, 9.0)
    fev1 = 96.0 - 20.0 * ur - 10.0 * pn - 8.0 * gg - 0.20 * (age - 50) + rng.normal(0.0, 9.0)
    dlco = 92.0 - 30.0 * ur - 12.0 * pn - 15.0 * gg + rng.normal(0.0, 9.0)
    sobq = 18.0 + 40.0 * ur + 12.0 * pn + 20.0 * gg + 0.5 * (bmi - 28.0) + rng.normal(0.0, 10.0)
    crp = math.exp(rng.normal(math.log(2.0), 0.6)) * (1.0 + 3.0 * pn + 0.5 * gg)
    stage_p = np.array(_SCADDING_P.get(pattern, (0.2,) * 5))
    return {
        "subject": subject,
        "age": age,
        "sex": sex,
        "race": race,
        "bmi": round(bmi, 1),
        "scadding": str(rng.choice(_SCADDING, p=stage_p / stage_p.sum())),
        "fev1_pct": round(fev1, 1),
        "fvc_pct": round(fvc, 1),
        "dlco_pct": round(dlco, 1),
        "cd4": int(np.clip(rng.normal(820.0, 260.0), 150, 2000)),
        "crp": round(crp, 2),
        "sobq": round(float(np.clip(sobq, 0.0, 120.0)), 1),
        "sf12_physical": round(float(np.clip(rng.normal(45.0, 9.0), 10.0, 70.0)), 1),
    }


def _dates(rng: np.random.Generator, age: int) -> tuple[str, str]:
    """Fake (study date, birth date) as YYYYMMDD, consistent with ``age`` in years."""
    study = np.datetime64("2019-01-01") + int(rng.integers(0, 730))
    birth = study - np.timedelta64(int(age * 365.25 + rng.integers(1, 360)), "D")
    return str(study).replace("-", ""), str(birth).replace("-", "")


def _write_subject(out_dir: Path, row: pd.Series, index: int, seed: int, phantom_kwargs: dict) -> tuple[dict, dict]:
    """Draw, write and describe one demo subject; returns its clinical and truth rows."""
    subject = row["subject"]
    streams = np.random.SeedSequence([seed, index]).spawn(3)
    phantom_rng, io_rng, clinical_rng = (np.random.default_rng(s) for s in streams)
    phantom = make_chest_phantom(phantom_rng, row["pattern"], row["severity"], **phantom_kwargs)
    clinical = _clinical_row(clinical_rng, subject, row["pattern"], row["severity"], phantom)
    study_date, birth_date = _dates(io_rng, clinical["age"])
    identity = dict(
        subject=subject,
        patient_name=f"DEMO^SUBJECT{index + 1:02d}",
        patient_id=f"MRN{seed:03d}{index + 1:05d}",
        birth_date=birth_date,
        sex=clinical["sex"],
        study_date=study_date,
        uid_key=f"{seed}/{subject}",
    )
    folder = out_dir / "dicom" / subject
    if folder.exists():
        # Shuffled names differ between runs of other seeds: start from an empty folder.
        shutil.rmtree(folder)
    write_dicom_series(
        phantom, folder, series_number=2, feet_first=bool(row["feet_first"]), flip_columns=bool(row["feet_first"]),
        shuffle=True, rng=io_rng, kernel=_KERNELS[int(io_rng.integers(len(_KERNELS)))], **identity,
    )  # fmt: skip
    if row["localizer"]:
        write_localizer(
            phantom, folder, series_number=1, feet_first=bool(row["feet_first"]), shuffle=True, rng=io_rng, **identity
        )
    truth = {
        "subject": subject,
        "pattern": row["pattern"],
        "severity": row["severity"],
        "lung_mask": f"truth/{subject}_lungs.nii.gz",
        "disease_mask": f"truth/{subject}_disease.nii.gz",
    }
    write_image(phantom.image(phantom.lungs), out_dir / truth["lung_mask"])
    write_image(phantom.image(phantom.disease), out_dir / truth["disease_mask"])
    return clinical, truth


def write_demo_cohort(
    out_dir: str | Path,
    n_subjects: int = 30,
    seed: int = 0,
    patterns: Sequence[str] = PATTERNS,
    **phantom_kwargs,
) -> None:
    """Write a seeded synthetic cohort: DICOM folders plus samples, clinical and truth sheets.

    Layout under ``out_dir``:

    - ``dicom/{subject}/``: the axial CT (series 2, shuffled hexadecimal file names); about
      a third feet-first (FFS, mirrored columns), about a third with a localizer (series 1).
    - ``samples.tsv``: ``subject``, ``dicom`` (``dicom/{subject}``, relative to the sheet).
    - ``clinical.tsv``: ``subject, age, sex, race, bmi, scadding, fev1_pct, fvc_pct,
      dlco_pct, cd4, crp, sobq, sf12_physical``.
    - ``truth.tsv``: ``subject, pattern, severity, lung_mask, disease_mask``; the masks are
      NIfTI files under ``truth/`` on exactly the CT's grid (LPS). For evaluation only.

    Clinical model (s = severity of the subject's pattern, 0 for other patterns):
    age ~ N(48, 11) in [22, 80]; sex 55 % F; race white/black/other 55/35/10 %; bmi rises
    with the phantom's subcutaneous fat (0.5 per mm) plus noise. Pattern-dependent:
    fvc_pct, fev1_pct, dlco_pct fall by 20-30 points with s in upper_reticulation, 8-12 in
    perihilar_nodules and 8-15 in lower_ground_glass (fev1 and fvc also fall with age);
    sobq rises by 40 x s (upper_reticulation), 12 x s (perihilar_nodules), 20 x s
    (lower_ground_glass) and with bmi; crp (mg/L, log-normal around 2) is multiplied by
    1 + 3 s in perihilar_nodules; scadding (0, I..IV) is drawn from pattern-specific
    probabilities (near_normal mostly 0/I, perihilar_nodules mostly I/II, upper_reticulation
    mostly III/IV). Pure noise, unrelated to the pattern: cd4 ~ N(820, 260), sf12_physical
    ~ N(45, 9). Every continuous outcome has noise of about 9-10 units.

    The same seed and arguments give the same files, byte for byte. ``phantom_kwargs`` go
    to :func:`make_chest_phantom` (matrix, pixel_mm, slice_mm, n_slices, z_extent_mm).
    One progress line per subject goes to stderr.
    """
    out_dir = Path(out_dir)
    unknown = set(patterns) - set(ALL_PATTERNS)
    if unknown or not patterns:
        raise ValueError(f"unknown or no patterns {sorted(unknown)}; choose from {ALL_PATTERNS}")
    plan = _cohort_plan(n_subjects, seed, list(patterns))
    clinical, truth = [], []
    for index, row in plan.iterrows():
        started = time.perf_counter()
        c, t = _write_subject(out_dir, row, int(index), seed, phantom_kwargs)
        clinical.append(c)
        truth.append(t)
        flags = ("FFS" if row["feet_first"] else "HFS") + (" +localizer" if row["localizer"] else "")
        print(
            f"demo: {index + 1}/{n_subjects} {row['subject']} {row['pattern']} "
            f"severity {row['severity']:.2f} {flags} ({time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    samples = pd.DataFrame({"subject": plan["subject"], "dicom": [f"dicom/{s}" for s in plan["subject"]]})
    for name, table in (("samples", samples), ("clinical", pd.DataFrame(clinical)), ("truth", pd.DataFrame(truth))):
        write_table(table, out_dir / f"{name}.tsv")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m lungclam.phantom OUT_DIR --n-subjects N --seed S``."""
    parser = argparse.ArgumentParser(description="Write the synthetic demo cohort (DICOM + sheets).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-subjects", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=ALL_PATTERNS)
    parser.add_argument("--matrix", type=int, default=192, help="in-plane pixels (square)")
    parser.add_argument("--pixel-mm", type=float, default=1.875)
    parser.add_argument("--slice-mm", type=float, default=2.5)
    parser.add_argument("--n-slices", type=int, default=None)
    args = parser.parse_args(argv)
    write_demo_cohort(
        args.out_dir, args.n_subjects, args.seed, args.patterns,
        matrix=args.matrix, pixel_mm=args.pixel_mm, slice_mm=args.slice_mm, n_slices=args.n_slices,
    )  # fmt: skip


if __name__ == "__main__":
    main()
