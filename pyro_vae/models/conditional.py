"""A conditional VAE: class labels as an extra argument of model and guide (Sohn et al. 2015)."""

from __future__ import annotations

import torch

from ..nets import MLPDecoder, MLPEncoder, one_hot
from .single import SingleLatentVAE

__all__ = ["ConditionalVAE"]


class ConditionalVAE(SingleLatentVAE):
    """``p(z) p(x | z, y)`` and ``q(z | x, y)`` with one-hot labels ``y`` fed to both nets (the
    model and guide of :class:`~pyro_vae.models.SingleLatentVAE` around MLP nets).

    Called as ``model(x, y)`` / ``guide(x, y)`` with ``x`` ``(batch, data_dim)`` and ``y``
    ``(batch,)`` integer labels in ``[0, num_classes)``. Sites and module names are those of
    :class:`~pyro_vae.models.VAE`; log-likelihoods are ``log p(x | y)``.

    Args:
        num_classes: number of label values (10 for MNIST and Fashion-MNIST).
        data_dim, latent_dim, hidden_dim, likelihood, beta: as for :class:`~pyro_vae.models.VAE`.
    """

    description = "conditional VAE: labels y as an extra argument, p(x | z, y) and q(z | x, y)"
    needs_labels = True

    def __init__(self, data_dim: int, latent_dim: int = 20, hidden_dim: int = 500, num_classes: int = 10,
                 likelihood: str = "bernoulli", beta: float = 1.0):
        super().__init__(data_dim, latent_dim, likelihood, beta)
        self.num_classes = num_classes
        self.encoder = MLPEncoder(data_dim + num_classes, hidden_dim, latent_dim)
        self.decoder = MLPDecoder(latent_dim + num_classes, hidden_dim,
                                  data_dim * self.likelihood.params_per_pixel)

    def _one_hot(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("the conditional VAE needs labels: call model(x, y) and guide(x, y) "
                             "(train(..., labels=True) with a data set that has labels)")
        if y.shape != x.shape[:1]:
            raise ValueError(f"labels y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
        if y.dtype.is_floating_point:
            raise ValueError(f"labels y must be integers in [0, {self.num_classes}), got {y.dtype}")
        return one_hot(y, self.num_classes, x.dtype, name="labels y")

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """p(z) p(x | z, y) for ``x`` ``(batch, data_dim)`` and integer labels ``y`` ``(batch,)``."""
        c = self._one_hot(x, y)
        self._model(x, lambda z: self.decoder(torch.cat([z, c.expand(*z.shape[:-1], c.shape[-1])], -1)))

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """q(z | x, y) for ``x`` ``(batch, data_dim)`` and integer labels ``y`` ``(batch,)``."""
        c = self._one_hot(x, y)
        self._guide(x, lambda: self.encoder(torch.cat([x, c], -1)))
