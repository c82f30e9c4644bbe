"""Latent scaling: the log-densities of a pair's latent sites multiplied by a factor, for KL
warm-up / annealing (Bowman et al. 2016, Sønderby et al. 2016) and beta-VAEs (Higgins et al. 2017).
"""

from __future__ import annotations

import torch

from ..pyro_internals import MessageHook

__all__ = ["scale_latents"]


def _latent_scaler(factor):
    """A message hook that multiplies the scale of every unobserved sample site by ``factor``.

    A site of scale 1 gets ``factor`` itself, not ``1.0 * factor``: with a tensor factor, model and
    guide sites then carry the *same* tensor, which ``TraceMeanField_ELBO`` recognises as one weight
    by identity, without reading its value (which a recorded step cannot do)."""

    def scale(msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            unit = isinstance(msg["scale"], (int, float)) and msg["scale"] == 1.0
            msg["scale"] = factor if unit and torch.is_tensor(factor) else msg["scale"] * factor

    return scale


def scale_latents(fn, factor):
    """``fn`` with the log-density of every unobserved sample site multiplied by ``factor``.

    With ``beta = factor``, the ELBO of a model and guide both wrapped becomes
    ``E_q[log p(x | z)] - beta * KL(q(z | x) || p(z))`` (nats per datapoint).

    ``factor`` is a number, or a zero-argument callable read at each call (for a schedule).
    Wrap model *and* guide: a KL carries one weight, so ``TraceMeanField_ELBO`` takes the analytic
    KL only of sites scaled alike in both (the sampled term otherwise) and ``FreeBitsELBO``
    refuses sites scaled differently.
    Start warm-up schedules above 0 (the trainer's starts at ``1/N``): at 0 the KL term vanishes
    and nothing checks it (unlike ``poutine.scale``, which refuses a scale of 0).
    """

    def scaled(*args, **kwargs):
        value = factor() if callable(factor) else factor
        with MessageHook(_latent_scaler(value)):
            return fn(*args, **kwargs)

    return scaled
