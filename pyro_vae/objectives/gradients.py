r"""Importance-weighted objectives with other gradient estimators: STL (Roeder et al. 2017), DReG
(Tucker et al. 2018), and MIWAE, PIWAE, CIWAE (Rainforth et al. 2018).

**The decomposition.** For ``K`` draws ``z_k = z(eps_k; phi)`` from the guide and log weights
``log w_k = log p_theta(x, z_k) - log q_phi(z_k | x)``, the gradient of a bound ``T(log w)`` is
``sum_k c_k grad log w_k`` with ``c_k = dT / d log w_k`` (``c = softmax(log w)``, the normalised
weights, for IWAE), and ``grad log w_k`` has three parts:

* *decoder*: ``grad_theta log p(x, z_k)`` at fixed ``z_k``;
* *path*: ``(d log w_k / d z_k) (d z_k / d phi)``, through the reparameterized draw;
* *score*: ``-grad_phi log q_phi(z_k | x)`` at fixed ``z_k`` (expectation 0 under ``q``).

Each estimator here chooses the coefficients of the three parts (:meth:`SplitGradientELBO.coefficients`):

==============  =====================  =====================  =================  ================
objective       value                  decoder                path               score
==============  =====================  =====================  =================  ================
``STL_ELBO``    ELBO (mean of log w)   ``1/K``                ``1/K``            none
``IWAE_STL``    IWAE_K                 ``w~``                 ``w~``             none
``IWAE_DReG``   IWAE_K                 ``w~``                 ``w~ ** 2``        none
``MIWAE_ELBO``  MIWAE(M, K)            ``w~ / M`` per group   the same           the same
``PIWAE_ELBO``  IWAE_{MK}              ``w~`` over all MK     MIWAE(M, K)'s      MIWAE's
``CIWAE_ELBO``  b ELBO + (1 - b) IWAE  ``b/K + (1 - b) w~``   the same           the same
==============  =====================  =====================  =================  ================

What each gradient is unbiased for: ``STL_ELBO``'s for the ELBO's; ``IWAE_DReG``'s for IWAE_K's
(decoder and encoder); ``IWAE_STL``'s decoder gradient for IWAE_K's, its encoder gradient is
biased for ``K > 1`` (Tucker et al. 2018, section 3); MIWAE's and CIWAE's are their bounds' full
gradients; PIWAE's decoder gradient is IWAE_{MK}'s and its encoder gradient MIWAE(M, K)'s.

**How.** The guide is run once for the draws ``z_k`` (with their path to ``phi``); model and guide
are then run again at detached copies ``z'_k`` that require grad, which gives ``log p(x, z')``
and ``log q(z' | x)`` with their parameter gradients at fixed ``z`` (the decoder and score
parts), and ``d log w / d z'`` by one ``torch.autograd.grad`` (the path part, applied as
``sum_k (g_k . z_k)`` with ``g_k`` constant). Parameters shared by model and guide (the Ladder
VAE's top-down nets) get each part that they enter. Cost: about one guide pass and one backward
pass more than :class:`~pyro_vae.objectives.IWAE_ELBO`. Guide sites must be reparameterizable.
The loss is ``-sum_n s * value_n`` (``s`` the datapoint sites' common scale, as for ``IWAE_ELBO``);
under ``torch.no_grad`` only the value is computed.

**Caveats.** For a parameter that enters model and guide (the Ladder VAE's and the NVAE's top-down
nets), each estimator applies its coefficients to the part each term contributes: STL's, DReG's,
MIWAE's and CIWAE's claims hold for it as for any other parameter, but PIWAE's gradient for it is
IWAE_{MK}'s decoder part plus MIWAE's path and score parts, the gradient of neither bound. The
guide is run twice per step (the draws, then the density at them): a guide with dropout draws
other masks the second time, and batch-norm statistics update twice; the shipped guides have
neither.
"""

from __future__ import annotations

import math

import torch
from pyro import poutine

from ..importance import (
    _check_sites_match,
    _common_scale,
    _sum_log_weights,
    _trace_particles,
    _vectorize,
    guess_max_plate_nesting,
    sample_sites,
)
from .base import LossFromDifferentiableLoss, OwnPlateDepth

__all__ = ["CIWAE_ELBO", "IWAE_DReG", "IWAE_STL", "MIWAE_ELBO", "PIWAE_ELBO", "STL_ELBO", "SplitGradientELBO"]


class SplitGradientELBO(OwnPlateDepth, LossFromDifferentiableLoss):
    """Base of the objectives of this module: a bound of the ``(K, B)`` log weights and the
    coefficients of its gradient's decoder, path and score parts (module docstring).

    Args:
        num_particles: ``K``, draws per datapoint (per group, for MIWAE and PIWAE).
        groups: ``M``, independent groups of ``K`` draws (1 but for MIWAE and PIWAE).
        data_plate: name of the plate over datapoints.
        max_plate_nesting: the pair's plate depth; ``None`` guesses it at the first call.
    """

    checker_rules = "iwae"  # reparameterized guide sites, per-datapoint weights

    def __init__(self, num_particles: int = 5, groups: int = 1, data_plate: str = "data",
                 max_plate_nesting: int | None = None):
        if num_particles < 1 or groups < 1:
            raise ValueError(f"num_particles and groups must be >= 1, got {num_particles} and {groups}")
        super().__init__(num_particles=num_particles, vectorize_particles=True)
        self.groups, self.data_plate, self._nesting = groups, data_plate, max_plate_nesting

    def bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """The value per datapoint, ``(B,)`` nats, of the ``(M * K, B)`` log weights."""
        raise NotImplementedError

    def coefficients(self, log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(decoder, path, score)`` coefficients, each ``(M * K, B)`` (``score`` ``None``: no
        score part), of the detached ``(M * K, B)`` log weights."""
        raise NotImplementedError

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``-sum_n s * value_n``, whose gradient is this estimator's (module docstring)."""
        if self._nesting is None:
            self._nesting = guess_max_plate_nesting(model, guide, *args, **kwargs)
        draws = self.num_particles * self.groups
        guide_trace = poutine.trace(_vectorize(guide, draws, self._nesting)).get_trace(*args, **kwargs)
        z = {name: site["value"] for name, site in sample_sites(guide_trace, observed=False)}
        if not torch.is_grad_enabled():
            log_p, log_q, scale = self._log_p_and_q(model, guide, args, kwargs, z)
            return -(scale * self.bound(log_p - log_q)).sum()
        leaves = {name: value.detach().requires_grad_() for name, value in z.items()}
        log_p, log_q, scale = self._log_p_and_q(model, guide, args, kwargs, leaves)
        log_w = (log_p - log_q).detach()
        decoder, path, score = (c if c is None else c * scale for c in self.coefficients(log_w))
        slopes = torch.autograd.grad((path * (log_p - log_q)).sum(), list(leaves.values()), retain_graph=True,
                                     allow_unused=True)
        surrogate = (decoder * log_p).sum() + sum((g * z[name]).sum() for name, g in zip(leaves, slopes)
                                                  if g is not None and z[name].requires_grad)
        if score is not None:
            surrogate = surrogate - (score * log_q).sum()
        return -((scale * self.bound(log_w)).sum() + surrogate - surrogate.detach())

    def _log_p_and_q(self, model, guide, args, kwargs, values: dict):
        """``(log p(x, z), log q(z | x), scale)``: ``(K, B)`` unscaled log-densities of model and
        guide run with their sample sites at ``values``, and the sites' common scale."""
        given = poutine.Trace()
        for name, value in values.items():
            given.add_node(name, type="sample", name=name, value=value, is_observed=False, infer={})
        draws, empty, plate_dims = self.num_particles * self.groups, poutine.Trace(), self._nesting + 1
        model_trace, guide_trace = _trace_particles(model, poutine.replay(guide, trace=given), args, kwargs, draws,
                                                    self._nesting, False)
        _check_sites_match(model_trace, guide_trace)
        log_p, _, p_scales, _, batch = _sum_log_weights(model_trace, empty, plate_dims, self.data_plate, False, False)
        minus_log_q, _, q_scales, _, _ = _sum_log_weights(empty, guide_trace, plate_dims, self.data_plate, True, False)
        scale = _common_scale(p_scales + q_scales)
        if scale is None:
            raise ValueError(f"{type(self).__name__}: the sites of a datapoint carry different scales (poutine.scale "
                             "on some sites only); an importance-weighted bound is defined for a common scale")
        return log_p.expand(draws, batch), (-minus_log_q).expand(draws, batch), scale

    def _groups(self, log_w: torch.Tensor) -> torch.Tensor:
        return log_w.reshape(self.groups, self.num_particles, log_w.shape[-1])


def _iwae(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


class STL_ELBO(SplitGradientELBO):
    """The ELBO (averaged over ``num_particles`` draws) with the sticking-the-landing gradient of
    Roeder et al. (2017): the score part dropped. Unbiased for the ELBO's gradient; zero variance
    in the encoder's gradient when ``q`` equals the posterior."""

    def bound(self, log_w):
        return log_w.mean(0)

    def coefficients(self, log_w):
        c = torch.full_like(log_w, 1.0 / log_w.shape[0])
        return c, c, None


class IWAE_STL(SplitGradientELBO):
    """IWAE_K with the score part dropped (Roeder et al. 2017): the decoder gradient is IWAE_K's,
    the encoder's is biased for ``K > 1`` (Tucker et al. 2018)."""

    def bound(self, log_w):
        return _iwae(log_w)

    def coefficients(self, log_w):
        w = torch.softmax(log_w, 0)
        return w, w, None


class IWAE_DReG(SplitGradientELBO):
    """IWAE_K with the doubly reparameterized encoder gradient of Tucker et al. (2018),
    ``sum_k w~_k ** 2 (d log w_k / d z_k)(d z_k / d phi)``: unbiased for IWAE_K's gradient, with
    an encoder signal-to-noise ratio that grows with ``K`` instead of shrinking."""

    def bound(self, log_w):
        return _iwae(log_w)

    def coefficients(self, log_w):
        w = torch.softmax(log_w, 0)
        return w, w * w, None


class MIWAE_ELBO(SplitGradientELBO):
    """MIWAE(M, K) of Rainforth et al. (2018): the mean over ``M = groups`` independent IWAE_K
    bounds (``M * K`` draws); M = 1 is IWAE_K, K = 1 the ELBO with M draws. The full gradient."""

    def __init__(self, groups: int = 2, num_particles: int = 5, data_plate: str = "data",
                 max_plate_nesting: int | None = None):
        super().__init__(num_particles, groups, data_plate, max_plate_nesting)

    def bound(self, log_w):
        return _iwae(self._groups(log_w), 1).mean(0)

    def coefficients(self, log_w):
        c = (torch.softmax(self._groups(log_w), 1) / self.groups).reshape(log_w.shape)
        return c, c, c


class PIWAE_ELBO(MIWAE_ELBO):
    """PIWAE of Rainforth et al. (2018) as we read it: the decoder trained on IWAE_{MK} (all
    ``M * K`` draws in one bound), the encoder on MIWAE(M, K) of the same draws. The loss value
    is IWAE_{MK}."""

    def bound(self, log_w):
        return _iwae(log_w)

    def coefficients(self, log_w):
        _, encoder, _ = super().coefficients(log_w)
        return torch.softmax(log_w, 0), encoder, encoder


class CIWAE_ELBO(SplitGradientELBO):
    """CIWAE of Rainforth et al. (2018): ``beta * ELBO + (1 - beta) * IWAE_K`` of the same ``K``
    draws, ``0 <= beta <= 1``. The full gradient."""

    def __init__(self, beta: float = 0.5, num_particles: int = 5, data_plate: str = "data",
                 max_plate_nesting: int | None = None):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"CIWAE's beta must lie in [0, 1], got {beta}")
        super().__init__(num_particles, 1, data_plate, max_plate_nesting)
        self.beta = float(beta)

    def bound(self, log_w):
        return self.beta * log_w.mean(0) + (1.0 - self.beta) * _iwae(log_w)

    def coefficients(self, log_w):
        c = self.beta / log_w.shape[0] + (1.0 - self.beta) * torch.softmax(log_w, 0)
        return c, c, c
