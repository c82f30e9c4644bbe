"""Plain PyTorch building blocks for encoders and decoders (no Pyro here).

Every net maps a tensor with any leading batch dimensions ``(...)`` (data points, and particles
when the estimators vectorize them) to outputs with the same leading dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "mlp", "one_hot"]


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """``sizes[0] -> sizes[1] -> ... -> sizes[-1]``, a tanh after every linear layer: maps
    ``(..., sizes[0])`` to ``(..., sizes[-1])``."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.Tanh()]
    return nn.Sequential(*layers)


def one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype, name: str = "labels") -> torch.Tensor:
    """``(..., num_classes)`` one-hot codes, of ``dtype``, of the integer class indices ``labels``
    ``(...)``. Raises ``ValueError`` (naming them ``name``) on an index outside ``[0, num_classes)``:
    here in eager, and in a recorded step by its index guard (:mod:`pyro_vae.recorded`)."""
    try:
        return nn.functional.one_hot(labels, num_classes).to(dtype)
    except RuntimeError as error:
        raise ValueError(f"{name} must be integers in [0, {num_classes}): {error}") from None


def _widths(hidden_dim: int | Sequence[int]) -> list[int]:
    return [hidden_dim] if isinstance(hidden_dim, int) else list(hidden_dim)


class MLPEncoder(nn.Module):
    """``x (..., in_dim) -> (loc, scale)`` of a diagonal Normal, each ``(..., latent_dim)``.

    Tanh hidden layers (one of ``hidden_dim`` units, or one per entry of a sequence), as in
    Kingma & Welling (2013, appendix C.2) and Burda et al. (2015): the net outputs the mean and
    ``log sigma^2``; ``scale = exp(log sigma^2 / 2)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int | Sequence[int], latent_dim: int):
        super().__init__()
        widths = _widths(hidden_dim)
        self.hidden = mlp([in_dim, *widths])
        self.loc = nn.Linear(widths[-1], latent_dim)
        self.log_var = nn.Linear(widths[-1], latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)``, each ``(..., latent_dim)``, for ``x`` ``(..., in_dim)``."""
        h = self.hidden(x)
        return self.loc(h), torch.exp(0.5 * self.log_var(h))


class MLPDecoder(nn.Module):
    """``z (..., latent_dim) -> (..., out_dim)`` raw likelihood parameters; tanh hidden layers."""

    def __init__(self, latent_dim: int, hidden_dim: int | Sequence[int], out_dim: int):
        super().__init__()
        widths = _widths(hidden_dim)
        self.hidden = mlp([latent_dim, *widths])
        self.out = nn.Linear(widths[-1], out_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Raw likelihood parameters ``(..., out_dim)`` for ``z`` ``(..., latent_dim)``."""
        return self.out(self.hidden(z))


def _check_image_shape(image_shape) -> tuple[int, int]:
    if image_shape is None or len(image_shape) != 2:
        raise ValueError(f"convolutional nets need image_shape=(height, width), got {image_shape}")
    height, width = image_shape
    if height % 4 or width % 4:
        raise ValueError(f"convolutional nets need height and width divisible by 4, got {image_shape}")
    return height, width


class ConvEncoder(nn.Module):
    """``x (..., H*W) -> (loc, scale)``: two 4x4 stride-2 convolutions (32 and 64 channels, ReLU),
    then a tanh hidden layer of ``hidden_dim`` units and the Gaussian head of :class:`MLPEncoder`.

    ``H`` and ``W`` must be divisible by 4 (28 x 28 MNIST, 28 x 20 Frey Face).
    """

    def __init__(self, image_shape: tuple[int, int], hidden_dim: int, latent_dim: int):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        height, width = self.image_shape
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.head = MLPEncoder(64 * (height // 4) * (width // 4), hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)``, each ``(..., latent_dim)``, for images ``x`` ``(..., H * W)``."""
        batch = x.shape[:-1]
        h = self.conv(x.reshape(-1, 1, *self.image_shape))
        loc, scale = self.head(h)
        return loc.reshape(*batch, -1), scale.reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """``z (..., latent_dim) -> (..., channels * H * W)``: a tanh hidden layer, a dense layer to
    64 feature maps of ``H/4 x W/4``, two 4x4 stride-2 transposed convolutions (32 channels,
    ReLU, then ``channels``). Channel ``c`` of the output fills positions ``c*H*W .. (c+1)*H*W``,
    the layout the likelihoods expect (e.g. Gaussian means, then scales).
    """

    def __init__(self, latent_dim: int, hidden_dim: int, image_shape: tuple[int, int], channels: int = 1):
        super().__init__()
        self.image_shape = _check_image_shape(image_shape)
        height, width = self.image_shape
        self.feature_shape = (64, height // 4, width // 4)
        self.dense = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.Tanh(),
            nn.Linear(hidden_dim, 64 * (height // 4) * (width // 4)), nn.ReLU(),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Raw likelihood parameters ``(..., channels * H * W)`` for ``z`` ``(..., latent_dim)``."""
        batch = z.shape[:-1]
        h = self.dense(z).reshape(-1, *self.feature_shape)
        return self.deconv(h).reshape(*batch, -1)
