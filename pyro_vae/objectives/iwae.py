r"""The importance-weighted bound (IWAE) of Burda et al. (2015), per datapoint and correctly
scaled under minibatch subsampling.

``pyro.infer.RenyiELBO(alpha=0)`` estimates the same bound but applies the logsumexp to
log-densities already multiplied by the subsampling factor ``N / B``, which gives a different
number whenever that factor is not 1; this objective applies it after the logsumexp.
"""

from __future__ import annotations

import math

import torch

from ..importance import LogWeights, guess_max_plate_nesting, log_importance_weights
from .base import LossFromDifferentiableLoss, OwnPlateDepth

__all__ = ["IWAE_ELBO"]


class IWAE_ELBO(OwnPlateDepth, LossFromDifferentiableLoss):
    r"""The importance-weighted bound of Burda et al. (2015), per datapoint.

    .. math::
        \mathcal{L}_K(x_n) = \mathbb{E}\Big[\log \frac{1}{K} \sum_{k=1}^K
            \frac{p(x_n, z_k)}{q(z_k \mid x_n)}\Big],\quad z_k \sim q(z \mid x_n)

    The loss is ``-sum_n s * L_K(x_n)`` over the batch, where ``s`` is the common scale of the
    datapoint's sites (``N / B`` under a subsampled ``pyro.plate("data", N, subsample_size=B)``),
    applied *after* the logsumexp. Pyro's ``RenyiELBO(alpha=0)`` instead takes the logsumexp of
    already-scaled log-densities, which is a different (wrong) number whenever ``s != 1``.

    Requires a reparameterizable guide, and every site of a datapoint to carry the same scale
    (a ``poutine.scale`` on the latent only, as in beta-VAEs, has no consistent IWAE analogue
    and is refused). ``num_particles`` is ``K``; particles are vectorized. Units: nats, summed
    over the batch (``L_K(x_n)`` is nats per datapoint).

    Args:
        num_particles: ``K``, importance samples per datapoint (``K = 1`` is the ELBO).
        data_plate: name of the plate over datapoints.
        max_plate_nesting: the pair's plate depth; ``None`` guesses it at the first call.
    """

    checker_rules = "iwae"  # what check_model_guide(..., elbo=<this object>) checks

    def __init__(self, num_particles: int = 5, data_plate: str = "data", max_plate_nesting: int | None = None):
        super().__init__(num_particles=num_particles, vectorize_particles=True)
        self.data_plate = data_plate
        self._nesting = max_plate_nesting

    def _log_weights(self, model, guide, args, kwargs) -> LogWeights:
        """The ``(K, B)`` log weights of the batch, refusing sites with different scales."""
        if self._nesting is None:
            self._nesting = guess_max_plate_nesting(model, guide, *args, **kwargs)
        w = log_importance_weights(
            model, guide, *args, num_particles=self.num_particles, max_plate_nesting=self._nesting,
            data_plate=self.data_plate, require_reparam=True, **kwargs,
        )
        if w.scale is None:
            raise ValueError(
                "IWAE: the sites of a datapoint carry different scales (poutine.scale on some "
                "sites only); the importance-weighted bound is defined for a common scale"
            )
        return w

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``-sum_n scale * [logsumexp_k log w_kn - log K]``, differentiable."""
        w = self._log_weights(model, guide, args, kwargs)
        bound = torch.logsumexp(w.log_weights, dim=0) - math.log(self.num_particles)
        return -(w.scale * bound).sum()
