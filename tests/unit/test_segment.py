"""Tests of lungclam.segment (lungct-style left/right lung segmentation) on synthetic chests."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

from lungclam.errors import SubjectError
from lungclam.metrics import dice, per_label_dice
from lungclam.segment import lung_volumes_ml, radius_voxels, segment_lungs, segment_lungs_array


def make_chest(
    spacing: float = 4.0,
    *,
    lung_gap_mm: float = 30.0,
    lungs: bool = True,
    seed: int = 0,
    noise: float = 20.0,
    padding: float = -2048.0,
    bridge: tuple[float, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small synthetic chest in LPS array order (z=S, y=P, x=L): (HU, true labels, airway).

    Body: an elliptic cylinder of soft tissue (40 HU) in air (-1000 HU), padding outside a
    circular field of view; spine (400 HU) at the back; a table under the body. Lungs:
    two ellipsoids at -850 HU, ``lung_gap_mm`` apart at the midline (negative: they
    overlap), right lung (label 1) at smaller x. A trachea of air (-1000 HU) runs from the
    top slice down the midline and splits into two main bronchi that enter the lungs.
    ``bridge=(hu, n)``: the lungs also touch across the anterior midline through a sheet of
    lung at ``hu`` that is ``n`` voxels thick (an anterior junction line).
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = int(round(280 / spacing)), int(round(360 / spacing)), int(round(360 / spacing))
    z = (np.arange(nz) - (nz - 1) / 2) * spacing
    y = (np.arange(ny) - (ny - 1) / 2) * spacing
    x = (np.arange(nx) - (nx - 1) / 2) * spacing
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij")
    hu = np.full((nz, ny, nx), -1000.0)
    body = (X / 150.0) ** 2 + (Y / 105.0) ** 2 <= 1
    hu[body] = 40.0
    hu[(np.abs(Y - 115) <= 6) & (np.abs(X) <= 140)] = 150.0  # table, 4 mm of air below the back
    hu[(X / 18.0) ** 2 + ((Y - 75) / 18.0) ** 2 <= 1] = 400.0  # spine
    truth = np.zeros(hu.shape, np.uint8)
    airway = np.zeros(hu.shape, bool)
    if lungs:
        ax, ay, az = 48.0, 75.0, 105.0
        cx = lung_gap_mm / 2 + ax
        for lab, sx in ((1, -cx), (2, cx)):
            ell = ((X - sx) / ax) ** 2 + ((Y + 5) / ay) ** 2 + ((Z + 15) / az) ** 2 <= 1
            truth[ell & (truth == 0)] = lab
            hu[ell] = -850.0
        if bridge is not None:
            b_hu, b_n = bridge
            y0 = -50.0
            sheet = (np.abs(Y - y0) <= (b_n * spacing) / 2 - 1e-6) & (np.abs(Z + 15) <= 40) & (np.abs(X) <= cx)
            sheet &= truth == 0
            hu[sheet] = b_hu
            truth[sheet] = np.where(X[sheet] < 0, 1, 2)
        if lung_gap_mm < 0:  # overlapping lungs: the true boundary is the midline
            both = truth > 0
            truth[both] = np.where(X[both] < 0, 1, 2)
        # trachea down to the carina, then two bronchi out to the lungs
        carina = 45.0
        tr = (X / 9.0) ** 2 + ((Y + 20) / 9.0) ** 2 <= 1
        airway |= tr & (Z >= carina)
        for sx in (-1, 1):
            # a tube from (0, -20, carina) to (sx*cx, -10, carina - 30)
            p0 = np.array([0.0, -20.0, carina])
            p1 = np.array([sx * cx, -10.0, carina - 30.0])
            d = p1 - p0
            t = np.clip(((X - p0[0]) * d[0] + (Y - p0[1]) * d[1] + (Z - p0[2]) * d[2]) / (d @ d), 0, 1)
            dist2 = (X - p0[0] - t * d[0]) ** 2 + (Y - p0[1] - t * d[1]) ** 2 + (Z - p0[2] - t * d[2]) ** 2
            airway |= dist2 <= 6.0**2
        airway &= truth == 0  # the airway outside the lungs is not lung
        hu[airway] = -1000.0
    hu += rng.normal(0.0, noise, hu.shape)
    hu[X**2 + Y**2 > 175.0**2] = padding  # outside the reconstruction circle
    return hu.astype(np.float32), truth, airway


def as_image(hu: np.ndarray, spacing: float) -> sitk.Image:
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((spacing,) * 3)
    img.SetOrigin((-180.0, -180.0, -140.0))
    return img


def centroid_x_mm(labels: sitk.Image, value: int) -> float:
    """Physical x (LPS: towards the patient's left) of a label's centroid."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(labels) == value)
    assert idx.size, f"label {value} is empty"
    centre = idx.mean(axis=0)[::-1].tolist()  # (x, y, z) continuous index
    return labels.TransformContinuousIndexToPhysicalPoint(centre)[0]


# --------------------------------------------------------------------------- helpers


def test_radius_voxels_rounds_half_up_and_keeps_at_least_one():
    assert radius_voxels(2.0, (1.0, 1.0, 1.0)) == (2, 2, 2)
    assert radius_voxels(2.0, (1.0, 2.0, 4.0)) == (2, 1, 1)  # 2/4 = 0.5 rounds up
    assert radius_voxels(1.0, (4.0, 4.0, 4.0)) == (1, 1, 1)  # never lost on a coarse grid
    assert radius_voxels(1.0, (4.0, 4.0, 4.0), at_least_one=False) == (0, 0, 0)
    assert radius_voxels(8.0, (1.0, 2.0, 3.0), at_least_one=False) == (8, 4, 3)
    assert radius_voxels(0.0, (1.0, 1.0, 1.0)) == (0, 0, 0)


def test_dice_hand_cases():
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([0, 1, 1, 0], bool)
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, ~a) == 0.0
    assert dice(np.zeros(4, bool), np.zeros(4, bool)) == 1.0  # both empty
    assert dice(a, np.zeros(4, bool)) == 0.0
    la = np.array([[1, 1, 2, 0]])
    lb = np.array([[1, 2, 2, 0]])
    assert per_label_dice(la, lb) == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3)}
    assert per_label_dice(la, la, labels=(1, 2, 3)) == {1: 1.0, 2: 1.0, 3: 1.0}


# --------------------------------------------------------------------------- segmentation


def test_separate_lungs_labels_geometry_trachea_and_padding():
    spacing = 4.0
    hu, truth, airway = make_chest(spacing)
    img = as_image(hu, spacing)
    img.SetOrigin((-180.0, -180.0, -140.0))
    t0 = time.perf_counter()
    lab = segment_lungs(img, subject="S01")
    assert time.perf_counter() - t0 < 10
    # geometry and type of the input
    assert lab.GetSize() == img.GetSize()
    assert lab.GetSpacing() == img.GetSpacing()
    assert lab.GetOrigin() == img.GetOrigin()
    assert lab.GetDirection() == img.GetDirection()
    assert lab.GetPixelID() == sitk.sitkUInt8
    out = sitk.GetArrayFromImage(lab)
    assert set(np.unique(out)) <= {0, 1, 2}
    scores = per_label_dice(out, truth)
    assert scores[1] >= 0.95 and scores[2] >= 0.95, scores
    # right lung (1) at the patient's right: smaller x in LPS
    assert centroid_x_mm(lab, 1) < 0 < centroid_x_mm(lab, 2)
    # trachea and bronchi are not lung; padding is not lung
    assert airway.sum() * spacing**3 / 1000 > 20  # mL
    assert (out[airway] == 0).mean() > 0.98
    assert not out[hu < -1500].any()
    vols = lung_volumes_ml(lab)
    true_ml = truth_ml(truth, spacing)
    for side in (1, 2):
        assert vols[side] == pytest.approx(true_ml[side], rel=0.05)


def truth_ml(truth: np.ndarray, spacing: float) -> dict[int, float]:
    return {side: float((truth == side).sum()) * spacing**3 / 1000.0 for side in (1, 2)}


@pytest.mark.parametrize("flip", [(True, False, False), (True, True, False), (True, False, True)])
def test_orientation_of_input_is_respected(flip):
    """The same anatomy stored with flipped axes (e.g. RAS-like) gives the same sides."""
    spacing = 4.0
    hu, truth, _ = make_chest(spacing)
    img = as_image(hu, spacing)
    flipped = sitk.Flip(img, list(flip))  # same physical positions, other index order
    assert flipped.GetDirection() != img.GetDirection()
    lab = segment_lungs(flipped, subject="S02")
    assert lab.GetDirection() == flipped.GetDirection()
    assert lab.GetOrigin() == flipped.GetOrigin()
    assert centroid_x_mm(lab, 1) < 0 < centroid_x_mm(lab, 2)
    # back on the LPS grid the labels match the truth voxel for voxel
    back = sitk.GetArrayFromImage(sitk.Flip(lab, list(flip)))
    scores = per_label_dice(back, truth)
    assert scores[1] >= 0.95 and scores[2] >= 0.95, scores


def test_permuted_axes_input():
    spacing = 4.0
    hu, truth, _ = make_chest(spacing)
    img = sitk.PermuteAxes(as_image(hu, spacing), [1, 2, 0])  # x<-y, y<-z, z<-x in index order
    lab = segment_lungs(img, subject="S03")
    assert lab.GetSize() == img.GetSize() and lab.GetDirection() == img.GetDirection()
    assert centroid_x_mm(lab, 1) < 0 < centroid_x_mm(lab, 2)


@pytest.mark.parametrize(
    "spacing,bridge",
    [(4.0, (-850.0, 1)), (3.0, (-850.0, 2))],
    ids=["4mm-one-voxel-junction", "3mm-two-voxel-junction"],
)
def test_touching_lungs_split_by_erosion(spacing, bridge):
    hu, truth, _ = make_chest(spacing, lung_gap_mm=20.0, bridge=bridge)
    labels, info = segment_lungs_array(hu, (spacing,) * 3)
    assert info["erosions"] >= 1 and info["split"] == "erosion"
    assert info["threshold_hu"] == -300.0  # the erosion alone parted them
    scores = per_label_dice(labels, truth)
    assert scores[1] >= 0.95 and scores[2] >= 0.95, scores


def test_denser_junction_needs_a_stricter_threshold():
    spacing = 4.0
    hu, truth, _ = make_chest(spacing, lung_gap_mm=20.0, bridge=(-600.0, 3))
    labels, info = segment_lungs_array(hu, (spacing,) * 3)
    assert info["split"] == "erosion"
    assert -800.0 <= info["threshold_hu"] < -600.0
    scores = per_label_dice(labels, truth)
    assert scores[1] >= 0.95 and scores[2] >= 0.95, scores


def test_inseparable_lungs_are_cut_at_the_midline(caplog):
    spacing = 4.0
    hu, truth, airway = make_chest(spacing, lung_gap_mm=-2.0)  # a broad contact no erosion breaks
    with caplog.at_level("WARNING", logger="lungclam.segment"):
        labels, info = segment_lungs_array(hu, (spacing,) * 3)
    assert info["split"] == "midline"
    assert "midline" in caplog.text
    scores = per_label_dice(labels, truth)
    assert scores[1] >= 0.9 and scores[2] >= 0.9, scores


def test_air_slab_joining_lungs_to_outside_uses_body_first_fallback():
    """An all-air top slice (e.g. resampling past the last slice) joins the trachea to
    the air around the body; lungct's check rejects that component, the fallback finds
    the lungs inside the body."""
    spacing = 4.0
    hu, truth, _ = make_chest(spacing)
    hu[-1] = -1024.0
    labels, info = segment_lungs_array(hu, (spacing,) * 3)
    assert info["component"] == "body-first fallback"
    scores = per_label_dice(labels, truth)
    assert scores[1] >= 0.95 and scores[2] >= 0.95, scores


def test_anisotropic_spacing():
    hu, truth, _ = make_chest(2.0)
    hu, truth = hu[::2], truth[::2]  # 4 mm slices, 2 mm in plane
    labels, info = segment_lungs_array(hu, (4.0, 2.0, 2.0))
    scores = per_label_dice(labels, truth)
    assert scores[1] >= 0.95 and scores[2] >= 0.95, scores
    assert info["volumes_ml"][1] == pytest.approx(float((truth == 1).sum()) * 16 / 1000, rel=0.05)


@pytest.mark.parametrize("padding", [-2048.0, -3024.0])
def test_padding_is_never_lung(padding):
    spacing = 4.0
    hu, truth, _ = make_chest(spacing, padding=padding)
    labels, _ = segment_lungs_array(hu, (spacing,) * 3)
    assert (hu == padding).sum() > 1000
    assert not labels[hu == padding].any()
    scores = per_label_dice(labels, truth)
    assert scores[1] >= 0.95 and scores[2] >= 0.95, scores


def test_no_lungs_raises_subject_error_naming_the_subject():
    spacing = 4.0
    hu, _, _ = make_chest(spacing, lungs=False)
    with pytest.raises(SubjectError) as err:
        segment_lungs(as_image(hu, spacing), subject="P042")
    assert err.value.subject == "P042"
    assert "P042" in str(err.value) and "no lungs" in str(err.value)


def test_tiny_air_pocket_is_not_lungs():
    spacing = 4.0
    hu, _, _ = make_chest(spacing, lungs=False)
    hu[30:34, 40:44, 40:44] = -900.0  # ~4 mL of air inside the body
    with pytest.raises(SubjectError, match="no lungs"):
        segment_lungs_array(hu, (spacing,) * 3, subject="P043")


def test_not_3d_is_a_subject_error():
    with pytest.raises(SubjectError, match="3D"):
        segment_lungs_array(np.zeros((10, 10)), (1.0, 1.0, 1.0), subject="P044")


def test_lung_volumes_ml():
    arr = np.zeros((10, 10, 10), np.uint8)
    arr[:5] = 1
    arr[5:7] = 2
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 2.0))
    assert lung_volumes_ml(img) == {1: pytest.approx(4.0), 2: pytest.approx(1.6)}


# --------------------------------------------------------------------------- real data


def _first_series(folder) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    assert ids, f"no DICOM series in {folder}"
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    return reader.Execute()


@pytest.mark.realdata
def test_real_chest_ct(shared_data):
    """Real chest CTs (Lung-PET-CT-Dx): plausible lung volumes, right lung at patient right."""
    from lungclam.resample import resample_ct

    root = shared_data / "real-ct" / "lung-pet-ct-dx"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    subjects = sorted(p for p in root.iterdir() if p.is_dir())
    assert subjects
    t0 = time.perf_counter()
    for subject in subjects:
        series = sorted(p for p in subject.glob("*/*") if p.is_dir())[0]
        img = resample_ct(_first_series(series), 2.0)
        lab = segment_lungs(img, subject=subject.name)
        vols = lung_volumes_ml(lab)
        for side in (1, 2):
            assert 800 <= vols[side] <= 4500, (subject.name, vols)
        # label 1 is the patient's right lung: smaller x in LPS, right of the body's midline
        assert centroid_x_mm(lab, 1) < centroid_x_mm(lab, 2), subject.name
    assert time.perf_counter() - t0 < 60


def test_single_lung_is_labelled_by_its_side(caplog):
    """After a left pneumonectomy the one lung left is the right lung; label 2 stays empty."""
    spacing = 4.0
    hu, truth, _ = make_chest(spacing)
    gone = truth == 2
    hu[gone] = 40.0
    truth[gone] = 0
    with caplog.at_level("WARNING", logger="lungclam.segment"):
        labels, info = segment_lungs_array(hu, (spacing,) * 3)
    assert info["split"] == "one-sided"
    assert "only one lung" in caplog.text
    assert not (labels == 2).any()
    assert dice(labels == 1, truth == 1) >= 0.95
