"""Left/right lung segmentation of a chest CT, after ``segment_lung_lr`` of the R package lungct.

The method is the one the CLAM paper (Ryan et al., "Cluster Activation Mapping with
Applications to Medical Imaging") used through lungct (J. Muschelli, B. Vestal, S. Ryan;
``segment_lung_lr``). This is a re-implementation from the description of the method,
not a translation of its (GPL) code. Steps, on arrays in ITK's LPS index order
(axis 0 = z towards superior, axis 1 = y towards posterior, axis 2 = x towards the
patient's left):

1. Air: clip everything below -1024 HU (the scanner's padding, -2048 or -3024 outside the
   field of view) to -1024, so padding counts as air; threshold at -300 HU (lungct shifts
   HU by +1025 and thresholds at 725: the same set) and label face-connected components.
2. Keep the largest component unless it is the air around the body: a component whose
   mean over the first or the last 10 mm along the anterior-posterior axis exceeds 0.5 is
   rejected and the next largest is tried (three candidates in all, as in lungct). We
   also reject a component that holds an in-plane corner of the image (always outside
   the body), and stop at a candidate smaller than 200 mL (too small to be the lungs).
   If none passes, a body-first fallback: body = largest component above -500 HU with
   holes filled slice by slice; the air is taken inside that body only. This rescues
   scans whose lungs meet the outside air (an all-air slice at the top or bottom of the
   volume, an open airway at the top of the field of view).
   Addition: when lungs and airways do not form one component (thin bronchi lost at a
   coarse spacing), an accepted second component of at least a quarter of the first's
   volume (and 50 mL) is kept as well.
3. Close with radius 2 mm: lungs plus airways (the "lung-air" mask).
4. Airways: voxels of the lung-air mask at or below its 4th intensity percentile, within
   the central box of the image (middle half in x and y, superior half in z); close 1 mm,
   erode 1 mm, dilate 2 mm; subtract them from the lung-air mask. The dilation is taken
   as the erosion's radius plus a net growth of 1 mm (at least one voxel), so that the
   net outward step that covers the airway wall survives on a coarse grid.
5. Split: components of at least 50 mL. While only one is found: erode once, then make the
   threshold stricter by 50 HU per round (-350, -400, ...), eroding once more per round
   from -850 HU on; past -1025 HU give up. Giving up is not an error: the single mask is
   cut at the body's midline (median x of the voxels above -500 HU) and a warning is
   logged; a mask lying on one side only becomes that side's lung.
   Addition: when erosions or stricter thresholds were needed, the two seeds are grown
   back over the step-4 lung mask by the depth they lost (the erosions, plus one voxel
   when a stricter threshold removed the partial-volume rim); a voxel within reach of
   both goes to the nearer seed. lungct keeps the eroded shapes; at 1 mm that costs a
   millimetre or two of surface, but at 4 mm one erosion is a whole 4 mm voxel. The growth
   is bounded so that it cannot creep up an airway that step 4 missed.
6. Right lung (label 1) = the seed whose median x is smaller (x points to the patient's
   left in LPS); left lung = label 2. Each is closed with radius 8 mm + 2 x (the erosion
   depth of step 5), its largest component kept; voxels claimed by both go to neither;
   the result is clipped to the step-3 lung-air mask.

Spacing. lungct resamples to 1 mm and states every radius in voxels of that grid. Here each
radius is in millimetres and is turned into a per-axis voxel radius from the image's
spacing: ``round(mm / spacing)`` (half up), at least 1 voxel for the small radii (1 and 2
mm) so that no operation silently disappears on a coarse grid (at 4 mm a 2 mm closing
becomes a 1-voxel closing, the finest that grid can express). Each erosion of step 5 is
therefore one voxel on grids coarser than 1 mm, which is why step 5 grows the seeds back.
The per-lung closing uses ``round(8 mm / spacing) + 2 x (voxels eroded along that axis)``, i.e. 8 + 2 x erosions on a
1 mm grid, exactly lungct. Kernels are ellipsoids in index space with those per-axis radii
(a ball in mm on an isotropic grid). Volumes (50 mL, 200 mL) are converted with the voxel
volume; the 10-slice slabs of step 2 are 10 mm. Closings pad the mask first so lungs that
touch the image border are not eaten.

Speed. Morphology with a radius above one voxel is done with distance maps (SimpleITK's
multi-threaded Maurer transform), so its cost does not grow with the radius; one-voxel
operations use ``scipy.ndimage``. After step 2 the work is cropped to the lung-air box.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from lungclam.errors import SubjectError

log = logging.getLogger(__name__)

AIR_FLOOR_HU = -1024.0  # anything below (scanner padding) is set to this: air
LUNG_THRESHOLD_HU = -300.0
BODY_THRESHOLD_HU = -500.0
THRESHOLD_STEP_HU = 50.0
ERODE_FROM_HU = -825.0  # stricter rounds at or below this also erode once
LOWEST_THRESHOLD_HU = -1025.0
AIRWAY_PERCENTILE = 4.0
EDGE_SLAB_MM = 10.0
MIN_SPLIT_COMPONENT_ML = 50.0
MIN_LUNG_ML = 200.0
SECOND_COMPONENT_FRACTION = 0.25
LUNG_AIR_CLOSE_MM = 2.0
AIRWAY_CLOSE_MM, AIRWAY_ERODE_MM, AIRWAY_DILATE_MM = 1.0, 1.0, 2.0
SPLIT_ERODE_MM = 1.0
FINAL_CLOSE_MM = 8.0

RIGHT, LEFT = 1, 2


# --------------------------------------------------------------------------- helpers


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def radius_voxels(mm: float, spacing_zyx, at_least_one: bool = True) -> tuple[int, int, int]:
    """Per-axis voxel radius for a radius of ``mm`` millimetres (see the module docstring)."""
    out = []
    for sp in spacing_zyx:
        r = _round_half_up(mm / float(sp)) if mm > 0 else 0
        if at_least_one and mm > 0:
            r = max(r, 1)
        out.append(r)
    return tuple(out)


def _ml(n_voxels: int | float, spacing_zyx) -> float:
    return float(n_voxels) * float(np.prod(spacing_zyx)) / 1000.0


def _voxels_for_ml(ml: float, spacing_zyx) -> int:
    return max(1, int(math.ceil(ml * 1000.0 / float(np.prod(spacing_zyx)))))


def _dilate(mask: np.ndarray, radii) -> np.ndarray:
    """Binary dilation with an ellipsoidal kernel of per-axis voxel radii (z, y, x).

    Outside the array counts as background.
    """
    radii = tuple(int(r) for r in radii)
    if not mask.any() or max(radii) == 0:
        return mask.copy()
    if max(radii) == 1:
        return ndi.binary_dilation(mask, structure=_cross(radii))
    # distance (in units where the kernel is the unit ball) from every voxel to the mask
    d2 = _squared_distance_to(mask, radii)
    return mask | (d2 <= 1.0 + 1e-6)


def _erode(mask: np.ndarray, radii) -> np.ndarray:
    """Binary erosion with an ellipsoidal kernel; outside the array counts as foreground."""
    radii = tuple(int(r) for r in radii)
    if not mask.any() or max(radii) == 0:
        return mask.copy()
    if mask.all():
        return mask.copy()
    if max(radii) == 1:
        return ndi.binary_erosion(mask, structure=_cross(radii), border_value=1)
    d2 = _squared_distance_to(~mask, radii)
    return mask & (d2 > 1.0 + 1e-6)


def _close(mask: np.ndarray, radii) -> np.ndarray:
    """Binary closing; the mask is padded by the radius first, so the border is safe."""
    radii = tuple(int(r) for r in radii)
    if not mask.any() or max(radii) == 0:
        return mask.copy()
    pad = [(r, r) for r in radii]
    padded = np.pad(mask, pad)
    closed = _erode(_dilate(padded, radii), radii)
    return closed[tuple(slice(r, r + n) for r, n in zip(radii, mask.shape))]


def _cross(radii) -> np.ndarray:
    """The 1-voxel ellipsoid: centre plus face neighbours along the axes whose radius is 1."""
    st = np.zeros((3, 3, 3), dtype=bool)
    st[1, 1, 1] = True
    for axis, r in enumerate(radii):
        if r >= 1:
            idx = [1, 1, 1]
            for v in (0, 2):
                idx[axis] = v
                st[tuple(idx)] = True
    return st


def _squared_distance_to(mask: np.ndarray, radii) -> np.ndarray:
    """Squared distance from each voxel to the nearest voxel of ``mask``, with axis ``a``
    scaled by 1/radii[a] (so the kernel ellipsoid is the unit ball); inside ``mask`` the
    value is 0. An axis with radius 0 gets a huge scale (no reach along it)."""
    img = _as_uint8_image(mask)
    scale_zyx = [1.0 / r if r > 0 else 1e4 for r in radii]
    img.SetSpacing(tuple(float(s) for s in scale_zyx[::-1]))
    d = sitk.SignedMaurerDistanceMap(
        img, insideIsPositive=False, squaredDistance=True, useImageSpacing=True, backgroundValue=0
    )
    out = sitk.GetArrayFromImage(d)
    out[mask] = 0.0
    return out


def _components(mask: np.ndarray, min_voxels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Face-connected components labelled 1..n by decreasing size; returns (labels, sizes)."""
    if not mask.any():
        return np.zeros(mask.shape, np.uint32), np.zeros(0, np.int64)
    cc = sitk.ConnectedComponent(_as_uint8_image(mask), False)
    relabel = sitk.RelabelComponentImageFilter()
    relabel.SetMinimumObjectSize(int(min_voxels))
    relabel.SetSortByObjectSize(True)
    rel = relabel.Execute(cc)
    del cc
    sizes = np.asarray(relabel.GetSizeOfObjectsInPixels(), dtype=np.int64)
    sizes = sizes[sizes >= min_voxels]
    if sizes.size < np.iinfo(np.uint16).max:  # halves the memory of the label array
        rel = sitk.Cast(rel, sitk.sitkUInt16)
    return sitk.GetArrayFromImage(rel), sizes


def _as_uint8_image(mask: np.ndarray) -> sitk.Image:
    """A bool array as a uint8 SimpleITK image (no extra numpy copy when contiguous)."""
    if mask.dtype == bool and mask.flags.c_contiguous:
        return sitk.GetImageFromArray(mask.view(np.uint8))
    return sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, sizes = _components(mask)
    if sizes.size == 0:
        return mask.copy()
    return labels == 1


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice]:
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        lo = max(int(hit[0]) - margin, 0)
        hi = min(int(hit[-1]) + 1 + margin, mask.shape[axis])
        out.append(slice(lo, hi))
    return tuple(out)


# --------------------------------------------------------------------------- steps 1-2


def _is_outside_air(component: np.ndarray, slab: int) -> tuple[bool, str]:
    """lungct's test (mean over the first/last AP slabs > 0.5) plus an image-corner test."""
    front = float(component[:, :slab, :].mean())
    back = float(component[:, -slab:, :].mean())
    if front > 0.5 or back > 0.5:
        return True, f"anterior/posterior {EDGE_SLAB_MM:g} mm slabs {front:.2f}/{back:.2f} > 0.5"
    corners = component[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    if corners.any():
        return True, "holds an in-plane corner of the image"
    return False, ""


def _pick_air_component(labels: np.ndarray, sizes: np.ndarray, spacing, slab: int, n_try: int) -> list[int]:
    """Labels (largest first) of the accepted air components: the main one, perhaps a second."""
    accepted: list[int] = []
    min_main = _voxels_for_ml(MIN_LUNG_ML, spacing)
    for lab in range(1, min(n_try, sizes.size) + 1):
        if sizes[lab - 1] < min_main:
            log.info("air component %d (%.0f mL) is too small to hold the lungs", lab, _ml(sizes[lab - 1], spacing))
            break
        comp = labels == lab
        outside, why = _is_outside_air(comp, slab)
        if outside:
            log.info("air component %d (%.0f mL) rejected: %s", lab, _ml(sizes[lab - 1], spacing), why)
            continue
        accepted.append(lab)
        break
    if not accepted:
        return accepted
    first = accepted[0]
    min_second = max(SECOND_COMPONENT_FRACTION * sizes[first - 1], _voxels_for_ml(MIN_SPLIT_COMPONENT_ML, spacing))
    for lab in range(first + 1, min(first + 3, sizes.size) + 1):
        if sizes[lab - 1] < min_second:
            break
        if not _is_outside_air(labels == lab, slab)[0]:
            log.info(
                "second air component %d (%.0f mL) kept beside the first (%.0f mL): "
                "lungs not joined by airways at this spacing",
                lab,
                _ml(sizes[lab - 1], spacing),
                _ml(sizes[first - 1], spacing),
            )
            accepted.append(lab)
            break
    return accepted


def _select(labels: np.ndarray, picked: list[int]) -> np.ndarray:
    out = labels == picked[0]
    for lab in picked[1:]:
        out |= labels == lab
    return out


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        out[k] = ndi.binary_fill_holes(mask[k])
    return out


def _find_lung_air(hu: np.ndarray, spacing) -> tuple[np.ndarray, str]:
    """Steps 1 and 2: the air component(s) of the lungs and airways."""
    air = hu <= LUNG_THRESHOLD_HU
    slab = min(max(1, _round_half_up(EDGE_SLAB_MM / spacing[1])), max(1, hu.shape[1] // 2))
    labels, sizes = _components(air)
    log.info("step 1: %d air components at <= %g HU", sizes.size, LUNG_THRESHOLD_HU)
    picked = _pick_air_component(labels, sizes, spacing, slab, n_try=3)
    if picked:
        path = "largest air component" if picked[0] == 1 else f"air component {picked[0]} by size"
        return _select(labels, picked), path
    del labels
    log.warning(
        "step 2: the three largest air components look like the air around the body; falling back to body-first"
    )
    body = _largest(hu > BODY_THRESHOLD_HU)
    body = _fill_slices(body)
    inner_air = air & body
    labels, sizes = _components(inner_air)
    picked = _pick_air_component(labels, sizes, spacing, slab, n_try=3)
    if not picked:
        raise SubjectError(None, "no lungs found: no air-filled region (<= -300 HU) inside the body")
    return _select(labels, picked), "body-first fallback"


# --------------------------------------------------------------------------- steps 4-6


def _airways(hu: np.ndarray, lung_air: np.ndarray, spacing, box: tuple[slice, slice, slice]) -> np.ndarray:
    """Step 4: the dark central part of the lung-air mask (trachea, main bronchi)."""
    cut = float(np.percentile(hu[lung_air], AIRWAY_PERCENTILE))
    airway = np.zeros_like(lung_air)
    airway[box] = lung_air[box] & (hu[box] <= cut)
    erode_r = radius_voxels(AIRWAY_ERODE_MM, spacing)
    # lungct erodes 1 and dilates 2 voxels of 1 mm: a net growth of 1 mm that takes in the
    # airway wall's partial-volume rim. Rounding both radii separately would cancel that
    # growth on a coarse grid, so the dilation is the erosion plus a net growth of
    # (2 - 1) mm, at least one voxel.
    grow_r = radius_voxels(AIRWAY_DILATE_MM - AIRWAY_ERODE_MM, spacing)
    airway = _close(airway, radius_voxels(AIRWAY_CLOSE_MM, spacing))
    airway = _erode(airway, erode_r)
    airway = _dilate(airway, tuple(e + g for e, g in zip(erode_r, grow_r)))
    log.info(
        "step 4: airways at <= %.0f HU (4th percentile) in the central box: %.1f mL", cut, _ml(airway.sum(), spacing)
    )
    return airway


def _split(hu: np.ndarray, lung: np.ndarray, spacing) -> dict:
    """Step 5: two seed components, by erosion and stricter thresholds."""
    min_vox = _voxels_for_ml(MIN_SPLIT_COMPONENT_ML, spacing)
    erode_r = radius_voxels(SPLIT_ERODE_MM, spacing)
    seeds = lung.copy()
    labels, sizes = _components(seeds, min_vox)
    if sizes.size == 0:
        raise SubjectError(None, f"no lungs found: no lung component of at least {MIN_SPLIT_COMPONENT_ML:g} mL")
    erosions = 0
    threshold = LUNG_THRESHOLD_HU
    rounds = 0
    if sizes.size == 1:
        seeds = _erode(seeds, erode_r)
        erosions += 1
        labels, sizes = _components(seeds, min_vox)
        log.info("step 5: one component; eroded once -> %d component(s) >= 50 mL", sizes.size)
    while sizes.size < 2:
        rounds += 1
        threshold = LUNG_THRESHOLD_HU - THRESHOLD_STEP_HU * rounds
        if threshold < LOWEST_THRESHOLD_HU:
            return {
                "labels": None,
                "erosions": erosions,
                "threshold_hu": threshold + THRESHOLD_STEP_HU,
                "rounds": rounds - 1,
                "erode_r": erode_r,
            }
        if threshold <= ERODE_FROM_HU:
            seeds = _erode(seeds, erode_r)
            erosions += 1
        seeds &= hu < threshold
        labels, sizes = _components(seeds, min_vox)
        log.info("step 5: threshold %g HU, erosions %d -> %d component(s) >= 50 mL", threshold, erosions, sizes.size)
    if sizes.size > 2:
        log.info("step 5: %d components >= 50 mL; the two largest are the lungs", sizes.size)
    return {"labels": labels, "erosions": erosions, "threshold_hu": threshold, "rounds": rounds, "erode_r": erode_r}


def _median_x(mask: np.ndarray) -> float:
    return float(np.median(np.nonzero(mask)[2]))


def _regrow(seed_labels: np.ndarray, lung: np.ndarray, depth) -> np.ndarray:
    """Grow the two seeds back over ``lung`` by at most ``depth`` voxels per axis.

    A voxel within reach of both seeds goes to the nearer one (ties to neither). The growth
    is bounded so that it restores what erosion and the stricter thresholds took from the
    lungs' surface, without creeping up an airway that step 4 missed.
    """
    box = _bbox(lung | (seed_labels > 0), margin=1)
    lung_c = lung[box]
    seeds_c = seed_labels[box]
    d_right = _squared_distance_to(seeds_c == RIGHT, depth)
    d_left = _squared_distance_to(seeds_c == LEFT, depth)
    reach = 1.0 + 1e-6
    grown_c = np.zeros(lung_c.shape, np.uint8)
    grown_c[lung_c & (d_right <= reach) & (d_right < d_left)] = RIGHT
    grown_c[lung_c & (d_left <= reach) & (d_left < d_right)] = LEFT
    grown = np.zeros(lung.shape, np.uint8)
    grown[box] = grown_c
    return grown


def _midline_x(hu: np.ndarray, lung: np.ndarray) -> float:
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    body = hu[zs[0] : zs[-1] + 1] > BODY_THRESHOLD_HU
    xs = np.nonzero(body)[2]
    return float(np.median(xs)) if xs.size else (hu.shape[2] - 1) / 2.0


def _split_at_midline(hu: np.ndarray, lung: np.ndarray, spacing) -> np.ndarray:
    """Last resort when step 5 finds no split: cut at the body's midline."""
    mid = _midline_x(hu, lung)
    x = np.arange(lung.shape[2])[None, None, :]
    right = lung & (x < mid)
    left = lung & (x >= mid)
    total = max(int(lung.sum()), 1)
    fr, fl = right.sum() / total, left.sum() / total
    labels = np.zeros(lung.shape, np.uint8)
    if min(fr, fl) >= 0.15:
        labels[right] = RIGHT
        labels[left] = LEFT
        log.warning(
            "step 5: could not separate the lungs down to %g HU; cut the combined mask at the "
            "body midline (x index %.1f)",
            LOWEST_THRESHOLD_HU,
            mid,
        )
    else:
        side = RIGHT if fr > fl else LEFT
        labels[lung] = side
        log.warning(
            "step 5: only one lung found (%.0f mL), on the patient's %s; the other is empty",
            _ml(total, spacing),
            "right" if side == RIGHT else "left",
        )
    return labels


def segment_lungs_array(
    hu: np.ndarray, spacing_zyx: tuple[float, float, float], *, subject: str | None = None
) -> tuple[np.ndarray, dict]:
    """Segment the lungs of a CT given as an LPS-ordered HU array (z=S, y=P, x=L).

    Returns ``(labels, info)``: a uint8 array (0 background, 1 right lung, 2 left lung) of
    the input's shape, and a dict with ``erosions`` (erosions made in step 5),
    ``threshold_hu`` (the threshold at which the lungs separated), ``volumes_ml``
    ({1: right, 2: left}), ``lung_air_ml``, ``airway_ml``, ``component`` (how step 2
    found the air) and ``split`` (``components``, ``erosion``, ``midline`` or
    ``one-sided``). Raises :class:`SubjectError` when no lungs are found.
    """
    t0 = time.perf_counter()
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise SubjectError(subject, f"expected a 3D CT, got an array of shape {hu.shape}")
    spacing = tuple(float(s) for s in spacing_zyx)
    try:
        return _segment(hu, spacing, t0)
    except SubjectError as err:
        if subject is not None and err.subject is None:
            raise SubjectError(subject, err.cause, err.path) from err
        raise


def _segment(hu_in: np.ndarray, spacing, t0: float) -> tuple[np.ndarray, dict]:
    full_shape = hu_in.shape
    if np.issubdtype(hu_in.dtype, np.integer) and np.iinfo(hu_in.dtype).min <= AIR_FLOOR_HU:
        hu = np.maximum(hu_in, hu_in.dtype.type(AIR_FLOOR_HU))  # int16 HU stays int16
    else:
        hu = np.maximum(hu_in.astype(np.float32, copy=False), np.float32(AIR_FLOOR_HU))

    # steps 1-2
    lung_air0, path = _find_lung_air(hu, spacing)
    log.info("step 2: %s, %.0f mL", path, _ml(lung_air0.sum(), spacing))

    # crop to the lung-air box (a closing never leaves the bounding box)
    crop = _bbox(lung_air0)
    hu_c = hu[crop]
    lung_air = _close(lung_air0[crop], radius_voxels(LUNG_AIR_CLOSE_MM, spacing))
    del lung_air0
    lung_air_ml = _ml(lung_air.sum(), spacing)
    log.info("step 3: lungs and airways after a %g mm closing: %.0f mL", LUNG_AIR_CLOSE_MM, lung_air_ml)

    # step 4: the central box is defined on the whole image, as in lungct
    nz, ny, nx = full_shape
    full_box = (slice(nz // 2, nz), slice(ny // 4, 3 * ny // 4), slice(nx // 4, 3 * nx // 4))
    box = tuple(
        slice(min(max(fb.start - c.start, 0), c.stop - c.start), min(max(fb.stop - c.start, 0), c.stop - c.start))
        for fb, c in zip(full_box, crop)
    )
    airway = _airways(hu_c, lung_air, spacing, box)
    lung = lung_air & ~airway
    lung_ml = _ml(lung.sum(), spacing)
    if lung_ml < MIN_LUNG_ML:
        raise SubjectError(
            None,
            f"no lungs found: air inside the body is only {lung_ml:.0f} mL "
            f"(< {MIN_LUNG_ML:g} mL) after removing the airways",
        )

    # step 5
    sp = _split(hu_c, lung, spacing)
    final_r = radius_voxels(FINAL_CLOSE_MM, spacing, at_least_one=False)
    if sp["labels"] is None:
        seeds = _split_at_midline(hu_c, lung, spacing)
        split = "midline" if (seeds == RIGHT).any() and (seeds == LEFT).any() else "one-sided"
        grow_erosions = 0  # the halves are not eroded: no wider closing
    else:
        labels = sp["labels"]
        a, b = labels == 1, labels == 2
        right, left = (a, b) if _median_x(a) < _median_x(b) else (b, a)
        seeds = np.zeros(lung.shape, np.uint8)
        seeds[right] = RIGHT
        seeds[left] = LEFT
        del labels, a, b, right, left
        erosions = grow_erosions = sp["erosions"]
        if erosions or sp["rounds"]:
            # the depth taken from the surface: the erosions, plus one voxel for the rim of
            # partial-volume voxels that a stricter threshold removes
            depth = tuple(erosions * r + (1 if sp["rounds"] else 0) for r in sp["erode_r"])
            seeds = _regrow(seeds, lung, depth)
            split = "erosion"
        else:
            split = "components"

    # step 6
    extra = tuple(2 * grow_erosions * r for r in sp["erode_r"])
    close_r = tuple(r + e for r, e in zip(final_r, extra))
    out = np.zeros(lung.shape, np.uint8)
    masks = []
    for lab in (RIGHT, LEFT):
        m = seeds == lab
        if not m.any():
            masks.append(m)
            continue
        bb = _bbox(m)
        closed = np.zeros_like(m)
        closed[bb] = _close(m[bb], close_r)
        masks.append(_largest(closed))
    if masks[0].any() or masks[1].any():
        both = masks[0] & masks[1]
        out[masks[0] & ~both] = RIGHT
        out[masks[1] & ~both] = LEFT
        out[~lung_air] = 0

    volumes = {lab: _ml((out == lab).sum(), spacing) for lab in (RIGHT, LEFT)}
    if volumes[RIGHT] + volumes[LEFT] < MIN_LUNG_ML:
        raise SubjectError(
            None,
            f"no lungs found: the lung masks total only {volumes[RIGHT] + volumes[LEFT]:.0f} mL (< {MIN_LUNG_ML:g} mL)",
        )
    labels_full = np.zeros(full_shape, np.uint8)
    labels_full[crop] = out
    info = {
        "component": path,
        "lung_air_ml": lung_air_ml,
        "airway_ml": _ml(airway.sum(), spacing),
        "erosions": sp["erosions"],
        "threshold_hu": sp["threshold_hu"],
        "split": split,
        "final_close_radius_vox": close_r,
        "volumes_ml": volumes,
        "seconds": time.perf_counter() - t0,
    }
    log.info(
        "step 6: right lung %.0f mL, left lung %.0f mL (split by %s, %d erosion(s), threshold %g HU; %.1f s)",
        volumes[RIGHT],
        volumes[LEFT],
        split,
        sp["erosions"],
        sp["threshold_hu"],
        info["seconds"],
    )
    return labels_full, info


# --------------------------------------------------------------------------- image level


def segment_lungs(image: sitk.Image, subject: str | None = None) -> sitk.Image:
    """Segment right (1) and left (2) lungs of a CT in HU, in any orientation.

    The image is reoriented to LPS for the work and the labels are brought back to the
    input's grid: the result is a uint8 image with the input's size, origin, spacing and
    direction. Raises :class:`SubjectError` naming ``subject`` when no lungs are found.
    """
    if image.GetDimension() != 3:
        raise SubjectError(subject, f"expected a 3D CT, got a {image.GetDimension()}D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SubjectError(subject, "expected a scalar CT image, got a multi-component one")
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    lps = sitk.DICOMOrient(image, "LPS")
    hu = sitk.GetArrayFromImage(lps)
    spacing_zyx = tuple(lps.GetSpacing()[::-1])
    log.info(
        "segmenting %s: size %s, spacing %s mm, orientation %s",
        subject or "image",
        image.GetSize(),
        tuple(round(s, 3) for s in image.GetSpacing()),
        orientation,
    )
    labels, _ = segment_lungs_array(hu, spacing_zyx, subject=subject)
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(lps)
    out = sitk.DICOMOrient(out, orientation)
    if out.GetSize() != image.GetSize():  # pragma: no cover - DICOMOrient is a pure permutation
        out = sitk.Resample(out, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    out.CopyInformation(image)
    return out


def lung_volumes_ml(labels: sitk.Image) -> dict[int, float]:
    """Volume in mL of labels 1 (right) and 2 (left) of a label image."""
    arr = sitk.GetArrayViewFromImage(labels)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    counts = np.bincount(np.asarray(arr, dtype=np.int64).ravel(), minlength=3)
    return {lab: float(counts[lab]) * voxel_ml for lab in (RIGHT, LEFT)}
