"""Base classes of pyro-vae's objectives: an ELBO whose whole interface follows from one
``differentiable_loss``.

pyro-vae's trainer calls only ``differentiable_loss(model, guide, *args)``, a device tensor (no
host sync). Pyro's ``pyro.infer.SVI`` calls ``loss`` and ``loss_and_grads``, which return Python
numbers; the classes here derive those two from ``differentiable_loss``, so every objective
serves both. Units: a *loss* is the negative ELBO, in nats, summed over the batch as the sites
are scaled.
"""

from __future__ import annotations

import copy
import math

import torch
from pyro.infer import ELBO

from ..pyro_internals import TracelessELBO, torch_item

__all__ = ["LossFromDifferentiableLoss", "OwnPlateDepth", "ValueFromDifferentiableLoss", "WrappedELBO"]


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


class WrappedELBO(LossFromDifferentiableLoss):
    """An objective around another ELBO (``self.elbo``) whose settings it takes as its own:
    ``num_particles``, ``vectorize_particles``, ``data_plate``, ``max_plate_nesting`` (setting it, as
    :func:`~pyro_vae.objectives.get_elbo` does, sets the inner one's, on a copy). The checker applies
    the inner objective's rules (:func:`~pyro_vae.check.objective_rules.rules_of`).

    Raises:
        TypeError: ``elbo`` is not an ``ELBO`` object with a ``differentiable_loss``.
    """

    def __init__(self, elbo: ELBO):
        if not isinstance(elbo, ELBO) or not callable(getattr(elbo, "differentiable_loss", None)):
            raise TypeError(f"{type(self).__name__} wraps an ELBO object with a differentiable_loss, not "
                            f"{type(elbo).__name__}")
        self.elbo = elbo

    num_particles = property(lambda self: self.elbo.num_particles)
    vectorize_particles = property(lambda self: getattr(self.elbo, "vectorize_particles", False))

    @property
    def data_plate(self) -> str:
        """The wrapped objective's (an ``AttributeError`` where it names none)."""
        return self.elbo.data_plate

    @property
    def max_plate_nesting(self):
        return self.elbo.max_plate_nesting

    @max_plate_nesting.setter
    def max_plate_nesting(self, value):  # get_elbo fills an unset one, on a copy: the inner one too
        self.elbo = copy.copy(self.elbo)
        self.elbo.max_plate_nesting = value
