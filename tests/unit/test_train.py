"""Model inputs: HU scaling and stacking volumes of one grid, with errors naming the subject."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from lungclam.device import epoch_sum
from lungclam.errors import SubjectError
from lungclam.imageio import load_volumes
from lungclam.intensity import normalize_hu
from lungclam.train import (
    EarlyStopping,
    pretrain,
    reconstruction_error,
    stopped_before_maximum,
    validation_split,
)


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


def _tiny_model(seed: int = 0):
    from lungclam.model import ConvAutoencoder, ModelSpec

    torch.manual_seed(seed)
    return ConvAutoencoder(ModelSpec(input_shape=(16, 16), channels=(4, 8), strides=(2, 2), kernel=4, latent_dim=4))


def _noisy_discs(n: int = 16, seed: int = 0) -> np.ndarray:
    """(n, 1, 16, 16) float32 in [0, 1]: a disc of one of two brightnesses plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    disc = ((yy - 8) ** 2 + (xx - 8) ** 2 < 16).astype(np.float32)
    level = np.where(np.arange(n) % 2, 0.8, 0.4).astype(np.float32)
    images = level[:, None, None] * disc + 0.1 * rng.normal(size=(n, 16, 16)).astype(np.float32)
    return np.clip(images, 0, 1)[:, None]


def test_validation_split_is_seeded_disjoint_and_keeps_enough_to_train() -> None:
    train, held = validation_split(20, 0.2, seed=1)
    assert len(held) == 4 and len(train) == 16 and not set(train) & set(held)
    assert sorted([*train, *held]) == list(range(20))
    assert np.array_equal(held, validation_split(20, 0.2, seed=1)[1])
    assert not np.array_equal(held, validation_split(20, 0.2, seed=2)[1])
    assert len(validation_split(20, 0.0, seed=1)[1]) == 0
    assert len(validation_split(3, 0.3, seed=1)[1]) == 0  # too few to spare one
    with pytest.raises(ValueError, match="fraction"):
        validation_split(20, 1.0, seed=0)


def test_pretrain_without_held_out_share_runs_every_epoch_and_repeats_bit_for_bit() -> None:
    images = _noisy_discs()
    runs = []
    for _ in range(2):
        model = _tiny_model()
        history = pretrain(model, images, epochs=4, batch_size=4, seed=3)
        runs.append((history, [p.detach().clone() for p in model.parameters()]))
    history = runs[0][0]
    assert history["epoch"].tolist() == [1, 2, 3, 4] and history["val_loss"].isna().all()
    assert history["best"].tolist() == [False, False, False, True]
    pd.testing.assert_frame_equal(runs[0][0].drop(columns="seconds"), runs[1][0].drop(columns="seconds"))
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_pretrain_augments_training_batches_only_and_repeats_bit_for_bit() -> None:
    from lungclam.augment import Augmentation

    images = _noisy_discs(20)
    stopping = EarlyStopping(fraction=0.25, patience=50)

    def run(augmentation):
        model = _tiny_model()
        history = pretrain(model, images, epochs=3, batch_size=4, seed=3, stopping=stopping, augmentation=augmentation)
        return history.drop(columns="seconds"), [p.detach().clone() for p in model.parameters()]

    plain, off = run(None), run(Augmentation())
    pd.testing.assert_frame_equal(plain[0], off[0])  # an inactive augmentation changes nothing
    first, again = run(Augmentation(1, 10, 0.02)), run(Augmentation(1, 10, 0.02))
    pd.testing.assert_frame_equal(first[0], again[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], again[1]))
    assert not np.allclose(first[0]["loss"], plain[0]["loss"])


def test_pretrain_stops_on_the_held_out_error_and_keeps_the_best_weights() -> None:
    images = _noisy_discs(20)
    model = _tiny_model()
    # a learning rate this high makes the held-out error stop improving within a few epochs
    stopping = EarlyStopping(fraction=0.25, patience=3)
    history = pretrain(model, images, epochs=60, batch_size=4, learning_rate=0.05, seed=0, stopping=stopping)
    best = history.loc[history["best"]].iloc[0]
    assert len(history) < 60, "training ran to the maximum"
    assert len(history) == best["epoch"] + stopping.patience
    assert best["val_loss"] == history["val_loss"].min()
    _, held = validation_split(20, 0.25, seed=0)
    restored = reconstruction_error(model, torch.from_numpy(images[held]), 4, torch.device("cpu"))
    assert restored == pytest.approx(best["val_loss"], rel=1e-6)


def test_stopped_before_maximum_tells_a_plateau_from_a_run_cut_short() -> None:
    images = _noisy_discs(20)
    stopped = pretrain(
        _tiny_model(),
        images,
        epochs=60,
        batch_size=4,
        learning_rate=0.05,
        seed=0,
        stopping=EarlyStopping(fraction=0.25, patience=3),
    )
    assert stopped_before_maximum(stopped, 3) is True
    # the same run cut at a maximum two epochs after its best epoch: still improving as far as it knows
    best = int(stopped.loc[stopped["best"], "epoch"].iloc[0])
    cut = stopped.loc[stopped["epoch"] <= best + 2]
    assert stopped_before_maximum(cut, 3) is False
    fixed = pretrain(_tiny_model(), images, epochs=3, batch_size=4, learning_rate=0.05, seed=0)
    assert stopped_before_maximum(fixed, 3) is None


def test_early_stopping_from_config_defaults_to_fixed_epochs() -> None:
    assert EarlyStopping.from_config({"epochs": 5}).fraction == 0.0
    stop = EarlyStopping.from_config({"validation_fraction": 0.2, "patience": 4, "min_delta": 0.01})
    assert (stop.fraction, stop.patience, stop.min_delta) == (0.2, 4, 0.01)


def test_epoch_sums_on_the_device_equal_python_float_sums_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    losses = torch.from_numpy((rng.random(200) * 10.0 ** rng.integers(-6, 3, 200)).astype(np.float32))
    lengths = rng.integers(1, 33, 200)
    total, python_total = epoch_sum(torch.device("cpu"), 2), 0.0
    for loss, n in zip(losses, lengths):
        total += torch.stack([loss, loss / 3]).double() * int(n)
        python_total += float(loss) * int(n)
    assert float(total[0]) == python_total  # exact: float64 sums of float32 values, same order
    float32_total = losses.mul(torch.from_numpy(lengths).float()).cumsum(0)[-1]
    assert float(float32_total) != python_total  # a float32 accumulator would not pass
