"""A VAE whose guide is a normalizing flow: inverse autoregressive flow (Kingma et al. 2016)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from .mlp import VAE

__all__ = ["FlowVAE"]


class FlowVAE(VAE):
    """The :class:`~pyro_vae.models.VAE` model with a richer guide::

        z0 ~ Normal(loc(x), scale(x))
        z  = f_K o ... o f_1 (z0),   f_k affine autoregressive (IAF direction)

    Each ``f_k`` is ``pyro.distributions.transforms.affine_autoregressive`` (a MADE network
    with ``flow_hidden_dim`` units); sampling and the density of the guide's own draws take one
    pass, so training and importance sampling stay vectorized. The flows are registered with
    ``pyro.module("flows", ...)``. ``TraceMeanField_ELBO`` has no analytic KL for this guide and
    falls back to the Monte Carlo term (so it equals ``Trace_ELBO`` here).

    Args:
        num_flows: number of autoregressive transforms.
        flow_hidden_dim: hidden units of each transform's MADE net.
        data_dim, latent_dim, hidden_dim, likelihood, beta: as for :class:`~pyro_vae.models.VAE`.
    """

    description = "VAE with an inverse-autoregressive-flow guide (pyro.distributions.transforms)"

    def __init__(self, data_dim: int, latent_dim: int = 20, hidden_dim: int = 500, num_flows: int = 2,
                 flow_hidden_dim: int | None = None, likelihood: str = "bernoulli", beta: float = 1.0):
        super().__init__(data_dim, latent_dim, hidden_dim, likelihood, beta)
        if num_flows < 1:
            raise ValueError(f"num_flows must be >= 1, got {num_flows}")
        flow_hidden = flow_hidden_dim or 2 * latent_dim
        self.flows = nn.ModuleList(
            T.affine_autoregressive(latent_dim, hidden_dims=[flow_hidden, flow_hidden]) for _ in range(num_flows)
        )

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) for ``x`` ``(batch, data_dim)``: a diagonal Normal pushed through the flows."""
        pyro.module("flows", self.flows)
        super().guide(x)

    def posterior(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
        """``Normal(loc, scale)`` (each ``(..., latent_dim)``) pushed through the flows; event shape
        ``(latent_dim,)``."""
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), list(self.flows))
