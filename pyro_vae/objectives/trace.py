r"""The Monte Carlo ELBO (Pyro's ``Trace_ELBO``) with its loss kept on the device.

Pyro's ``Trace_ELBO`` reads every site's log-density to the host with ``.item()`` and checks the
loss for NaN in the forward and backward pass: up to seven host syncs per step on a GPU. The class
here computes the same estimator and the same gradients with tensors only.
"""

from __future__ import annotations

import pyro.infer
import torch

from ..pyro_internals import compute_log_r, elbo_traces, is_identically_zero, log_r_sum_to, score_parts
from .base import ValueFromDifferentiableLoss

__all__ = ["Trace_ELBO"]


class Trace_ELBO(ValueFromDifferentiableLoss, pyro.infer.Trace_ELBO):
    r"""Pyro's ``Trace_ELBO`` (the same estimator and gradients, score-function terms included)
    with the loss kept on the device: ``differentiable_loss`` reads nothing to the host.

    Its value is ``-(log p(x, z) - log q(z | x))`` summed over the batch (scaled as the sites
    are), averaged over the particles; its gradient is that of Pyro's surrogate loss

    .. math::
        -\Big[\log p(x, z) - \log q_{\text{rep}}(z \mid x)
            + \sum_{s} \overline{\log r_s}\, \log q_{\text{sf}}(z_s \mid x)\Big],
        \quad z \sim q(z \mid x),

    where ``log q_rep`` holds the reparameterized sites (pathwise gradients; Kingma & Welling
    2014), ``log q_sf`` the others (score-function gradients; Wingate & Weber 2013, Ranganath et
    al. 2014), and ``log r_s`` is the detached ``log p - log q`` summed over the plates outside
    site ``s`` (Pyro's partial Rao-Blackwellization). Units: nats, summed over the batch.
    """

    def _particle_loss(self, model_trace, guide_trace):
        """``(loss, surrogate loss)`` of one (possibly vectorized) particle, both tensors (Pyro's
        reads the first with ``.item()``, one host sync per site)."""
        elbo, surrogate, log_r, extra = 0.0, 0.0, None, 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"]
                surrogate = surrogate + site["log_prob_sum"]
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            _, score_function_term, entropy_term = score_parts(site)
            elbo = elbo - site["log_prob_sum"]
            if not is_identically_zero(entropy_term):
                surrogate = surrogate - entropy_term.sum()
            if not is_identically_zero(score_function_term):
                if log_r is None:
                    log_r = compute_log_r(model_trace, guide_trace)
                signal, loss = self.learning_signal(name, site, log_r_sum_to(log_r, site))
                surrogate, extra = surrogate + (signal * score_function_term).sum(), extra + loss
        return -torch.as_tensor(elbo).detach(), -surrogate + extra

    def learning_signal(self, name: str, site: dict, log_r: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The factor of score-function site ``name``'s ``log q`` in the surrogate, and a loss to add
        (e.g. a baseline's squared error): here the detached ``log r`` and 0; a subclass may
        subtract a baseline (:class:`~pyro_vae.objectives.baselines.TraceBaseline_ELBO`)."""
        return log_r, 0.0

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss (value) with the surrogate's gradient, as a device tensor, no host sync."""
        loss = 0.0
        for model_trace, guide_trace in elbo_traces(self, model, guide, args, kwargs):
            value, surrogate = self._particle_loss(model_trace, guide_trace)
            # the surrogate's value differs from the loss where score-function terms enter
            loss = loss + (value + (surrogate - surrogate.detach())) / self.num_particles
        return loss
