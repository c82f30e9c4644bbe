r"""The ELBO with discrete latents summed out exactly (Pyro's ``TraceEnum_ELBO``), its loss kept on
the device.

Pyro's ``TraceEnum_ELBO.differentiable_loss`` ends with ``warn_if_nan``, which reads the loss to
the host (``torch.isnan(...).any()`` in Python) and registers a hook that does the same for its
gradient: two host syncs per step on a GPU. The class here computes the same estimator (Pyro's
``_compute_dice_elbo`` on the same traces) and returns the tensor; a non-finite loss is the
trainer's to catch (it names the step and the site).
"""

from __future__ import annotations

import pyro.infer
import torch

from ..pyro_internals import compute_dice_elbo, elbo_traces, is_identically_zero
from .base import ValueFromDifferentiableLoss

__all__ = ["TraceEnum_ELBO"]


class TraceEnum_ELBO(ValueFromDifferentiableLoss, pyro.infer.TraceEnum_ELBO):
    r"""Pyro's ``TraceEnum_ELBO`` (same estimator, same gradients) with the loss kept on the device.

    Guide sites marked for parallel enumeration (``@config_enumerate``,
    ``infer={"enumerate": "parallel"}``) take every value of their support, in dims to the left
    of the plates (``max_plate_nesting`` says how many dims the plates use); the ELBO

    .. math::
        \sum_y q(y \mid x)\, \mathbb{E}_{q(z \mid x, y)}\big[\log p(x, y, z) - \log q(y \mid x)
            - \log q(z \mid x, y)\big]

    is then exact in ``y`` and sampled in the other latents (Dice estimator: pathwise gradients
    for reparameterized sites, score-function terms for the others). Units: nats, summed over the
    batch (scaled as the sites are), averaged over the particles; the loss is its negative.

    ``strict_enumeration_warning`` defaults to ``False`` here: a pair without enumerated sites is
    trained as ``Trace_ELBO`` would (Pyro warns).
    """

    def __init__(self, *args, strict_enumeration_warning: bool = False, **kwargs):
        super().__init__(*args, strict_enumeration_warning=strict_enumeration_warning, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss (negative ELBO, nats summed over the batch) as a device tensor, no host sync.

        Raises:
            ValueError: the ELBO does not depend on any parameter (nothing to differentiate).
        """
        elbo = 0.0
        for model_trace, guide_trace in elbo_traces(self, model, guide, args, kwargs):
            particle = self.particle_elbo(model_trace, guide_trace, kwargs)
            if not is_identically_zero(particle):
                elbo = elbo + particle
        if not torch.is_tensor(elbo) or not elbo.requires_grad:
            raise ValueError(f"{type(self).__name__}: the objective ({elbo}) does not depend on any parameter of "
                             f"the pair: nothing to train (are the model's and guide's parameters pyro.param/PyroModule?)")
        return -elbo / self.num_particles

    def particle_elbo(self, model_trace, guide_trace, kwargs: dict):
        """The objective of one (vectorized) particle's traces: Pyro's Dice ELBO (nats, summed over
        the batch). Subclasses add terms here (:class:`~pyro_vae.objectives.SemiSupervisedELBO`)."""
        return compute_dice_elbo(model_trace, guide_trace)
