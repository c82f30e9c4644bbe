"""The Kingma & Welling (2013) MLP VAE as a Pyro model/guide pair."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch

from ..nets import MLPDecoder, MLPEncoder
from .base import PairModule

__all__ = ["VAE"]


class VAE(PairModule):
    """Auto-Encoding Variational Bayes with one tanh hidden layer in encoder and decoder.

    Generative model (``model``)::

        z_n ~ Normal(0, I)                        latent_dim
        x_n ~ likelihood(decoder(z_n))            data_dim, e.g. Bernoulli for binary pixels

    Inference network (``guide``)::

        z_n ~ Normal(loc(x_n), scale(x_n))        diagonal, from the encoder

    Both take ``x`` of shape ``(batch, data_dim)`` and declare ``pyro.plate("data", batch)``
    over it; the latent site is ``"z"`` and the observed site ``"x"``. The nets are registered
    with ``pyro.module`` under the names ``"decoder"`` (model) and ``"encoder"`` (guide), so any
    Pyro ELBO trains the pair, with or without :func:`pyro_vae.train`.

    Subclasses change the nets (:class:`~pyro_vae.models.ConvVAE`), the inputs of the nets
    (:class:`~pyro_vae.models.ConditionalVAE`) or the guide's distribution
    (:class:`~pyro_vae.models.FlowVAE`) through :meth:`posterior`, ``_model`` and ``_guide``.

    Args:
        data_dim: number of pixels ``D`` of one flattened datapoint.
        latent_dim: dimension of ``z`` (the paper's ``N_z``).
        hidden_dim: hidden units (500 for MNIST, 200 for Frey Face in the paper).
        likelihood: name of the observation model (see :mod:`pyro_vae.likelihoods`).
        beta: KL weight (beta-VAE), applied to ``z`` in both model and guide.
    """

    description = "Kingma & Welling (2013) MLP: one tanh hidden layer each way, diagonal Normal guide"

    def __init__(self, data_dim: int, latent_dim: int = 20, hidden_dim: int = 500,
                 likelihood: str = "bernoulli", beta: float = 1.0):
        super().__init__(data_dim, latent_dim, likelihood, beta)
        self.encoder = MLPEncoder(data_dim, hidden_dim, latent_dim)
        self.decoder = MLPDecoder(latent_dim, hidden_dim, data_dim * self.likelihood.params_per_pixel)

    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x | z) for a batch ``x`` of shape ``(batch, data_dim)``."""
        self._model(x, self.decoder)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) for a batch ``x`` of shape ``(batch, data_dim)``."""
        self._guide(x, lambda: self.encoder(x))

    def posterior(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
        """The guide's distribution of ``z`` given the encoder's outputs (diagonal Normal here)."""
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
