"""Base classes of pyro-vae's objectives: an ELBO whose whole interface follows from one
``differentiable_loss``.

pyro-vae's trainer calls only ``differentiable_loss(model, guide, *args)``, a device tensor (no
host sync). Pyro's ``pyro.infer.SVI`` calls ``loss`` and ``loss_and_grads``, which return Python
numbers; the classes here derive those two from ``differentiable_loss``, so every objective
serves both. Units: a *loss* is the negative ELBO, in nats, summed over the batch as the sites
are scaled.
"""

from __future__ import annotations

import torch

from ..pyro_internals import TracelessELBO, torch_item

__all__ = ["LossFromDifferentiableLoss", "ValueFromDifferentiableLoss"]


class ValueFromDifferentiableLoss:
    """Pyro's ``loss``/``loss_and_grads`` (numbers, for ``pyro.infer.SVI``) from
    ``differentiable_loss`` (a device tensor, what :func:`pyro_vae.train` calls)."""

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The loss as a number, without gradients (one host sync)."""
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss as a number, after ``backward()`` on it (gradients accumulate in ``.grad``)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return torch_item(loss)


class LossFromDifferentiableLoss(ValueFromDifferentiableLoss, TracelessELBO):
    """A Pyro ``ELBO`` that defines only ``differentiable_loss`` (it never asks Pyro's ``ELBO``
    machinery for traces; asking raises ``NotImplementedError``)."""
