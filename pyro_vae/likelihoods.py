"""Observation distributions p(x | z) chosen by name.

A likelihood turns a decoder's raw output into a Pyro distribution over one flattened
datapoint, with the pixel dimension as the event dimension (``.to_event(1)``), so that
``log_prob`` returns one number per datapoint, in nats.

====================  =========================  ===============================================
name                  decoder outputs per pixel  distribution
====================  =========================  ===============================================
bernoulli             1 (logit)                  ``Bernoulli(logits)``; data must be 0/1
continuous-bernoulli  1 (logit)                  ``ContinuousBernoulli(logits)`` (Loaiza-Ganem &
                                                 Cunningham 2019); grey levels in [0, 1]
gaussian              2 (mean, scale)            ``Normal(sigmoid(a), softplus(b) + 1e-3)``
gaussian-fixed        1 (mean)                   ``Normal(sigmoid(a), 0.1)``
====================  =========================  ===============================================

The learned Gaussian's scale has a floor of 1e-3 (in the data's units, pixels in [0, 1]) so that
a pixel that never varies cannot drive the density to infinity. The fixed one uses a standard
deviation of 0.1 pixel units for every pixel. Densities of continuous likelihoods are in nats per
datapoint with respect to Lebesgue measure on [0, 1]^D (or R^D); they are not comparable with
Bernoulli log-probabilities.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from .names import unknown_name

__all__ = ["LIKELIHOODS", "Likelihood", "get_likelihood"]


class Likelihood:
    """Base class: ``params_per_pixel`` raw decoder outputs per pixel -> a distribution.

    Attributes:
        name: the registered name (a key of :data:`LIKELIHOODS`).
        params_per_pixel: raw decoder outputs per pixel; a decoder for ``D`` pixels outputs
            ``params_per_pixel * D`` floats.
    """

    name: str = ""
    params_per_pixel: int = 1

    def __call__(self, out: torch.Tensor) -> dist.TorchDistribution:
        """``out``: ``(..., params_per_pixel * D)`` float -> distribution with batch shape ``(...)``
        and event shape ``(D,)``, whose ``log_prob`` is in nats per datapoint."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """``Bernoulli(logits=out)`` per pixel: ``out`` ``(..., D)`` logits; data 0/1 floats."""

    name = "bernoulli"
    params_per_pixel = 1

    def __call__(self, out):
        return dist.Bernoulli(logits=out).to_event(1)


class ContinuousBernoulli(Likelihood):
    """``ContinuousBernoulli(logits=out)`` per pixel: ``out`` ``(..., D)`` logits; data grey levels
    in [0, 1]; density in nats with respect to Lebesgue measure on [0, 1]^D."""

    name = "continuous-bernoulli"
    params_per_pixel = 1

    def __call__(self, out):
        return dist.ContinuousBernoulli(logits=out).to_event(1)


class Gaussian(Likelihood):
    """``Normal(sigmoid(a), softplus(b) + 1e-3)`` per pixel: ``out`` ``(..., 2 * D)`` is ``[a, b]``
    (the first ``D`` values are ``a``); scale in pixel units; density in nats on R^D."""

    name = "gaussian"
    params_per_pixel = 2

    def __call__(self, out):
        mean, raw_scale = out.chunk(2, dim=-1)
        return dist.Normal(torch.sigmoid(mean), F.softplus(raw_scale) + 1e-3).to_event(1)


class GaussianFixed(Likelihood):
    """``Normal(sigmoid(out), 0.1)`` per pixel: ``out`` ``(..., D)``; the standard deviation is 0.1
    pixel units for every pixel; density in nats on R^D."""

    name = "gaussian-fixed"
    params_per_pixel = 1
    scale = 0.1

    def __call__(self, out):
        return dist.Normal(torch.sigmoid(out), self.scale).to_event(1)


LIKELIHOODS: dict[str, Likelihood] = {
    lik.name: lik for lik in (Bernoulli(), ContinuousBernoulli(), Gaussian(), GaussianFixed())
}
"""Registered likelihoods by name."""


def get_likelihood(name: str) -> Likelihood:
    """The likelihood called ``name``; a ``ValueError`` lists the valid names otherwise."""
    try:
        return LIKELIHOODS[name]
    except KeyError:
        raise unknown_name("likelihood", name, LIKELIHOODS) from None
