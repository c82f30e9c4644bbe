r"""The ELBO with free bits (Kingma et al. 2016): a KL floor per latent dimension that keeps
dimensions from collapsing to the prior, applied to the unscaled KL per datapoint.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from ..check.errors import ModelGuideError
from ..check.objective_rules import free_bits_refusal
from ..check.structure import StructureCache
from ..importance import sample_sites
from ..pyro_internals import scale_and_mask
from .base import LossFromDifferentiableLoss

__all__ = ["FreeBitsELBO"]


def _kl_terms(guide_site, model_site) -> torch.Tensor:
    """KL(q || p) per latent dimension ``(..., d)`` where both are diagonal and analytic, else the
    one-sample estimate per site ``(..., 1)``; unscaled, in nats per datapoint."""
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
        \tilde{\mathcal{L}} = \sum_n s_n \Big(\mathbb{E}_q[\log p(x_n \mid z)]
            - \beta \sum_j \max\big(\lambda, \overline{\mathrm{KL}}_j\big)\Big),
        \qquad \overline{\mathrm{KL}}_j = \tfrac{1}{B} \textstyle\sum_n \mathrm{KL}_j(x_n)

    over a batch of ``B`` datapoints, with the analytic KL of each dimension ``j`` of a diagonal
    latent (a one-sample estimate over the whole site otherwise, with threshold ``lambda`` times
    the site's dimension). The clamp acts on the **unscaled** per-datapoint KL averaged over the
    batch: ``beta`` (``poutine.scale`` on the latent sites, KL warm-up through
    :func:`~pyro_vae.objectives.scale_latents`) and the data scale ``s_n`` (``N / B`` under a
    subsampled data plate) multiply the clamped term afterwards, as the latent site's scale in
    the guide; so the threshold means ``lambda`` nats per dimension and datapoint whatever
    ``beta`` and the batch. (Under DDP each process clamps the mean over its own share of the
    batch; the gradient scaling of DDP is outside the objective.) Masked entries are left out of
    the mean and the sum. Dimensions whose batch-averaged KL is below ``lambda`` get no gradient
    towards the prior. The number it returns is an objective, not a bound; evaluate trained pairs
    with :func:`pyro_vae.evaluate_elbo` or :func:`pyro_vae.estimate_log_likelihood`. Units: nats,
    summed over the batch.

    Refused (:class:`~pyro_vae.ModelGuideError`, at the pair's first call and by
    :func:`~pyro_vae.check_model_guide` with ``free_bits``): a latent site whose analytic KL is
    not a term of the ELBO (:mod:`pyro_vae.check.structure`), a guide site without ``rsample``
    (no score-function estimator of the clamped batch mean), a latent site scaled or masked
    differently in model and guide.

    Args:
        free_bits: ``lambda`` in nats per latent dimension (>= 0; 0 gives the mean-field ELBO).
        num_particles: samples averaged per step (drawn one after the other).
        max_plate_nesting: the pair's plate depth (unused by the estimator itself).
    """

    checker_rules = "meanfield"  # what check_model_guide(..., elbo=<this object>) checks

    def __init__(self, free_bits: float, num_particles: int = 1, max_plate_nesting: float = float("inf")):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        if not free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0 nats, got {free_bits}")
        self.free_bits = float(free_bits)
        self.structures = StructureCache()

    def prepare(self, model, guide, *args, **kwargs):
        """The pair's dependency structure, computed now if this pair has not been seen."""
        return self.structures.get(model, guide, args, kwargs)

    def _latent_loss(self, guide_site, model_site) -> torch.Tensor:
        """``sum_n s_n * sum_j max(lambda_j, mean_n KL_nj)`` of one latent site, in nats; ``s_n``
        is the guide site's scale (beta times the data scale), applied after the clamp."""
        kl = _kl_terms(guide_site, model_site)
        weight = torch.ones(kl.shape[:-1], dtype=kl.dtype, device=kl.device)
        weight = scale_and_mask(weight, 1.0, guide_site["mask"]).expand(kl.shape[:-1]).reshape(-1)
        kl = kl.reshape(-1, kl.shape[-1])
        kl_mean = (torch.where(weight[:, None] > 0, kl, 0.0) * weight[:, None]).sum(0) / weight.sum()
        threshold = self.free_bits * (1 if kl.shape[-1] > 1 or model_site["fn"].event_dim == 0
                                      else model_site["fn"].event_shape.numel())
        scale = scale_and_mask(weight, guide_site["scale"]).sum()  # sum_n s_n over the unmasked entries
        return scale * kl_mean.clamp(min=threshold).sum()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``-L~`` averaged over the particles, differentiable (pathwise gradients)."""
        structure = self.prepare(model, guide, *args, **kwargs)
        loss = 0.0
        for _ in range(self.num_particles):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
            for name, site in sample_sites(model_trace):
                if site["is_observed"]:
                    log_p = site["fn"].log_prob(site["value"])
                    loss = loss - scale_and_mask(log_p, site["scale"], site["mask"]).sum()
                    continue
                reason = free_bits_refusal(name, guide_trace.nodes[name], site, structure)
                if reason is not None:
                    raise ModelGuideError(reason)
                loss = loss + self._latent_loss(guide_trace.nodes[name], site)
        return loss / self.num_particles
