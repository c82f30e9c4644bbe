r"""The ELBO with analytic KL divergences where they are terms of the ELBO, loss on the device.

Where torch knows ``KL(q || p)`` for a latent site's pair of distributions *and* that KL is a term
of the pair's ELBO, the objective uses it instead of the one-sample ``log q(z | x) - log p(z)``:
the same bound (same value and gradient in expectation as :class:`Trace_ELBO`), a lower-variance
estimate. Which sites qualify is read from the dependency structure of the two programs
(:mod:`pyro_vae.check.structure`, with the derivation), so any pair is trained on its ELBO:
hierarchies whose guide runs against the model's order and non-reparameterizable latents
included.
"""

from __future__ import annotations

import torch
from torch.distributions import kl_divergence

from ..check.objective_rules import same_factor
from ..check.structure import StructureCache
from ..pyro_internals import (
    elbo_traces,
    is_identically_zero,
    log_r_sum_to,
    plate_sums,
    scale_and_mask,
    score_parts,
)
from .trace import Trace_ELBO

__all__ = ["TraceMeanField_ELBO"]


class TraceMeanField_ELBO(Trace_ELBO):
    r"""The ELBO of :class:`Trace_ELBO` with the closed-form KL of each latent site where it is a term
    of it (Pyro's ``TraceMeanField_ELBO`` uses it at every site and is wrong elsewhere).

    .. math::
        \mathcal{L}(x) = \mathbb{E}_{q}[\log p(x \mid z)]
            - \sum_{s \in \mathcal{A}} \mathbb{E}_q\,\mathrm{KL}\big(q(z_s \mid pa_q(s)) \,\|\,
                p(z_s \mid pa_p(s))\big)
            + \sum_{s \notin \mathcal{A}} \mathbb{E}_q\big[\log p(z_s \mid pa_p(s)) - \log q(z_s \mid pa_q(s))\big]

    :math:`\mathcal{A}` holds the latent sites that (1) no model parent of which is a guide
    descendant of (:mod:`pyro_vae.check.structure`), (2) carry the same scale and mask in model and
    guide, and (3) have a closed-form KL in torch; the other sites keep the sampled log-ratio.
    Gradients: pathwise through reparameterized sites; for each guide site that is not
    reparameterizable (Bernoulli, Categorical), the score-function term of :class:`Trace_ELBO`
    with, as its cost, the detached sum of the terms above (analytic KLs included) over the plates
    outside the site. Units: nats, summed over the batch as the sites are scaled.

    **How the per-site decision arrives.** :meth:`prepare` computes the pair's structure at the
    pair's first call (two runs with provenance tracking, gradients off, RNG state restored) and
    keeps it; :func:`~pyro_vae.check_model_guide` calls the same function, so the checker and the
    objective decide alike.

    References: Kingma & Welling 2014 (eq. 10); Pyro's ``TraceMeanField_ELBO`` and ``Trace_ELBO``.
    """

    checker_rules = "meanfield"  # what check_model_guide(..., elbo=<this object>) checks

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.structures = StructureCache()

    def prepare(self, model, guide, *args, **kwargs) -> frozenset:
        """The latent sites whose KL is a term of this pair's ELBO (condition 1), computed now
        if this pair has not been seen; call with the arguments of a step."""
        return self.structures.get(model, guide, args, kwargs).analytic_kl_sites

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss (value) with the surrogate's gradient, as a device tensor, no host sync."""
        analytic = self.prepare(model, guide, *args, **kwargs)
        loss = 0.0
        for model_trace, guide_trace in elbo_traces(self, model, guide, args, kwargs):
            value, surrogate = self._particle_loss(model_trace, guide_trace, analytic)
            loss = loss + (value + (surrogate - surrogate.detach())) / self.num_particles
        return loss

    def _particle_loss(self, model_trace, guide_trace, analytic: frozenset = frozenset()):
        """``(loss, surrogate loss)`` of one (possibly vectorized) particle."""
        elbo, surrogate, terms = 0.0, 0.0, []
        for name, m in model_trace.nodes.items():
            if m["type"] != "sample":
                continue
            if m["is_observed"]:
                term, pathwise = m["log_prob"], m["log_prob_sum"]
            else:
                g = guide_trace.nodes[name]
                kl = _analytic_kl(m, g) if name in analytic else None
                if kl is not None:
                    term, pathwise = -kl, -kl.sum()
                else:
                    term, pathwise = m["log_prob"] - g["log_prob"], m["log_prob_sum"] - _entropy_sum(g)
            elbo, surrogate = elbo + term.sum(), surrogate + pathwise
            terms.append((m["cond_indep_stack"], term))
        for name, g in guide_trace.nodes.items():  # auxiliary guide sites (the checker refuses them)
            if g["type"] == "sample" and name not in model_trace.nodes:
                elbo, surrogate = elbo - g["log_prob_sum"], surrogate - _entropy_sum(g)
                terms.append((g["cond_indep_stack"], -g["log_prob"]))
        surrogate = surrogate + _score_function_terms(guide_trace, terms)
        elbo = torch.as_tensor(elbo)
        return -elbo.detach(), -surrogate


def _analytic_kl(m: dict, g: dict):
    """KL(q || p) of the latent site per batch entry, scaled and masked as the site is; ``None``
    where the scales or masks of model site ``m`` and guide site ``g`` differ or torch has no
    closed form."""
    if not (same_factor(m["scale"], g["scale"]) and same_factor(m["mask"], g["mask"])):
        return None
    try:
        kl = kl_divergence(g["fn"], m["fn"])
    except NotImplementedError:
        return None
    kl = scale_and_mask(kl, scale=g["scale"], mask=g["mask"])
    return kl if torch.is_tensor(kl) else g["log_prob"].new_full(tuple(g["fn"].batch_shape), kl)


def _entropy_sum(g: dict):
    """The pathwise part of ``log q`` at guide site ``g``, summed (0 for a score-function site)."""
    entropy_term = score_parts(g).entropy_term
    return 0.0 if is_identically_zero(entropy_term) else entropy_term.sum()


def _score_function_terms(guide_trace, terms: list):
    """``sum_s (cost_s * log q_s)`` over the guide sites without ``rsample``: ``cost_s`` is the
    detached sum of ``terms`` (``(plate stack, tensor)``) over the plates outside site ``s``."""
    total, costs = 0.0, None
    for g in guide_trace.nodes.values():
        if g["type"] != "sample":
            continue
        score_function = score_parts(g).score_function
        if is_identically_zero(score_function):
            continue
        if costs is None:
            costs = plate_sums((stack, term.detach()) for stack, term in terms)
        total = total + (log_r_sum_to(costs, g) * score_function).sum()
    return total
