"""Model inputs: HU scaling and stacking volumes of one grid, with errors naming the subject."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from lungclam.errors import SubjectError
from lungclam.train import load_volumes, normalize_hu


def test_normalize_hu_maps_background_to_zero_and_clips() -> None:
    out = normalize_hu(np.array([-2048.0, -1024.0, -412.0, 200.0, 1000.0]))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert out.dtype == np.float32


def _write(path, shape, value=-800.0) -> str:
    sitk.WriteImage(sitk.GetImageFromArray(np.full(shape, value, dtype=np.float32)), str(path))
    return str(path)


def test_load_volumes_stacks_channel_first(tmp_path) -> None:
    paths = [_write(tmp_path / f"{s}.nii.gz", (4, 5, 6), v) for s, v in (("a", -1024.0), ("b", 200.0))]
    images = load_volumes(paths, ["a", "b"])
    assert images.shape == (2, 1, 4, 5, 6) and images.dtype == np.float32
    assert images[0].max() == 0.0 and images[1].min() == 1.0


def test_load_volumes_names_the_odd_subject(tmp_path) -> None:
    paths = [_write(tmp_path / "a.nii.gz", (4, 5, 6)), _write(tmp_path / "b.nii.gz", (4, 5, 7))]
    with pytest.raises(SubjectError, match="subject 'b'.*differs"):
        load_volumes(paths, ["a", "b"])
    (tmp_path / "c.nii.gz").write_bytes(b"not an image")
    with pytest.raises(SubjectError, match="subject 'c'.*cannot read"):
        load_volumes([paths[0], str(tmp_path / "c.nii.gz")], ["a", "c"])
