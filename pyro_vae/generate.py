"""Samples and reconstructions from any conforming model/guide pair.

Both read the observation distribution at the model's observed site and return its mean (the
Bernoulli probabilities, the Gaussian means), which is what VAE papers show as images.
"""

from __future__ import annotations

import torch
from pyro import poutine

__all__ = ["observed_mean", "reconstruct", "sample_prior"]


def observed_mean(trace, skip: str | None = None) -> torch.Tensor:
    """Mean of the first observed site's distribution in a model ``trace`` (``skip``: a site fixed by
    conditioning), e.g. ``(batch, D)`` pixel probabilities for a Bernoulli likelihood."""
    observed = [site for name, site in trace.nodes.items()
                if site["type"] == "sample" and site["is_observed"] and name != skip]
    if not observed:
        raise ValueError("the model has no observed site (pyro.sample(..., obs=x))")
    return observed[0]["fn"].mean


@torch.no_grad()
def sample_prior(model, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Means of ``p(x | z)`` for ``z`` drawn from the prior, one per row of ``x``.

    ``x`` only sets the batch size and device (the model needs an observation to condition
    on; its values do not influence the latent draws). Returns a tensor shaped like ``x``.
    """
    with poutine.block():
        trace = poutine.trace(model).get_trace(x, *args, **kwargs)
    return observed_mean(trace).reshape(x.shape)


@torch.no_grad()
def reconstruct(model, guide, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Means of ``p(x | z)`` for one draw ``z ~ q(z | x)`` per row of ``x`` (shaped like ``x``)."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, *args, **kwargs)
    return observed_mean(trace).reshape(x.shape)
