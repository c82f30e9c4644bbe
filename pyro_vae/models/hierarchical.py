"""The VAE with several stochastic layers of Burda et al. (2015)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..nets import MLPDecoder, MLPEncoder
from .base import PairModule

__all__ = ["HierarchicalVAE"]


class HierarchicalVAE(PairModule):
    """Stochastic layers ``z1 .. zL`` with two tanh hidden layers between consecutive layers.

    Generative model::

        zL ~ Normal(0, I)
        z_l ~ Normal(mu_l(z_{l+1}), sigma_l(z_{l+1}))      l = L-1 .. 1
        x ~ likelihood(decoder(z1))

    Guide::

        z1 ~ Normal(mu(x), sigma(x)),   z_l ~ Normal(mu(z_{l-1}), sigma(z_{l-1}))

    With the defaults this is Burda et al.'s architecture: ``stochastic_layers=1`` gives
    784-200-200-50 and ``stochastic_layers=2`` gives 784-200-200-100-100-100-50 (lower layers have
    ``2 * latent_dim`` units, and so do the hidden layers between stochastic layers). Sites are
    ``"z1" .. "zL"`` and ``"x"``; the nets are registered as ``"decoder"`` and ``"encoder"``.

    Args:
        data_dim: number of pixels ``D``.
        latent_dim: dimension of the top layer ``zL`` (50 in the paper).
        hidden_dim: width of the two hidden layers next to the data (200 in the paper).
        stochastic_layers: ``L``.
        likelihood, beta: as for :class:`~pyro_vae.models.VAE`.
    """

    description = "Burda et al. (2015) stochastic layers: 784-200-200-100-100-100-50, tanh"

    def __init__(self, data_dim: int, latent_dim: int = 50, hidden_dim: int = 200, stochastic_layers: int = 2,
                 likelihood: str = "bernoulli", beta: float = 1.0):
        super().__init__(data_dim, latent_dim, likelihood, beta)
        if stochastic_layers < 1:
            raise ValueError(f"stochastic_layers must be >= 1, got {stochastic_layers}")
        self.latent_dims = [2 * latent_dim] * (stochastic_layers - 1) + [latent_dim]
        widths = [hidden_dim] + [2 * latent_dim] * (stochastic_layers - 1)
        self.sites = [f"z{layer + 1}" for layer in range(stochastic_layers)]
        ins = [data_dim] + self.latent_dims[:-1]
        self.encoder = nn.ModuleList(
            MLPEncoder(n_in, [w, w], n_out) for n_in, w, n_out in zip(ins, widths, self.latent_dims)
        )
        self.decoder = nn.ModuleList(
            MLPEncoder(self.latent_dims[layer + 1], [widths[layer + 1]] * 2, self.latent_dims[layer])
            for layer in range(stochastic_layers - 1)
        )
        self.decoder.append(MLPDecoder(self.latent_dims[0], [hidden_dim, hidden_dim],
                                       data_dim * self.likelihood.params_per_pixel))

    def model(self, x: torch.Tensor) -> None:
        """p(zL) prod_l p(z_l | z_{l+1}) p(x | z1) for ``x`` of shape ``(batch, data_dim)``."""
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            with self.latent_scale():
                z = pyro.sample(self.sites[-1], self.standard_normal(x, self.latent_dims[-1]))
                for layer in reversed(range(len(self.sites) - 1)):
                    loc, scale = self.decoder[layer](z)
                    z = pyro.sample(self.sites[layer], dist.Normal(loc, scale).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder[-1](z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z1 | x) prod_l q(z_l | z_{l-1})."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            h = x
            for site, encoder in zip(self.sites, self.encoder):
                loc, scale = encoder(h)
                with self.latent_scale():
                    h = pyro.sample(site, dist.Normal(loc, scale).to_event(1))
