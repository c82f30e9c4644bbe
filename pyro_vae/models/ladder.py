"""The Ladder VAE of Sønderby et al. (2016): top-down inference by precision weighting."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .base import PairModule

__all__ = ["LadderVAE", "precision_weighted"]

MIN_SCALE = 1e-4
"""Floor of every standard deviation (softplus outputs), so that precisions stay finite."""


def precision_weighted(loc_q: torch.Tensor, scale_q: torch.Tensor, loc_p: torch.Tensor,
                       scale_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The normal proportional to ``Normal(loc_q, scale_q) * Normal(loc_p, scale_p)``:
    ``(loc, scale)`` with precision ``scale**-2 = scale_q**-2 + scale_p**-2`` and ``loc`` the
    precision-weighted mean (Sønderby et al. 2016, eq. 18-19). All tensors broadcast; any shape."""
    precision_q, precision_p = scale_q.pow(-2), scale_p.pow(-2)
    precision = precision_q + precision_p
    return (loc_q * precision_q + loc_p * precision_p) / precision, precision.rsqrt()


class _Block(nn.Module):
    """``(..., in_dim) -> (h, loc, scale)``: two leaky-ReLU layers of ``width`` units ``h``, then
    the mean and softplus standard deviation of a ``latent_dim`` normal."""

    def __init__(self, in_dim: int, width: int, latent_dim: int):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_dim, width), nn.LeakyReLU(), nn.Linear(width, width), nn.LeakyReLU())
        self.loc = nn.Linear(width, latent_dim)
        self.scale = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.hidden(x)
        return h, self.loc(h), F.softplus(self.scale(h)) + MIN_SCALE


class LadderVAE(PairModule):
    """``L`` stochastic layers, generated and inferred top-down (the Ladder VAE).

    Generative model (the same as a hierarchical VAE's)::

        zL ~ Normal(0, I),   z_l ~ Normal(mu_p(z_{l+1}), sigma_p(z_{l+1}))   l = L-1 .. 1,
        x ~ likelihood(decoder(z1))

    Guide: a deterministic bottom-up pass ``d_l = f_l(d_{l-1})`` (``d_0 = x``) gives at each
    layer an approximate likelihood ``Normal(mu_hat_l, sigma_hat_l)``; then top-down,
    ``q(zL | x) = Normal(mu_hat_L, sigma_hat_L)`` and ``q(z_l | z_{l+1}, x)`` is the normal
    proportional to ``Normal(mu_hat_l, sigma_hat_l) * p(z_l | z_{l+1})`` (:func:`precision_weighted`),
    with the model's own top-down nets: the guide shares them (``pyro.module("top_down", ...)``
    in both), so the prior's parameters get gradients from both terms of the ELBO.

    Sizes follow the paper's MNIST model with the defaults: deterministic widths halve upwards
    from ``hidden_dim`` (512-256-128-64-32) and latent sizes double downwards from ``latent_dim``
    at the top (64-32-16-8-4); each block is two leaky-ReLU layers. Sites ``"z1" .. "zL"``
    (``"z1"`` next to the data) and ``"x"``. KL warm-up is the trainer's
    (:class:`~pyro_vae.training.KLSchedule`, ``--kl-warmup-steps``).

    Not built: the paper's batch normalization. Its running statistics are module buffers, which
    neither Pyro's param store (so our checkpoints) nor the compiled step hold, and in training
    mode it couples the datapoints of a minibatch, which the per-datapoint estimators assume
    independent.

    Args:
        data_dim: number of pixels ``D``.
        latent_dim: size of the top layer ``zL``; layer ``l`` has ``latent_dim * 2**(L - l)``.
        hidden_dim: width of the block next to the data; block ``l`` has ``hidden_dim // 2**(l-1)``
            (at least 8).
        stochastic_layers: ``L`` (at least 1; 1 is a plain VAE with a leaky-ReLU encoder).
        likelihood, beta: as for :class:`~pyro_vae.models.VAE`.
    """

    description = "Sønderby et al. (2016) Ladder VAE: 5 layers 64-32-16-8-4, top-down inference"

    def __init__(self, data_dim: int, latent_dim: int = 4, hidden_dim: int = 512, stochastic_layers: int = 5,
                 likelihood: str = "bernoulli", beta: float = 1.0):
        super().__init__(data_dim, latent_dim, likelihood, beta)
        if stochastic_layers < 1:
            raise ValueError(f"stochastic_layers must be >= 1, got {stochastic_layers}")
        layers = range(stochastic_layers)
        self.latent_dims = [latent_dim * 2 ** (stochastic_layers - 1 - i) for i in layers]
        self.widths = [max(hidden_dim // 2 ** i, 8) for i in layers]
        self.sites = [f"z{i + 1}" for i in layers]
        ins = [data_dim] + self.widths[:-1]
        self.encoder = nn.ModuleList(_Block(n_in, w, n) for n_in, w, n in zip(ins, self.widths, self.latent_dims))
        self.top_down = nn.ModuleList(_Block(self.latent_dims[i + 1], self.widths[i], self.latent_dims[i])
                                      for i in layers[:-1])
        out = data_dim * self.likelihood.params_per_pixel
        self.decoder = nn.Sequential(nn.Linear(self.latent_dims[0], self.widths[0]), nn.LeakyReLU(),
                                     nn.Linear(self.widths[0], self.widths[0]), nn.LeakyReLU(),
                                     nn.Linear(self.widths[0], out))

    def model(self, x: torch.Tensor) -> None:
        """``p(zL) prod_l p(z_l | z_{l+1}) p(x | z1)`` for ``x`` of shape ``(batch, data_dim)``."""
        pyro.module("top_down", self.top_down)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            with self.latent_scale():
                z = pyro.sample(self.sites[-1], self.standard_normal(x, self.latent_dims[-1]))
                for layer in reversed(range(len(self.sites) - 1)):
                    _, loc, scale = self.top_down[layer](z)
                    z = pyro.sample(self.sites[layer], dist.Normal(loc, scale).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """Bottom-up pass, then ``q(zL | x) prod_l q(z_l | z_{l+1}, x)`` top-down."""
        pyro.module("encoder", self.encoder)
        pyro.module("top_down", self.top_down)
        likelihoods, h = [], x
        for block in self.encoder:
            h, loc, scale = block(h)
            likelihoods.append((loc, scale))
        with pyro.plate("data", x.shape[0]), self.latent_scale():
            loc, scale = likelihoods[-1]
            z = pyro.sample(self.sites[-1], dist.Normal(loc, scale).to_event(1))
            for layer in reversed(range(len(self.sites) - 1)):
                _, loc_p, scale_p = self.top_down[layer](z)
                loc, scale = precision_weighted(*likelihoods[layer], loc_p, scale_p)
                z = pyro.sample(self.sites[layer], dist.Normal(loc, scale).to_event(1))
