"""Seeded synthetic chest CTs: the body, the lungs and the disease of one subject.

:func:`make_chest_phantom` draws one subject: an elliptical trunk (fat over muscle), spine,
ribs, sternum, mediastinum, heart and aorta, two lungs of plausible shape (right larger,
domed bases over the diaphragm, rounded apices, cardiac notch on the left) with textured
parenchyma, branching vessel and airway trees, trachea and main bronchi, a patient table,
scanner blur and noise, and the scanner's padding value outside the circular field of view.
Each subject carries one disease pattern from :data:`PATTERNS` (:data:`ALL_PATTERNS` adds a
fourth) whose extent and density scale with a severity in [0, 1].

Conventions: physical coordinates are ITK LPS millimetres (x to the patient's left, y to
posterior, z to superior); numpy arrays are indexed (z, y, x); intensities are Hounsfield
units (HU). Internally the anatomy is drawn in a *body frame* (u, v, w): u and v are x and
y rotated by the subject's small roll angle about z and centred on the trunk, and w is
height in mm above the lowest point of the lungs (the deepest costophrenic recess).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

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
