r"""The ELBO with free bits (Kingma et al. 2016): a KL floor per latent dimension that keeps
dimensions from collapsing to the prior.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from ..importance import sample_sites
from .base import LossFromDifferentiableLoss

__all__ = ["FreeBitsELBO"]


def _kl_terms(guide_site, model_site) -> torch.Tensor:
    """KL(q || p) per latent dimension ``(batch, d)`` where both are diagonal and analytic, else
    the one-sample estimate per site ``(batch, 1)``, in nats."""
    q, p = guide_site["fn"], model_site["fn"]
    if isinstance(q, dist.Independent) and isinstance(p, dist.Independent) and \
            q.reinterpreted_batch_ndims == p.reinterpreted_batch_ndims == 1:
        try:
            return kl_divergence(q.base_dist, p.base_dist)
        except NotImplementedError:
            pass
    value = guide_site["value"]
    return (q.log_prob(value) - p.log_prob(value)).unsqueeze(-1)


class FreeBitsELBO(LossFromDifferentiableLoss):
    r"""The ELBO with free bits (Kingma et al. 2016, eq. 15), per latent dimension.

    .. math::
        \tilde{\mathcal{L}} = \sum_n \mathbb{E}_q[\log p(x_n \mid z)]
            - B \sum_j \max\big(\lambda, \tfrac{1}{B} \sum_n \mathrm{KL}_j(x_n)\big)

    over a batch of ``B`` datapoints, with the analytic KL of each dimension ``j`` of a diagonal
    Normal latent (a one-sample estimate over the whole site otherwise, with threshold
    ``lambda`` times the site's dimension). Dimensions whose batch-averaged KL is below
    ``lambda`` nats get no gradient towards the prior, which prevents them from collapsing. The
    number it returns is an objective, not a bound; evaluate trained pairs with
    :func:`pyro_vae.evaluate_elbo` or :func:`pyro_vae.estimate_log_likelihood`. Units: nats,
    summed over the batch.

    Args:
        free_bits: ``lambda`` in nats per latent dimension (>= 0; 0 gives the mean-field ELBO).
        num_particles: samples averaged per step (drawn one after the other).
        max_plate_nesting: the pair's plate depth (unused by the estimator itself).
    """

    def __init__(self, free_bits: float, num_particles: int = 1, max_plate_nesting: float = float("inf")):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        if not free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0 nats, got {free_bits}")
        self.free_bits = float(free_bits)

    def _latent_loss(self, guide_site, model_site) -> torch.Tensor:
        """``B * sum_j max(lambda_j, scale * mean_n KL_j)`` of one latent site, in nats."""
        kl = _kl_terms(guide_site, model_site)
        kl = kl.reshape(-1, kl.shape[-1])
        threshold = self.free_bits * (1 if kl.shape[-1] > 1 or model_site["fn"].event_dim == 0
                                      else model_site["fn"].event_shape.numel())
        return kl.shape[0] * (guide_site["scale"] * kl.mean(0)).clamp(min=threshold).sum()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``-L~`` averaged over the particles, differentiable (pathwise gradients)."""
        loss = 0.0
        for _ in range(self.num_particles):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
            for name, site in sample_sites(model_trace):
                if site["is_observed"]:
                    loss = loss - (site["scale"] * site["fn"].log_prob(site["value"])).sum()
                else:
                    loss = loss + self._latent_loss(guide_trace.nodes[name], site)
        return loss / self.num_particles
