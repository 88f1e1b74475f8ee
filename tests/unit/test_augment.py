"""Training-time augmentation: shifts and rotations that move anatomy as a rigid body,
nearest-neighbour resampling that invents no values, a bounded intensity jitter, seeded draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lungclam.augment import Augmentation


def _points(shape: tuple[int, ...], where: list[tuple[int, ...]], half: int = 0) -> torch.Tensor:
    """(len(where), 1, *shape) zeros with ones in a cube of side 2 half + 1 at each point."""
    x = torch.zeros((len(where), 1, *shape))
    for i, p in enumerate(where):
        x[(i, 0, *(slice(c - half, c + half + 1) for c in p))] = 1.0
    return x


def _peak(image: torch.Tensor) -> np.ndarray:
    """Centre of mass of the ones (nearest-neighbour rotation may drop or repeat a voxel)."""
    return torch.nonzero(image[0]).double().mean(0).numpy()


def test_shifts_move_a_point_by_at_most_the_limit_in_both_directions() -> None:
    x = _points((24, 30), [(12, 15)] * 200)
    y = Augmentation(shift_voxels=2)(x, torch.Generator().manual_seed(0))
    moves = np.array([_peak(y[i]) for i in range(len(y))]) - [12, 15]
    assert np.abs(moves).max() <= 2
    for axis in range(2):  # both signs and no move at all occur on each axis
        assert {-2, -1, 0, 1, 2} <= set(moves[:, axis].astype(int))


@pytest.mark.parametrize("shape", [(21, 21), (15, 21, 27)])
def test_rotations_keep_the_distance_to_the_centre_and_stay_within_the_angle(shape) -> None:
    centre = np.array([(n - 1) / 2 for n in shape])
    point = tuple(int(c) for c in centre[:-1]) + (int(centre[-1]) + 6,)  # 6 voxels along the last axis
    x = _points(shape, [point] * 100, half=1)
    degrees = 20.0
    y = Augmentation(rotate_degrees=degrees)(x, torch.Generator().manual_seed(1))
    offsets = np.array([_peak(y[i]) for i in range(len(y))]) - centre
    radius = np.linalg.norm(offsets, axis=1)
    assert np.abs(radius - 6).max() <= 0.6  # rounding to the nearest voxel only
    # the angle from the starting direction never exceeds what the draws allow
    # (in 3D, three angles of at most 20 degrees each)
    limit = degrees if len(shape) == 2 else 3 * degrees
    angle = np.degrees(np.arccos(np.clip(offsets[:, -1] / radius, -1, 1)))
    assert angle.max() <= limit + np.degrees(math.asin(1 / 6)) + 1e-6
    assert angle.max() > degrees / 4  # it does rotate


def test_displacement_only_reuses_values_of_the_image() -> None:
    x = torch.rand((3, 1, 8, 10, 12), generator=torch.Generator().manual_seed(2))
    y = Augmentation(shift_voxels=1.5, rotate_degrees=10)(x, torch.Generator().manual_seed(3))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.isin(y.numpy(), x.numpy()).all()
    assert not torch.equal(x, y)


def test_intensity_jitter_is_an_affine_change_within_its_bounds() -> None:
    x = torch.full((300, 1, 4, 4), 0.5)
    x[:, :, 0, 0] = 0.0
    y = Augmentation(intensity_jitter=0.02)(x, torch.Generator().manual_seed(4))
    offset = y[:, 0, 0, 0]  # x = 0 keeps only b
    scale = (y[:, 0, 1, 1] - offset) / 0.5  # 1 + a
    assert offset.abs().max() <= 0.02 + 1e-7 and (scale - 1).abs().max() <= 0.02 + 1e-6
    assert offset.min() < -0.01 and offset.max() > 0.01  # spread over the range
    expected = 0.5 * scale.view(-1, 1, 1, 1) + offset.view(-1, 1, 1, 1)
    torch.testing.assert_close(y[:, :, 2:, 2:], expected.expand(-1, 1, 2, 2))


def test_draws_follow_the_generator_and_nothing_changes_when_inactive() -> None:
    x = torch.rand((4, 1, 16, 16), generator=torch.Generator().manual_seed(5))
    augment = Augmentation(1, 5, 0.01)
    a = augment(x, torch.Generator().manual_seed(9))
    b = augment(x, torch.Generator().manual_seed(9))
    c = augment(x, torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert Augmentation()(x, torch.Generator()) is x
    assert not Augmentation().active and augment.active


def test_from_config_and_bad_values() -> None:
    assert Augmentation.from_config(None) == Augmentation()
    assert Augmentation.from_config({"shift_voxels": 1, "rotate_degrees": 5}) == Augmentation(1.0, 5.0, 0.0)
    with pytest.raises(ValueError, match="rotate_degrees"):
        Augmentation(rotate_degrees=-1)
