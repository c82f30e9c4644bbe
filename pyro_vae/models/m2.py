"""The semi-supervised M2 model of Kingma et al. (2014): a class ``y`` and a style ``z`` per image,
the class summed out by enumeration wherever it is not observed.

Generative model (``model``)::

    y_n ~ Categorical(1 / num_classes)               the class, observed where labelled
    z_n ~ Normal(0, I)                               latent_dim, the style
    x_n ~ likelihood(decoder(z_n, one_hot(y_n)))     data_dim

Inference network (``guide``)::

    y_n ~ Categorical(softmax(classifier(x_n)))      only where y_n is not observed; enumerated
    z_n ~ Normal(*encoder(x_n, one_hot(y_n)))

Labels come as the named per-datapoint argument ``y`` (``model(x, y=None)``): an integer class per
row, ``-1`` for a row without one; ``y=None`` means no row is labelled. Pyro's ``obs_mask`` idiom
with the two sites written out: the model observes the labelled rows at site ``"y"`` (masked to
them) and the guide samples the others at site ``"y_unobserved"`` (masked to them) with
``infer={"enumerate": "parallel"}``, so that ``TraceEnum_ELBO`` (``elbo="enum"``) sums the class
out exactly: the labelled rows get the paper's ``L(x, y)``, the others its ``U(x)`` (eq. 6-8).
The classification term ``alpha * log q(y | x)`` of the paper's eq. 9 is the objective's, not the
model's (:class:`~pyro_vae.objectives.SemiSupervisedELBO`), so that the estimators of a trained
pair see the generative model only: on rows with ``y = -1`` (or ``y=None``) they estimate
``log p(x)``, the class marginalized exactly.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ..nets import MLPDecoder, MLPEncoder, one_hot
from .base import PairModule

__all__ = ["SemiSupervisedVAE"]


class SemiSupervisedVAE(PairModule):
    """Kingma et al. (2014)'s M2: ``p(y) p(z) p(x | y, z)`` with ``q(y | x) q(z | x, y)``.

    Args:
        data_dim: pixels ``D`` of one flattened image.
        latent_dim: dimension of ``z`` (the paper: 50).
        hidden_dim: units of the one hidden layer of each net (the paper: 500).
        num_classes: number of classes (10 for MNIST).
        likelihood, beta: as for :class:`~pyro_vae.models.PairModule` (``beta`` scales the
            ``z`` site only).

    Nets: ``classifier`` (``x (..., D) -> (..., num_classes)`` logits of ``q(y | x)``; use
    :meth:`classify`), ``encoder`` (``[x, one_hot(y)] -> (loc, scale)`` of ``q(z | x, y)``) and
    ``decoder`` (``[z, one_hot(y)]`` to the likelihood's parameters), with tanh hidden layers.
    """

    description = "Kingma et al. (2014) M2: class y (summed out by enumeration) and style z; semi-supervised"
    default_elbo = "enum"

    def __init__(self, data_dim: int, latent_dim: int = 50, hidden_dim: int = 500, num_classes: int = 10,
                 likelihood: str = "bernoulli", beta: float = 1.0):
        super().__init__(data_dim, latent_dim, likelihood, beta)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.classifier = nn.Sequential(nn.Linear(data_dim, hidden_dim), nn.Tanh(),
                                        nn.Linear(hidden_dim, num_classes))
        self.encoder = MLPEncoder(data_dim + num_classes, hidden_dim, latent_dim)
        self.decoder = MLPDecoder(latent_dim + num_classes, hidden_dim, data_dim * self.likelihood.params_per_pixel)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under ``q(y | x)``: ``(batch,)`` int64 for ``x`` ``(batch, D)``."""
        return self.classifier(x).argmax(-1)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """``p(y) p(z) p(x | y, z)``; ``y`` ``(batch,)`` int64 class per row, ``-1`` where unknown."""
        pyro.module("m2", self)
        labelled = self._labelled(x, y)
        prior = dist.Categorical(logits=x.new_zeros(self.num_classes))
        with pyro.plate("data", x.shape[0]):
            y_value = self._class_site(prior, y, labelled, observe=True)
            with self.latent_scale():
                z = pyro.sample("z", self.standard_normal(x, self.latent_dim))
            pyro.sample("x", self.likelihood(self.decoder(_join(z, self._one_hot(y_value, x)))), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """``q(y | x)`` on the unlabelled rows (enumerated), then ``q(z | x, y)``."""
        pyro.module("m2", self)
        labelled = self._labelled(x, y)
        with pyro.plate("data", x.shape[0]):
            q_y = dist.Categorical(logits=self.classifier(x))
            y_value = self._class_site(q_y, y, labelled, observe=False)
            loc, scale = self.encoder(_join(x, self._one_hot(y_value, x)))
            with self.latent_scale():
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def _labelled(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor | None:
        """``(batch,)`` bool, which rows carry a label; ``None`` when ``y`` is ``None``."""
        if y is None:
            return None
        if y.shape != x.shape[:1] or y.dtype.is_floating_point:
            raise ValueError(f"y must be a ({x.shape[0]},) integer tensor (a class, or -1 for no label), "
                             f"got {tuple(y.shape)} {y.dtype}")
        return y >= 0

    def _class_site(self, fn, y, labelled, observe: bool) -> torch.Tensor:
        """The class of every row: the label where there is one (observed by the model at ``"y"``
        when ``observe``), else the value of site ``"y_unobserved"`` (enumerated by the guide);
        ``(batch,)``, or ``(num_classes, ..., batch)`` under enumeration."""
        infer = {} if observe else {"enumerate": "parallel"}  # the guide's site is the one enumerated
        if labelled is None:
            return pyro.sample("y_unobserved", fn, infer=infer)
        known = y.clamp(min=0)
        if observe:  # a label >= num_classes is refused by the one-hot code of y (eager or recorded), not by indexing
            with poutine.mask(mask=labelled):
                pyro.sample("y", fn, obs=known.clamp(max=self.num_classes - 1))
        with poutine.mask(mask=~labelled):
            guess = pyro.sample("y_unobserved", fn, infer=infer)
        return torch.where(labelled, known, guess)

    def _one_hot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return one_hot(y, self.num_classes, like.dtype, name="classes y")


def _join(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[a, b]`` along the last dim after broadcasting their leading dims (enumeration, particles)."""
    batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*batch, a.shape[-1]), b.expand(*batch, b.shape[-1])], -1)
