r"""The ELBO with analytic KL divergences (Pyro's ``TraceMeanField_ELBO``), loss on the device.

Where torch knows ``KL(q || p)`` for a latent site's pair of distributions, the ELBO uses it
instead of the one-sample estimate ``log q(z | x) - log p(z)``: the same bound, a lower-variance
estimate. Valid for mean-field guides only (see DESIGN.md, "Known traps").
"""

from __future__ import annotations

import pyro.infer
import torch
from torch.distributions import kl_divergence

from ..pyro_internals import check_fully_reparametrized, is_validation_enabled, scale_and_mask, score_parts
from .trace import Trace_ELBO

__all__ = ["TraceMeanField_ELBO"]


class TraceMeanField_ELBO(Trace_ELBO, pyro.infer.TraceMeanField_ELBO):
    r"""Pyro's ``TraceMeanField_ELBO`` with the loss kept on the device, as :class:`Trace_ELBO`.

    .. math::
        \mathcal{L}(x) = \mathbb{E}_{q}[\log p(x \mid z)]
            - \sum_{\text{latent } s} \mathrm{KL}\big(q(z_s \mid x) \,\|\, p(z_s \mid \ldots)\big)

    with the analytic KL of each latent site where torch has it (scaled and masked as the *guide*
    site is), the one-sample estimate ``log p(z_s) - log q(z_s | x)`` otherwise (e.g. a flow
    guide). Guides must be fully reparameterized (checked when Pyro's validation is on) and
    mean-field (Pyro warns under validation when the site orders differ). Units: nats, summed
    over the batch. References: Kingma & Welling 2014 (eq. 10); Pyro's ``TraceMeanField_ELBO``.
    """

    def _particle_loss(self, model_trace, guide_trace):
        """``(loss, surrogate loss)`` of one particle: the same tensor, detached and not."""
        elbo = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo = elbo + model_site["log_prob_sum"]
            else:
                elbo = _add_latent_term(elbo, model_site, guide_trace.nodes[name])
        for name, guide_site in guide_trace.nodes.items():  # auxiliary sites of the guide
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                if is_validation_enabled():
                    check_fully_reparametrized(guide_site)
                elbo = elbo - score_parts(guide_site).entropy_term.sum()
        elbo = torch.as_tensor(elbo)
        return -elbo.detach(), -elbo


def _add_latent_term(elbo, model_site, guide_site):
    """``elbo`` minus the latent site's KL(q || p), analytic where torch has it (scaled and masked
    as the guide site), else plus its one-sample ``log p(z) - log q(z | x)``."""
    if is_validation_enabled():
        check_fully_reparametrized(guide_site)
    try:
        kl = scale_and_mask(kl_divergence(guide_site["fn"], model_site["fn"]),
                            scale=guide_site["scale"], mask=guide_site["mask"])
        return elbo - (kl.sum() if torch.is_tensor(kl) else kl * guide_site["fn"].batch_shape.numel())
    except NotImplementedError:
        return elbo + model_site["log_prob_sum"] - score_parts(guide_site).entropy_term.sum()
