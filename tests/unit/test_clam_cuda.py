"""The fused CUDA masked inputs' min and max, which need no upsampled map: checked on the
CPU against the full upsample (the kernel itself is tested in test_gpu.py, on CUDA)."""

from __future__ import annotations

import pytest
import torch

from lungclam.clam import upsample
from lungclam.clam_cuda import upsampled_extremes


@pytest.mark.parametrize(
    "small,big",
    [
        ((11, 11, 11), (88, 88, 88)),  # the paper's 3D encoder
        ((16, 16), (64, 64)),  # the paper's 2D encoder
        ((5, 6, 7), (20, 18, 35)),  # uneven ratios per axis
        ((3, 4), (10, 13)),  # ratios that are not whole numbers
        ((1, 5), (4, 9)),  # an axis of one sample
    ],
)
def test_extremes_from_run_ends_equal_the_full_upsample(small: tuple[int, ...], big: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(len(small) * 100 + big[-1])
    for _ in range(3):
        maps = torch.randn(6, 1, *small, generator=generator)
        maps[2] = 0.25  # a constant map: min == max
        full = upsample(maps, big).flatten(1)
        lo, hi = upsampled_extremes(maps, big)
        # Equal but for rounding: the smaller matrix products may sum in another order.
        torch.testing.assert_close(lo, full.amin(1), rtol=0.0, atol=1e-6)
        torch.testing.assert_close(hi, full.amax(1), rtol=0.0, atol=1e-6)


def test_extremes_are_found_where_a_peak_falls_between_output_samples() -> None:
    # One hot voxel: the upsampled maximum sits near it, not at the input's own maximum
    # (no output sample lands on an input sample at ratio 8), so the max is below 1.
    maps = torch.zeros(1, 1, 11, 11, 11)
    maps[0, 0, 5, 5, 5] = 1.0
    full = upsample(maps, (88, 88, 88))
    lo, hi = upsampled_extremes(maps, (88, 88, 88))
    assert float(hi) == float(full.max()) < 1.0 and float(lo) == float(full.min()) == 0.0
