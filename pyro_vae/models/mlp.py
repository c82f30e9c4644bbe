"""The Kingma & Welling (2013) MLP VAE as a Pyro model/guide pair."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..likelihoods import get_likelihood
from ..nets import MLPDecoder, MLPEncoder

__all__ = ["VAE"]


class VAE(nn.Module):
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

    Args:
        data_dim: number of pixels ``D`` of one flattened datapoint.
        latent_dim: dimension of ``z`` (the paper's ``N_z``).
        hidden_dim: hidden units (500 for MNIST, 200 for Frey Face in the paper).
        likelihood: name of the observation model (see :mod:`pyro_vae.likelihoods`).
    """

    def __init__(self, data_dim: int, latent_dim: int = 20, hidden_dim: int = 500,
                 likelihood: str = "bernoulli"):
        super().__init__()
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.likelihood = get_likelihood(likelihood)
        self.encoder = MLPEncoder(data_dim, hidden_dim, latent_dim)
        self.decoder = MLPDecoder(latent_dim, hidden_dim, data_dim * self.likelihood.params_per_pixel)

    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x | z) for a batch ``x`` of shape ``(batch, data_dim)``."""
        pyro.module("decoder", self.decoder)
        loc = x.new_zeros(self.latent_dim)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(loc, 1.0).expand([self.latent_dim]).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) for a batch ``x`` of shape ``(batch, data_dim)``."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
