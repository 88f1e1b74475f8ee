"""The simulation study of Ryan et al., section 4: synthetic 2D lung slices and their scores.

Reference: Ryan, Sharma, Carlson, Liu, Maier, Koyner, Harrington, Tolle, Zhang,
"Cluster Activation Mapping with Applications to Medical Imaging" (section 4.1, "Design";
section 4.2, "Results"). Written here in our own words.

The paper takes the median axial slice of its lung template at 3 mm, pads it with a null
background to 64 x 64 pixels, and adds one disc-shaped abnormality whose **intensity**
(0 to 400 HU added, steps of 100), **location** (distinct places in the lungs) or **size**
(radius 2 to 6 pixels) differs between the true clusters while the other two are held
fixed; noise is drawn from the empirical intensity distribution of the healthy lung, and
N = 300 images are split among K = 3, 4 or 5 true clusters.

This module makes those data and scores what a clustering made of them:

* :func:`builtin_base` (a healthy synthetic phantom from :mod:`lungclam.phantom.anatomy`) and
  :func:`base_from_template` (a template NIfTI) give the :class:`BaseSlice`;
* :func:`make_scenario` fixes the per-cluster intensity, centre and radius of the disc
  (rules below), :func:`simulate` draws the images, labels and abnormality masks;
* :func:`best_match_accuracy` scores predicted labels under the best one-to-one matching,
  :func:`localization_scores` tells how much of a CLAM falls on the abnormality, and
  :func:`compare_across_clusters` runs the paper's tests of CLAM active area and mean HU.

Conventions: a slice is a ``(rows, cols)`` array in radiological display convention, row 0
anterior and column 0 the patient's **right** (that is an axial slice of an LPS-ordered
``(z, y, x)`` volume as it is: y grows to posterior, x to the patient's left). Intensities
are Hounsfield units (HU); centres, radii and areas are in pixels.

Level rules (the paper does not say which levels it used for K < 5): the K levels are the
members of the 5-level grid nearest K evenly spaced points over the grid's full range,
``grid[rint(linspace(0, 4, K))]``. Intensities (HU added): K=5 -> 0, 100, 200, 300, 400;
K=4 -> 0, 100, 300, 400; K=3 -> 0, 200, 400. Radii (pixels): K=5 -> 2, 3, 4, 5, 6;
K=4 -> 2, 3, 5, 6; K=3 -> 2, 4, 6.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import ndimage, stats
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:
    import SimpleITK as sitk

    from lungclam.phantom.anatomy import Phantom

# SimpleITK (and the phantom's pydicom) are imported where a base slice is made from
# images, so the study itself (lungclam.simulation.cases, benchmarks/gpu.py) runs without them.

#: The null background outside the lungs (HU); the model sees the lungs only.
BACKGROUND_HU = -1024.0

#: The scenarios of the paper, in its order.
SCENARIOS: tuple[str, ...] = ("intensity", "location", "size")
#: HU added inside the disc, the paper's grid (intensity scenario).
INTENSITY_LEVELS_HU: tuple[float, ...] = (0.0, 100.0, 200.0, 300.0, 400.0)
#: Disc radii in pixels, the paper's grid (size scenario).
RADIUS_LEVELS_PX: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0)
#: HU added where intensity is held fixed (location and size scenarios).
FIXED_INTENSITY_HU = 300.0
#: Radius in pixels where size is held fixed (intensity and location scenarios).
FIXED_RADIUS_PX = 4.0
#: Clearance between a disc and the lung boundary: a centre is allowed where its distance
#: to the nearest non-lung pixel exceeds radius + this (pixels), so the disc's rim keeps
#: about one lung pixel around it.
CLEARANCE_PX = 1.0
#: Least spacing of two centres in the location scenario: 2 * radius + this (pixels).
LOCATION_GAP_PX = 2.0

# The built-in phantom is drawn in a field of view of FOV_FACTOR x (size x pixel_mm) mm; a
# small field of view makes make_chest_phantom scale the anatomy down (to about 0.7-0.75 of
# an adult here) so that the median lung slice fits the canvas at 3 mm, as the paper's
# template slice did. Smaller factors are tried in turn if a drawn subject is still too wide.
_FOV_FACTORS: tuple[float, ...] = (1.3, 1.2, 1.1, 1.0)
#: Least background margin (pixels) between the lungs' bounding box and the canvas edge.
_MIN_MARGIN_PX = 1


# --------------------------------------------------------------------------- base slice


@dataclass
class BaseSlice:
    """The healthy lung slice every simulated image starts from.

    Attributes:
        hu: (rows, cols) float32 HU; the lungs of the template slice, ``BACKGROUND_HU``
            everywhere else. Row 0 anterior, column 0 the patient's right.
        lungs: (rows, cols) bool lung mask.
        noise: 1D float32 sample of healthy-lung HU deviations (lung values minus their
            mean, over the whole resampled lung volume) to draw noise from.
        pixel_mm: pixel size in mm (square pixels).
        labels: (rows, cols) uint8 lung labels, 0 background, 1 right lung, 2 left lung.
    """

    hu: np.ndarray
    lungs: np.ndarray
    noise: np.ndarray
    pixel_mm: float
    labels: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the slice."""
        return tuple(self.hu.shape)  # type: ignore[return-value]


def _median_lung_slice(labels_zyx: np.ndarray) -> int:
    """Index of the middle axial slice among those that contain lung (lower middle if even)."""
    zs = np.flatnonzero((labels_zyx > 0).any(axis=(1, 2)))
    if zs.size == 0:
        raise ValueError("the lung mask is empty")
    return int(zs[(zs.size - 1) // 2])


def _place_in_canvas(
    hu_yx: np.ndarray, labels_yx: np.ndarray, size: int, pixel_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Crop a slice (y, x) to its lung bounding box and centre it on a size x size canvas.

    Returns (hu float32 with BACKGROUND_HU outside the lungs, labels uint8).
    """
    lungs = labels_yx > 0
    rows, cols = np.nonzero(lungs)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    height, width = r1 - r0, c1 - c0
    if max(height, width) + 2 * _MIN_MARGIN_PX > size:
        raise ValueError(
            f"the lungs of the median slice span {height} x {width} pixels "
            f"({height * pixel_mm:.0f} x {width * pixel_mm:.0f} mm) at {pixel_mm} mm, "
            f"which does not fit a {size} x {size} canvas with a {_MIN_MARGIN_PX}-pixel "
            f"margin; use a larger size or pixel_mm"
        )
    hu = np.full((size, size), BACKGROUND_HU, dtype=np.float32)
    labels = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    crop_labels = labels_yx[r0:r1, c0:c1]
    crop_hu = np.where(crop_labels > 0, hu_yx[r0:r1, c0:c1], BACKGROUND_HU).astype(np.float32)
    hu[top : top + height, left : left + width] = crop_hu
    labels[top : top + height, left : left + width] = crop_labels
    return hu, labels


def _base_from_volume(ct: sitk.Image, labels: sitk.Image, size: int, pixel_mm: float) -> BaseSlice:
    """A BaseSlice from an LPS CT (HU) and its lung labels, both already at ``pixel_mm``."""
    import SimpleITK as sitk

    hu_zyx = sitk.GetArrayFromImage(ct).astype(np.float32)
    lab_zyx = sitk.GetArrayFromImage(labels).astype(np.uint8)
    in_lung = lab_zyx > 0
    if not in_lung.any():
        raise ValueError("the lung mask is empty")
    values = hu_zyx[in_lung]
    noise = (values - values.mean(dtype=np.float64)).astype(np.float32)
    z = _median_lung_slice(lab_zyx)
    hu, lab = _place_in_canvas(hu_zyx[z], lab_zyx[z], size, pixel_mm)
    return BaseSlice(hu=hu, lungs=lab > 0, noise=noise, pixel_mm=float(pixel_mm), labels=lab)


def _builtin_phantom(size: int, pixel_mm: float, seed: int, fov_factor: float) -> Phantom:
    """The healthy phantom behind :func:`builtin_base` (2/3 of ``pixel_mm`` in plane, slices
    of ``pixel_mm``), drawn in a field of view of ``fov_factor * size * pixel_mm`` mm."""
    from lungclam.phantom.anatomy import make_chest_phantom

    fov_mm = fov_factor * size * pixel_mm
    fine_mm = pixel_mm * 2.0 / 3.0
    return make_chest_phantom(
        np.random.default_rng(seed),
        "near_normal",
        0.0,
        matrix=int(round(fov_mm / fine_mm)),
        pixel_mm=fine_mm,
        slice_mm=pixel_mm,
        z_extent_mm=fov_mm,
    )


def builtin_base(size: int = 64, pixel_mm: float = 3.0, seed: int = 0) -> BaseSlice:
    """The base slice from a healthy synthetic chest CT (no template needed).

    A ``near_normal`` phantom of severity 0 (:func:`lungclam.phantom.anatomy.make_chest_phantom`,
    seeded by ``seed``) is resampled to ``pixel_mm`` isotropic (linear for HU, nearest
    neighbour for the lung labels); its median axial lung slice is cropped to the lungs and
    centred on a ``size`` x ``size`` canvas of ``BACKGROUND_HU``, with every non-lung pixel
    set to ``BACKGROUND_HU``. The phantom's field of view is chosen in proportion to the
    canvas, which scales its anatomy down so that the lungs fit (see ``_FOV_FACTORS``).
    Raises ValueError if the lungs still do not fit. About half a second at 64 x 64.
    """
    from lungclam.resample import resample_ct, resample_labels

    last: ValueError | None = None
    for factor in _FOV_FACTORS:
        phantom = _builtin_phantom(size, pixel_mm, seed, factor)
        ct = resample_ct(phantom.image(), pixel_mm)
        labels = resample_labels(phantom.image(phantom.lungs), ct)
        try:
            return _base_from_volume(ct, labels, size, pixel_mm)
        except ValueError as err:  # too wide: try a smaller field of view
            last = err
    raise ValueError(f"built-in phantom (seed {seed}): {last}")


def base_from_template(
    path: str | Path, mask_path: str | Path | None = None, size: int = 64, pixel_mm: float = 3.0
) -> BaseSlice:
    """The base slice from a template CT on disk (e.g. ``results/template/template.nii.gz``).

    The image is reoriented to LPS and resampled to ``pixel_mm`` isotropic (linear); the
    lung labels come from ``mask_path`` (any label image, non-zero = lung, resampled by
    nearest neighbour onto the same grid) or, when ``mask_path`` is None, from
    :func:`lungclam.segment.segment_lungs` run on the template at its own resolution.
    Then as :func:`builtin_base`: median axial lung slice, cropped and centred on a
    ``size`` x ``size`` canvas, ``BACKGROUND_HU`` outside the lungs; row 0 anterior,
    column 0 the patient's right. The noise sample is taken from the template's lungs.
    Raises ValueError when the lungs do not fit the canvas or the mask is empty.
    """
    import SimpleITK as sitk

    from lungclam.imageio import read_image, to_lps
    from lungclam.resample import resample_ct, resample_labels

    image = to_lps(read_image(path))
    if image.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D image, got {image.GetDimension()}D")
    if mask_path is None:
        from lungclam.segment import segment_lungs  # heavy module, only needed here

        mask = segment_lungs(image, subject=Path(path).name)
    else:
        mask = read_image(mask_path)
    ct = resample_ct(image, pixel_mm)
    labels = resample_labels(sitk.Cast(mask, sitk.sitkUInt8), ct)
    return _base_from_volume(ct, labels, size, pixel_mm)


# --------------------------------------------------------------------------- scenarios


def save_base(base: BaseSlice, path: str | Path) -> None:
    """Write ``base`` to an ``.npz`` (a few hundred kB at 64 x 64), so that a machine
    without SimpleITK (a bare CUDA image) can run the study on the same base slice."""
    labels = base.labels if base.labels is not None else base.lungs.astype(np.uint8)
    np.savez_compressed(
        path, hu=base.hu, lungs=base.lungs, noise=base.noise, pixel_mm=np.float64(base.pixel_mm), labels=labels
    )


def load_base(path: str | Path) -> BaseSlice:
    """The base slice written by :func:`save_base`."""
    with np.load(path) as data:
        return BaseSlice(
            hu=data["hu"].astype(np.float32),
            lungs=data["lungs"].astype(bool),
            noise=data["noise"].astype(np.float32),
            pixel_mm=float(data["pixel_mm"]),
            labels=data["labels"].astype(np.uint8),
        )


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Bool (rows, cols) mask of the pixels whose centre lies within ``radius`` pixels of
    ``centre`` (row, col), boundary included."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


@dataclass
class Scenario:
    """One (scenario, true K) case: the disc of each true cluster.

    Attributes:
        name: ``"intensity"``, ``"location"`` or ``"size"``.
        true_k: number of true clusters K.
        intensities: HU added inside the disc, per cluster (length K).
        centres: disc centre (row, col) in pixels, per cluster.
        radii: disc radius in pixels, per cluster.
    """

    name: str
    true_k: int
    intensities: list[float]
    centres: list[tuple[float, float]]
    radii: list[float]

    def masks(self, shape: tuple[int, int]) -> np.ndarray:
        """(K, rows, cols) bool disc of each cluster."""
        return np.stack([disc(shape, c, r) for c, r in zip(self.centres, self.radii)])


def levels(grid: tuple[float, ...], k: int) -> list[float]:
    """The ``k`` members of ``grid`` nearest ``k`` evenly spaced points over its range
    (``grid[rint(linspace(0, len(grid) - 1, k))]``); 2 <= k <= len(grid)."""
    if not 2 <= k <= len(grid):
        raise ValueError(f"K must be between 2 and {len(grid)} for this scenario, got {k}")
    index = np.rint(np.linspace(0, len(grid) - 1, k)).astype(int)
    return [float(grid[i]) for i in index]


def _depth(lungs: np.ndarray) -> np.ndarray:
    """Distance (pixels) from each lung pixel centre to the nearest non-lung pixel centre
    (0 outside). A disc of radius r centred on a pixel lies in the lungs iff depth > r."""
    padded = np.pad(lungs, 1)  # the canvas edge counts as outside
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def fixed_centre(base: BaseSlice) -> tuple[float, float]:
    """The centre used where location is held fixed: the deepest lung pixel (largest
    distance to the lung boundary; first in raster order on ties), (row, col)."""
    depth = _depth(base.lungs)
    r, c = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(r), float(c)


def _farthest_points(cand: np.ndarray, first: int, k: int) -> tuple[list[int], float]:
    """Farthest-point sampling of ``k`` rows of ``cand`` (M, 2) from row ``first``:
    each next point is the one farthest from those chosen (lowest index on ties).
    Returns the chosen rows and their least pairwise distance."""
    chosen = [first]
    nearest = np.hypot(*(cand - cand[first]).T)
    spacing = math.inf
    while len(chosen) < k:
        i = int(np.argmax(nearest))
        spacing = min(spacing, float(nearest[i]))
        chosen.append(i)
        nearest = np.minimum(nearest, np.hypot(*(cand - cand[i]).T))
    return chosen, spacing


def location_centres(base: BaseSlice, k: int, radius: float = FIXED_RADIUS_PX) -> list[tuple[float, float]]:
    """``k`` distinct disc centres spread over the lungs, deterministic given the base.

    Candidates are the lung pixels deeper than ``radius + CLEARANCE_PX`` (so every disc
    lies inside the lungs with a rim of lung around it). From the deepest candidate
    (:func:`fixed_centre`), each next centre is the candidate farthest from those already
    chosen (farthest-point sampling, raster order on ties): the second lands in the other
    lung and the rest spread out. If the centres come closer than
    ``2 * radius + LOCATION_GAP_PX``, the sampling is restarted from the next deepest
    candidate, and so on. The centres are returned sorted by column, then row (cluster 0
    nearest the patient's right). Raises ValueError if no start gives ``k`` centres that
    far apart.
    """
    if k < 2:
        raise ValueError(f"K must be at least 2, got {k}")
    depth = _depth(base.lungs)
    cand_index = np.argwhere(depth > radius + CLEARANCE_PX)
    if cand_index.size == 0:
        raise ValueError(f"no lung pixel is deep enough for a disc of radius {radius}")
    need = 2.0 * radius + LOCATION_GAP_PX
    cand = cand_index.astype(float)
    order = np.argsort(-depth[tuple(cand_index.T)], kind="stable")  # deepest first
    for first in order:
        chosen, spacing = _farthest_points(cand, int(first), k)
        if spacing >= need:
            centres = [(float(cand[i, 0]), float(cand[i, 1])) for i in chosen]
            return sorted(centres, key=lambda p: (p[1], p[0]))
    raise ValueError(
        f"cannot place {k} discs of radius {radius} px at least {need} px apart inside the "
        f"lungs of this slice ({len(cand)} candidate centres)"
    )


def make_scenario(name: str, true_k: int, base: BaseSlice) -> Scenario:
    """The disc of each of ``true_k`` clusters for scenario ``name`` on ``base``.

    * ``intensity``: HU added from :data:`INTENSITY_LEVELS_HU` by :func:`levels`
      (K=3: 0, 200, 400; K=4: 0, 100, 300, 400; K=5: all); radius
      :data:`FIXED_RADIUS_PX` at :func:`fixed_centre`.
    * ``location``: :func:`location_centres`; +:data:`FIXED_INTENSITY_HU`, radius
      :data:`FIXED_RADIUS_PX`.
    * ``size``: radii from :data:`RADIUS_LEVELS_PX` by :func:`levels` (K=3: 2, 4, 6;
      K=4: 2, 3, 5, 6; K=5: all); +:data:`FIXED_INTENSITY_HU` at :func:`fixed_centre`.

    Intensity and size allow 2 <= K <= 5; location any K >= 2 that fits. Raises ValueError
    for an unknown name, a K out of range, or a disc that leaves the lung mask.
    """
    k = int(true_k)
    if name == "intensity":
        intensities = levels(INTENSITY_LEVELS_HU, k)
        centres = [fixed_centre(base)] * k
        radii = [FIXED_RADIUS_PX] * k
    elif name == "location":
        centres = location_centres(base, k, FIXED_RADIUS_PX)
        intensities = [FIXED_INTENSITY_HU] * k
        radii = [FIXED_RADIUS_PX] * k
    elif name == "size":
        radii = levels(RADIUS_LEVELS_PX, k)
        intensities = [FIXED_INTENSITY_HU] * k
        centres = [fixed_centre(base)] * k
    else:
        raise ValueError(f"unknown scenario {name!r}; expected one of {SCENARIOS}")
    scenario = Scenario(name=name, true_k=k, intensities=intensities, centres=centres, radii=radii)
    for j, mask in enumerate(scenario.masks(base.shape)):
        if not mask.any() or (mask & ~base.lungs).any():
            raise ValueError(
                f"{name} scenario, cluster {j}: the disc at {scenario.centres[j]} of radius "
                f"{scenario.radii[j]} px does not lie inside the lung mask"
            )
    return scenario


def simulate(
    scenario: Scenario, base: BaseSlice, n_images: int = 300, seed: int = 0, noise_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the simulated images of one scenario.

    Labels 0..K-1 are split as evenly as possible (counts differ by at most one) and put in
    a seeded random order. Each image is ``base.hu`` plus, at every lung pixel, a value
    drawn with replacement from ``base.noise`` times ``noise_scale``, plus the cluster's
    intensity inside its disc (clipped to the lungs). Pixels outside the lungs stay
    ``BACKGROUND_HU``; values are not clipped (:func:`lungclam.intensity.normalize_hu` clips
    when the model reads them).

    Returns:
        images: (N, rows, cols) float32 HU.
        labels: (N,) int64 true cluster, 0..K-1.
        masks: (N, rows, cols) bool abnormality (the image's disc within the lungs; for a
            cluster that adds 0 HU it marks where the abnormality would be).
    """
    k = scenario.true_k
    if n_images < 1:
        raise ValueError(f"n_images must be positive, got {n_images}")
    if base.noise.size == 0:
        raise ValueError("the base slice has no noise sample")
    if not (len(scenario.intensities) == len(scenario.centres) == len(scenario.radii) == k):
        raise ValueError(f"scenario {scenario.name!r} does not describe {k} clusters")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_images) % k).astype(np.int64)
    discs = scenario.masks(base.shape) & base.lungs
    lung = base.lungs
    images = np.repeat(base.hu[None].astype(np.float32), n_images, axis=0)
    noise = rng.choice(base.noise, size=(n_images, int(lung.sum()))).astype(np.float32)
    images[:, lung] += np.float32(noise_scale) * noise
    masks = discs[labels]
    added = np.asarray(scenario.intensities, dtype=np.float32)[labels]
    images += masks * added[:, None, None]
    return images, labels, masks


# --------------------------------------------------------------------------- scores


def best_match_accuracy(true: np.ndarray, pred: np.ndarray) -> tuple[float, dict[int, int]]:
    """Accuracy of ``pred`` under the best one-to-one matching of predicted to true labels.

    The matching maximises the agreements in the contingency table (Hungarian algorithm,
    :func:`scipy.optimize.linear_sum_assignment`). The numbers of distinct labels may
    differ: images in a predicted cluster left unmatched count as wrong, and a true cluster
    left unmatched is missed. Returns (accuracy in [0, 1], {pred label: true label}) with
    only the matched predicted labels in the mapping.
    """
    true = np.asarray(true).ravel()
    pred = np.asarray(pred).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"true and pred differ in length: {true.size} vs {pred.size}")
    if true.size == 0:
        raise ValueError("no labels given")
    t_values, t_index = np.unique(true, return_inverse=True)
    p_values, p_index = np.unique(pred, return_inverse=True)
    table = np.zeros((p_values.size, t_values.size), dtype=np.int64)
    np.add.at(table, (p_index, t_index), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    accuracy = float(table[rows, cols].sum()) / true.size
    mapping = {p_values[r].item(): t_values[c].item() for r, c in zip(rows, cols)}
    return accuracy, mapping


def cluster_sizes(pred: np.ndarray, k: int) -> list[int]:
    """Number of images in each cluster 0..k-1 (zeros for empty clusters)."""
    pred = np.asarray(pred).ravel()
    if pred.size and (pred.min() < 0 or pred.max() >= k):
        raise ValueError(f"labels must lie in 0..{k - 1}")
    return [int(n) for n in np.bincount(pred.astype(np.int64), minlength=k)]


def _as_stack(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W) or (H, W), got shape {a.shape}")
    return a


def localization_scores(clam: np.ndarray, masks: np.ndarray, margin: int = 2) -> pd.DataFrame:
    """How well each image's CLAM falls on its abnormality.

    Args:
        clam: (N, H, W) importance maps in [0, 1].
        masks: (N, H, W) bool abnormality masks.
        margin: pixels by which the mask is dilated (disc-shaped structuring element of
            that radius) for the ``*_margin`` columns.

    Returns a DataFrame indexed by image (0..N-1) with ``mass_inside`` (share of the map's
    total importance inside the mask), ``mass_inside_margin`` (inside the dilated mask),
    ``max_inside`` / ``max_inside_margin`` (whether the map's maximum pixel, first in
    raster order on ties, lies in the mask / the dilated mask) and ``active_area`` (pixels
    with importance >= 0.5). A map with zero total gives NaN shares and False maxima.
    """
    clam = _as_stack(clam, "clam").astype(np.float64)
    masks = _as_stack(masks, "masks").astype(bool)
    if clam.shape != masks.shape:
        raise ValueError(f"clam {clam.shape} and masks {masks.shape} differ in shape")
    m = int(margin)
    if m < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    element = disc((2 * m + 1, 2 * m + 1), (m, m), m)
    grown = ndimage.binary_dilation(masks, structure=element[None]) if m else masks
    n = clam.shape[0]
    flat = clam.reshape(n, -1)
    total = flat.sum(axis=1)
    has_mass = total > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = np.where(has_mass, (flat * masks.reshape(n, -1)).sum(axis=1) / total, np.nan)
        inside_m = np.where(has_mass, (flat * grown.reshape(n, -1)).sum(axis=1) / total, np.nan)
    top = flat.argmax(axis=1)
    rows = np.arange(n)
    max_in = masks.reshape(n, -1)[rows, top] & has_mass
    max_in_m = grown.reshape(n, -1)[rows, top] & has_mass
    table = pd.DataFrame(
        {
            "mass_inside": inside,
            "mass_inside_margin": inside_m,
            "max_inside": max_in.astype(bool),
            "max_inside_margin": max_in_m.astype(bool),
            "active_area": active_area(clam),
        }
    )
    table.index.name = "image"
    return table


def active_area(clam: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(N,) int64 number of pixels of each map with importance >= ``threshold``."""
    clam = _as_stack(clam, "clam")
    return (clam >= threshold).reshape(clam.shape[0], -1).sum(axis=1).astype(np.int64)


def mean_hu_in_active_area(images: np.ndarray, clam: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(N,) float64 mean HU of each image over its map's active area (importance >=
    ``threshold``); NaN where the active area is empty."""
    images = _as_stack(images, "images").astype(np.float64)
    clam = _as_stack(clam, "clam")
    if images.shape != clam.shape:
        raise ValueError(f"images {images.shape} and clam {clam.shape} differ in shape")
    active = (clam >= threshold).reshape(clam.shape[0], -1)
    count = active.sum(axis=1)
    total = (images.reshape(images.shape[0], -1) * active).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def compare_across_clusters(values: np.ndarray, labels: np.ndarray) -> dict:
    """Test whether a per-image measure differs across clusters (the paper's tests of
    CLAM active area and mean HU).

    NaN values are dropped. Returns ``f_stat`` and ``anova_p`` (one-way ANOVA,
    :func:`scipy.stats.f_oneway`), ``h_stat`` and ``kruskal_p`` (Kruskal-Wallis),
    ``means`` and ``counts`` ({cluster: value}). Statistics are NaN with fewer than two
    non-empty clusters or when a test is undefined (e.g. all values equal).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if values.shape != labels.shape:
        raise ValueError(f"values and labels differ in length: {values.size} vs {labels.size}")
    keep = np.isfinite(values)
    values, labels = values[keep], labels[keep]
    clusters = [c.item() for c in np.unique(labels)]
    groups = [values[labels == c] for c in clusters]
    out: dict = {
        "f_stat": math.nan,
        "anova_p": math.nan,
        "h_stat": math.nan,
        "kruskal_p": math.nan,
        "means": {c: float(g.mean()) for c, g in zip(clusters, groups)},
        "counts": {c: int(g.size) for c, g in zip(clusters, groups)},
    }
    if len(groups) < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant or tiny groups: scipy warns and gives NaN
        anova = stats.f_oneway(*groups)
        out["f_stat"], out["anova_p"] = float(anova.statistic), float(anova.pvalue)
        try:
            kw = stats.kruskal(*groups)
            out["h_stat"], out["kruskal_p"] = float(kw.statistic), float(kw.pvalue)
        except ValueError:  # all values identical
            pass
    return out
