"""Samples and reconstructions from any conforming model/guide pair.

Both read the observation distribution at the model's observed site and return its mean (the
Bernoulli probabilities, the Gaussian means), which is what VAE papers show as images.
"""

from __future__ import annotations

import torch
from pyro import poutine

__all__ = ["observation", "observed_mean", "reconstruct", "sample_prior"]


def _observed_site(trace, skip: str | None = None) -> dict:
    """The observed site with the most values per datapoint (the image rather than an observed
    label, as in the semi-supervised M2); the first such site on ties."""
    observed = [site for name, site in trace.nodes.items()
                if site["type"] == "sample" and site["is_observed"] and name != skip]
    if not observed:
        raise ValueError("the model has no observed site (pyro.sample(..., obs=x))")
    return max(observed, key=lambda site: site["value"][0].numel() if site["value"].dim() else 0)


def observed_mean(trace, skip: str | None = None) -> torch.Tensor:
    """Mean of the observed site's distribution in a model ``trace`` (the one with the most values
    per datapoint; ``skip``: a site fixed by conditioning), e.g. ``(batch, D)`` pixel
    probabilities for a Bernoulli likelihood."""
    return _observed_site(trace, skip)["fn"].mean


@torch.no_grad()
def observation(model, x: torch.Tensor, *args, guide=None, **kwargs) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The model's observed site (the one with the most values per datapoint), whatever it observes (``x`` itself, or the bottom half of
    an image given its top half, ...): ``(name, observed value, mean)``, the last two
    ``(batch, k)`` with ``k`` values per datapoint, for ``z ~ p(z)`` (``guide=None``) or one draw
    ``z ~ q(z | x)``.

    Raises:
        ValueError: no observed site, or one whose value does not have ``batch`` leading rows.
    """
    with poutine.block():
        if guide is not None:
            guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
            model = poutine.replay(model, trace=guide_trace)
        trace = poutine.trace(model).get_trace(x, *args, **kwargs)
    site = _observed_site(trace)
    value, mean = site["value"], site["fn"].mean.expand(site["value"].shape)
    if value.dim() == 0 or value.shape[0] != x.shape[0]:
        raise ValueError(f"the observed site {site['name']!r} has shape {tuple(value.shape)}, without one row "
                         f"per datapoint ({x.shape[0]})")
    return site["name"], value.reshape(len(value), -1), mean.reshape(len(value), -1)


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
