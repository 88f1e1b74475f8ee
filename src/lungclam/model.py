"""Convolutional autoencoder (CAE) for 2D slices and 3D volumes, built from config.

The architecture follows the deep convolutional embedded clustering (DCEC) network of
Guo et al. (2017) as used by Ryan et al. for CLAM: strided convolutions with leaky ReLU,
a fully connected embedding layer (linear, no activation), and a mirrored decoder.

Paper settings:

- 2D, input 64 x 64: conv 32 stride 2, conv 64 stride 1, conv 128 stride 2, kernel 4,
  embedding 60 (last conv output 128 x 16 x 16).
- 3D, input 88^3: conv 32/64/128 all stride 2, kernel 4, embedding 60 (last conv output
  128 x 11^3).

Tensors are channel-first: ``(N, C, H, W)`` in 2D and ``(N, C, D, H, W)`` in 3D, where
``(D, H, W)`` is the SimpleITK array order ``(z, y, x)`` of an LPS image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lungclam.atomic import atomic_path
from lungclam.errors import LungclamError


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a CAE: spatial input shape and layer settings.

    Attributes:
        input_shape: spatial shape, ``(H, W)`` for 2D or ``(D, H, W)`` for 3D (voxels).
        channels: filters of each encoder convolution.
        strides: stride of each encoder convolution (1 or 2).
        kernel: cubic/square kernel size of every convolution.
        latent_dim: size of the embedding (the features that get clustered).
        negative_slope: slope of the leaky ReLU for negative inputs.
        in_channels: image channels (1 for CT).
    """

    input_shape: tuple[int, ...]
    channels: tuple[int, ...] = (32, 64, 128)
    strides: tuple[int, ...] = (2, 1, 2)
    kernel: int = 4
    latent_dim: int = 60
    negative_slope: float = 0.01
    in_channels: int = 1

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.input_shape)
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if len(shape) not in (2, 3):
            raise LungclamError(f"model input_shape must have 2 or 3 sizes, got {list(shape)}")
        if len(self.channels) != len(self.strides) or not self.channels:
            raise LungclamError(
                f"model channels {list(self.channels)} and strides {list(self.strides)} "
                "must be non-empty lists of the same length"
            )
        if any(s not in (1, 2) for s in self.strides):
            raise LungclamError(f"model strides must be 1 or 2, got {list(self.strides)}")
        if min(self.conv_shapes()[-1]) < 1:
            raise LungclamError(
                f"model input {list(shape)} is too small for {len(self.strides)} convolutions "
                f"with strides {list(self.strides)}"
            )

    @property
    def ndim(self) -> int:
        """2 for slices, 3 for volumes."""
        return len(self.input_shape)

    def conv_shapes(self) -> list[tuple[int, ...]]:
        """Spatial shape before the first and after every encoder convolution."""
        shapes = [self.input_shape]
        for stride in self.strides:
            prev = shapes[-1]
            shapes.append(prev if stride == 1 else tuple(_strided_size(n, self.kernel) for n in prev))
        return shapes

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict (lists, ints, floats) for checkpoints and logs."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelSpec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _strided_size(n: int, kernel: int) -> int:
    """Output size of a stride-2 convolution with padding ``(kernel - 2) // 2``."""
    pad = (kernel - 2) // 2
    return math.floor((n + 2 * pad - kernel) / 2) + 1


def _conv_cls(ndim: int, transposed: bool = False) -> type[nn.Module]:
    if transposed:
        return nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
    return nn.Conv2d if ndim == 2 else nn.Conv3d


class _SameConv(nn.Module):
    """Stride-1 convolution that keeps the spatial size; an even kernel pads one more at the end."""

    def __init__(self, ndim: int, c_in: int, c_out: int, kernel: int):
        super().__init__()
        before = (kernel - 1) // 2
        self.pads = (before, kernel - 1 - before) * ndim
        self.conv = _conv_cls(ndim)(c_in, c_out, kernel, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, self.pads))


def _encoder_conv(spec: ModelSpec, c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1:
        return _SameConv(spec.ndim, c_in, c_out, spec.kernel)
    return _conv_cls(spec.ndim)(c_in, c_out, spec.kernel, stride=2, padding=(spec.kernel - 2) // 2)


class _UpConv(nn.Module):
    """Decoder step mirroring one encoder convolution, producing an exact output size."""

    def __init__(self, spec: ModelSpec, c_in: int, c_out: int, stride: int, out_shape: tuple[int, ...]):
        super().__init__()
        self.out_shape = out_shape
        self.stride = stride
        if stride == 1:
            self.conv = _SameConv(spec.ndim, c_in, c_out, spec.kernel)
        else:
            self.conv = _conv_cls(spec.ndim, transposed=True)(
                c_in, c_out, spec.kernel, stride=2, padding=(spec.kernel - 2) // 2
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return self.conv(x)
        # output_size picks the output padding that restores odd sizes exactly.
        return self.conv(x, output_size=list(self.out_shape))


class ConvAutoencoder(nn.Module):
    """CAE with ``encode_maps`` (last conv activations, used by CLAM), ``embed`` and ``decode``."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        shapes = spec.conv_shapes()
        widths = (spec.in_channels, *spec.channels)

        # One activation module per layer, so hooks on a layer's output see only that layer.
        def act() -> nn.Module:
            return nn.LeakyReLU(spec.negative_slope)

        layers: list[nn.Module] = []
        for c_in, c_out, stride in zip(widths[:-1], widths[1:], spec.strides):
            layers += [_encoder_conv(spec, c_in, c_out, stride), act()]
        self.encoder_convs = nn.Sequential(*layers)
        self.map_shape = (spec.channels[-1], *shapes[-1])
        flat = math.prod(self.map_shape)
        self.embedding = nn.Linear(flat, spec.latent_dim)
        self.unembedding = nn.Linear(spec.latent_dim, flat)
        up: list[nn.Module] = []
        for i in reversed(range(len(spec.channels))):
            up.append(_UpConv(spec, widths[i + 1], widths[i], spec.strides[i], shapes[i]))
            if i > 0:
                up.append(act())
        self.decoder_convs = nn.Sequential(*up)
        self.act = act()

    def encode_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of the last encoder convolution, ``(N, H, *map spatial)``."""
        return self.encoder_convs(x)

    def embed(self, maps: torch.Tensor) -> torch.Tensor:
        """Embedding ``(N, latent_dim)`` from last-conv activations."""
        return self.embedding(maps.flatten(1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding ``(N, latent_dim)`` of images ``(N, C, *input_shape)``."""
        return self.embed(self.encode_maps(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(N, C, *input_shape)`` from embeddings (linear output)."""
        h = self.act(self.unembedding(z)).view(z.shape[0], *self.map_shape)
        return self.decoder_convs(h)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z, self.decode(z)


@dataclass
class Checkpoint:
    """What ``save_checkpoint`` stores: spec, weights, optional centroids and metadata."""

    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    centroids: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | Path, model: ConvAutoencoder, centroids: torch.Tensor | None = None, meta: dict[str, Any] | None = None
) -> None:
    """Write weights and spec (plain types only, so ``weights_only=True`` can load them).

    The same model gives the same bytes: torch names the archive's top folder after a
    file *name*, which here would be the atomic write's random temporary name, so torch is
    handed an open file instead (its folder is then always ``archive``)."""
    payload = {
        "spec": model.spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "centroids": None if centroids is None else centroids.detach().cpu(),
        "meta": dict(meta or {}),
    }
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code from pickles)."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        raise LungclamError(f"cannot read model checkpoint {path}: {exc}") from exc
    return Checkpoint(
        spec=ModelSpec.from_dict(payload["spec"]),
        state_dict=payload["state_dict"],
        centroids=payload.get("centroids"),
        meta=payload.get("meta", {}),
    )


def build_autoencoder(checkpoint: Checkpoint) -> ConvAutoencoder:
    """A CAE with the checkpoint's weights loaded."""
    model = ConvAutoencoder(checkpoint.spec)
    model.load_state_dict(checkpoint.state_dict)
    return model


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` gives CUDA when a GPU is visible, else the CPU; other names pass through."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LungclamError(f"device {name!r} requested but no CUDA GPU is available (use 'auto' or 'cpu')")
    return device


def spec_from_config(model_config: dict[str, Any], input_shape: tuple[int, ...]) -> ModelSpec:
    """A :class:`ModelSpec` from the config's ``model`` section and the data's spatial shape."""
    return ModelSpec(
        input_shape=tuple(input_shape),
        channels=tuple(model_config["channels"]),
        strides=tuple(model_config["strides"]),
        kernel=int(model_config["kernel"]),
        latent_dim=int(model_config["latent_dim"]),
        negative_slope=float(model_config["negative_slope"]),
    )
