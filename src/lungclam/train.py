"""CAE pretraining on reconstruction error, the held-out split that stops it, and embeddings.

Images are ``float32`` arrays, channel-first ``(N, 1, *spatial)``, in ``[0, 1]``
(:func:`lungclam.intensity.normalize_hu`; :func:`lungclam.imageio.load_volumes` reads them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lungclam.augment import Augmentation
from lungclam.device import autocast, batched_inference, batches, epoch_sum, keep_on_device
from lungclam.model import ConvAutoencoder

Progress = Callable[[str], None]


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into (training, held-out) index arrays, both sorted.

    The held-out share is ``round(fraction * n)`` but at least 1 when ``fraction > 0``;
    with ``fraction == 0``, or too few images to spare one (fewer than 4), nothing is held out.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must lie in [0, 1), got {fraction}")
    size = max(1, int(round(fraction * n))) if fraction > 0 else 0
    if size == 0 or n - size < 3:
        return np.arange(n), np.arange(0)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[size:]), np.sort(order[:size])


@dataclass
class EarlyStopping:
    """Stop pretraining when the held-out reconstruction error stops improving.

    fraction: share of the images held out (seeded, :func:`validation_split`); 0 trains on
    all for the full epoch count. patience: epochs without an improvement of more than
    ``min_delta`` (relative) before stopping; the weights of the best held-out epoch are
    restored. An autoencoder that keeps lowering its training error while the held-out
    error rises is memorising its images (noise included), and its embedding then stops
    carrying what the images share (README, "Pretraining that stops by itself").
    """

    fraction: float = 0.0
    patience: int = 10
    min_delta: float = 0.0

    @classmethod
    def from_config(cls, train: dict[str, Any]) -> "EarlyStopping":
        """From the config's ``train`` section (keys ``validation_fraction``, ``patience``,
        ``min_delta``; absent keys keep the defaults, i.e. no early stopping)."""
        default = cls()
        return cls(
            fraction=float(train.get("validation_fraction", default.fraction)),
            patience=int(train.get("patience", default.patience)),
            min_delta=float(train.get("min_delta", default.min_delta)),
        )


def kept_epoch(history: pd.DataFrame) -> int:
    """The epoch whose weights :func:`pretrain` kept (its ``best`` row)."""
    return int(history.loc[history["best"].astype(bool), "epoch"].iloc[0])


def stopped_before_maximum(history: pd.DataFrame, patience: int) -> bool | None:
    """Whether pretraining reached a plateau: its best held-out epoch lies at least
    ``patience`` epochs before the last epoch run, so the stopping rule acted (or would
    have). False when the held-out error was still improving when the epoch maximum ended
    training: the embedding may be underfit, and the clusters found on it may change with
    more epochs or another seed. None without a held-out share (nothing to judge by).
    ``history``: :func:`pretrain`'s table (``pretrain_loss.tsv``).
    """
    if "val_loss" not in history or not history["val_loss"].notna().any():
        return None
    return int(history["epoch"].iloc[-1]) - kept_epoch(history) >= patience


@torch.inference_mode()
def reconstruction_error(
    model: ConvAutoencoder, data: torch.Tensor, batch_size: int, device: torch.device, mixed_precision: bool = False
) -> float:
    """Mean squared reconstruction error of ``data`` (N, 1, *spatial) in eval mode."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for x in data.split(batch_size):
        x = x.to(device, non_blocking=True)
        with autocast(device, mixed_precision):
            _, recon = model(x)
        total += ((recon.float() - x) ** 2).mean(dim=tuple(range(1, x.ndim))).double().sum()
    model.train()
    return float(total) / len(data)


def pretrain(
    model: ConvAutoencoder,
    images: np.ndarray,
    epochs: int,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: torch.device | None = None,
    mixed_precision: bool = False,
    progress: Progress | None = None,
    stopping: EarlyStopping | None = None,
    augmentation: Augmentation | None = None,
) -> pd.DataFrame:
    """Train the CAE on reconstruction MSE with Adam for at most ``epochs`` epochs.

    ``images`` is ``(N, 1, *spatial)`` float32. Batches are shuffled with a generator seeded
    from ``seed``, so a run is repeatable on the CPU. With ``stopping`` holding out a share
    of the images, training uses the rest, stops after ``stopping.patience`` epochs without
    a better held-out error, and leaves ``model`` with the weights of the best epoch.
    ``augmentation`` changes each training batch (never the held-out images) with draws
    from its own generator, seeded from ``seed``, so the batch order is the same with or
    without it.

    Returns one row per epoch run: ``epoch, loss`` (training MSE), ``val_loss`` (held-out
    MSE, NaN without a held-out share), ``best`` (True on the epoch whose weights are kept)
    and ``seconds``.
    """
    device = device or torch.device("cpu")
    stopping = stopping or EarlyStopping()
    model.to(device).train()
    train_idx, val_idx = validation_split(len(images), stopping.fraction, seed)
    data = keep_on_device(torch.from_numpy(np.ascontiguousarray(images[train_idx])), device)
    held_out = keep_on_device(torch.from_numpy(np.ascontiguousarray(images[val_idx])), device) if len(val_idx) else None
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator().manual_seed(seed + 7919)
    loss_fn = nn.MSELoss()
    rows, best_loss, best_epoch, best_state = [], float("inf"), 0, None
    for epoch in range(1, epochs + 1):
        start, total = time.perf_counter(), epoch_sum(device)
        for idx in batches(len(data), batch_size, generator, data.device):
            x = data[idx].to(device, non_blocking=True)
            if augmentation is not None:
                x = augmentation(x, augment_generator)
            with autocast(device, mixed_precision):
                _, recon = model(x)
                loss = loss_fn(recon.float(), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * len(idx)
        val = float("nan")
        if held_out is not None:
            val = reconstruction_error(model, held_out, batch_size, device, mixed_precision)
            if val < best_loss * (1.0 - stopping.min_delta):
                best_loss, best_epoch = val, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rows.append(
            {
                "epoch": epoch,
                "loss": float(total[0]) / len(data),
                "val_loss": val,
                "seconds": time.perf_counter() - start,
            }
        )
        if progress:
            held = f", held-out {val:.5f}" if held_out is not None else ""
            progress(
                f"pretrain epoch {epoch}/{epochs}: reconstruction MSE {rows[-1]['loss']:.5f}{held} "
                f"({rows[-1]['seconds']:.1f} s)"
            )
        if held_out is not None and epoch - best_epoch >= stopping.patience:
            if progress:
                progress(
                    f"stopping: held-out MSE has not improved for {stopping.patience} epochs; "
                    f"keeping epoch {best_epoch} ({best_loss:.5f})"
                )
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    history = pd.DataFrame(rows)
    history.insert(3, "best", history["epoch"] == (best_epoch if best_state is not None else len(rows)))
    return history


def embed_images(
    model: ConvAutoencoder, images: np.ndarray, batch_size: int = 16, device: torch.device | None = None
) -> np.ndarray:
    """Embeddings ``(N, latent_dim)`` float64 of ``(N, 1, *spatial)`` images, in eval mode."""
    return batched_inference(model, model.encode, images, batch_size, device)


def features_table(subjects: Sequence[str], features: np.ndarray) -> pd.DataFrame:
    """``subject, f1..fJ`` table of embeddings."""
    table = pd.DataFrame(features, columns=[f"f{j + 1}" for j in range(features.shape[1])])
    table.insert(0, "subject", list(subjects))
    return table
