"""Training objectives by name: ``trace``, ``meanfield``, ``iwae``.

Sign convention, everywhere in pyro-vae: an *ELBO* or *bound* is a lower bound on
``log p(x)`` in nats per datapoint (higher is better, typically negative, e.g. -100 on MNIST);
a *loss* is its negative, as Pyro's ELBO classes return it.

=========  ============================  ==============================================
name       class                         estimator of the per-datapoint bound
=========  ============================  ==============================================
trace      ``pyro.infer.Trace_ELBO``     Monte Carlo KL: log p(x,z) - log q(z|x), z ~ q
meanfield  ``TraceMeanField_ELBO``       analytic KL(q || p) where it exists
iwae       :class:`IWAE_ELBO`            log (1/K) sum_k w_k  (Burda et al. 2015)
=========  ============================  ==============================================
"""

from __future__ import annotations

import math

import torch
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import torch_item

from .importance import guess_max_plate_nesting, log_importance_weights

__all__ = ["ELBO_NAMES", "IWAE_ELBO", "get_elbo"]

ELBO_NAMES = ("trace", "meanfield", "iwae")


class IWAE_ELBO(ELBO):
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
    and is refused). ``num_particles`` is ``K``; particles are vectorized.
    """

    def __init__(self, num_particles: int = 5, data_plate: str = "data"):
        super().__init__(num_particles=num_particles, vectorize_particles=True)
        self.data_plate = data_plate
        self._nesting = None

    def _log_weights(self, model, guide, args, kwargs):
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

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("IWAE_ELBO draws its particles vectorized, not trace by trace")

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``-sum_n scale * [logsumexp_k log w_kn - log K]``, differentiable."""
        w = self._log_weights(model, guide, args, kwargs)
        bound = torch.logsumexp(w.log_weights, dim=0) - math.log(self.num_particles)
        return -(w.scale * bound).sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return torch_item(loss)


def get_elbo(name: str, num_particles: int = 1) -> ELBO:
    """The objective called ``name`` (see :data:`ELBO_NAMES`) with ``num_particles`` samples.

    Particles are vectorized. For ``trace`` and ``meanfield`` the ``K`` particles are averaged
    (a lower-variance estimate of the same bound); for ``iwae`` they tighten the bound.
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if name == "trace":
        return Trace_ELBO(num_particles=num_particles, vectorize_particles=True)
    if name == "meanfield":
        return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=True)
    if name == "iwae":
        return IWAE_ELBO(num_particles=num_particles)
    raise ValueError(f"unknown ELBO {name!r}; choose one of {', '.join(ELBO_NAMES)}")
