"""Base classes of pyro-vae's objectives: an ELBO whose whole interface follows from one
``differentiable_loss``.

pyro-vae's trainer calls only ``differentiable_loss(model, guide, *args)``, a device tensor (no
host sync). Pyro's ``pyro.infer.SVI`` calls ``loss`` and ``loss_and_grads``, which return Python
numbers; the classes here derive those two from ``differentiable_loss``, so every objective
serves both. Units: a *loss* is the negative ELBO, in nats, summed over the batch as the sites
are scaled.
"""

from __future__ import annotations

import math

import torch

from ..pyro_internals import TracelessELBO, torch_item

__all__ = ["LossFromDifferentiableLoss", "OwnPlateDepth", "ValueFromDifferentiableLoss"]


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


class OwnPlateDepth:
    """``max_plate_nesting`` as Pyro's ``ELBO`` counts it (the pair's plate depth, plus one for a
    vectorized particle plate of more than one particle) over the pair's own depth in ``_nesting``
    (``None``: guessed at the first call, which runs the pair once and so draws from the RNGs).
    Setting it, as :func:`~pyro_vae.objectives.get_elbo` does for an object built without one,
    sets ``_nesting``: the objective uses what it records."""

    _nesting: int | None = None

    def _particle_dims(self) -> int:
        return int(getattr(self, "vectorize_particles", False) and getattr(self, "num_particles", 1) > 1)

    @property
    def max_plate_nesting(self) -> float:
        return math.inf if self._nesting is None else self._nesting + self._particle_dims()

    @max_plate_nesting.setter
    def max_plate_nesting(self, value: float) -> None:
        self._nesting = None if value == math.inf else int(value) - self._particle_dims()
