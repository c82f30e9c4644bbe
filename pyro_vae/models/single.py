"""The shared half of every pair with one latent site ``z``: the model and guide around an
encoder and a decoder that its subclasses build."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch

from .base import PairModule

__all__ = ["SingleLatentVAE"]


class SingleLatentVAE(PairModule):
    """``p(z) p(x | z)`` and ``q(z | x)`` with one latent site ``"z"``, whatever the nets.

    Generative model (``model``)::

        z_n ~ Normal(0, I)                        latent_dim
        x_n ~ likelihood(decoder(z_n))            data_dim, e.g. Bernoulli for binary pixels

    Inference network (``guide``)::

        z_n ~ posterior(*encoder(x_n))            a diagonal Normal unless posterior() says otherwise

    Both take ``x`` of shape ``(batch, data_dim)`` and declare ``pyro.plate("data", batch)``
    over it; the latent site is ``"z"`` and the observed site ``"x"``. The nets are registered
    with ``pyro.module`` under the names ``"decoder"`` (model) and ``"encoder"`` (guide).

    This class holds no nets: a subclass calls ``super().__init__(data_dim, latent_dim,
    likelihood, beta)`` and then sets ``self.encoder`` (``x (..., data_dim) -> (loc, scale)``,
    each ``(..., latent_dim)``) and ``self.decoder`` (``z (..., latent_dim) -> (..., data_dim *
    params_per_pixel)`` raw likelihood parameters). It changes the inputs of the nets through
    ``_model``/``_guide`` (:class:`~pyro_vae.models.ConditionalVAE`) or the guide's distribution
    through :meth:`posterior` (:class:`~pyro_vae.models.FlowVAE`).

    Args:
        data_dim, latent_dim, likelihood, beta: as for :class:`~pyro_vae.models.PairModule`.
    """

    encoder: torch.nn.Module
    decoder: torch.nn.Module

    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x | z) for a batch ``x`` of shape ``(batch, data_dim)``."""
        self._model(x, self.decoder)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) for a batch ``x`` of shape ``(batch, data_dim)``."""
        self._guide(x, lambda: self.encoder(x))

    def posterior(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
        """The guide's distribution of ``z`` given the encoder's outputs ``loc`` and ``scale``,
        each ``(..., latent_dim)``: a diagonal Normal with event shape ``(latent_dim,)`` here."""
        return dist.Normal(loc, scale).to_event(1)

    def _model(self, x: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            with self.latent_scale():
                z = pyro.sample("z", self.standard_normal(x, self.latent_dim))
            pyro.sample("x", self.likelihood(decode(z)), obs=x)

    def _guide(self, x: torch.Tensor, encode: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encode()
            with self.latent_scale():
                pyro.sample("z", self.posterior(loc, scale))
