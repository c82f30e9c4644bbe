r"""Spectral regularization (Vahdat & Kautz 2020, NVAE, section 3.2; after Miyato et al. 2018): a
penalty on the largest singular value of every layer, which bounds the Lipschitz constant of the
networks and keeps a deep hierarchy's KL terms from exploding early in training.
"""

from __future__ import annotations

import torch
from pyro.infer import ELBO
from torch import nn

from .base import WrappedELBO

__all__ = ["SpectralRegularizedELBO", "largest_singular_values"]

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
"""The layers whose weights are penalized."""


def largest_singular_values(module: nn.Module) -> list[torch.Tensor]:
    """``sigma_max`` of each layer of ``module`` (:data:`LAYERS`): the largest singular value of the
    weight as a matrix ``(out, in * kernel)`` (``(in, out * kernel)`` for a transposed
    convolution, whose weight is stored the other way round), computed exactly (``svdvals``; NVAE
    estimates it by power iteration, which at these sizes saves nothing). Scalars, differentiable."""
    values = []
    for layer in module.modules():
        if isinstance(layer, LAYERS):
            values.append(torch.linalg.svdvals(layer.weight.flatten(1))[0])
    return values


class SpectralRegularizedELBO(WrappedELBO):
    r"""Another objective's ELBO, trained with NVAE's spectral regularization added.

    .. math::
        \text{gradient of}\quad -\mathcal{L}(x_{1..B}) + \lambda\, B \sum_l \sigma_{\max}(W_l)

    over a minibatch of ``B`` datapoints (NVAE's loss is a per-datapoint mean plus
    ``lambda sum_l sigma_l``; pyro-vae's losses are sums over the minibatch, hence the ``B``), for
    every layer ``W_l`` of ``module`` (:func:`largest_singular_values`).

    ``B`` is the size of the first argument of model and guide, the minibatch, which is what
    "per datapoint" means when the data plate is not subsampled; under a data scale (``N / B``) the
    ELBO is scaled and the penalty is not.

    The **value** it returns is the wrapped objective's alone (so a run's ``train_elbo`` stays
    that ELBO, in nats per datapoint); the **gradient** is the sum's. The penalty is not part of
    the model: log-likelihood estimates and test ELBOs do not see it. The checker applies the
    wrapped objective's rules.

    Args:
        elbo: the objective to regularize (a pyro-vae or Pyro ELBO object; see
            :func:`~pyro_vae.objectives.get_elbo` for names).
        module: the networks whose layers are penalized (e.g. the whole pair).
        coefficient: ``lambda`` (> 0), per datapoint; NVAE uses 0.1 to 1 on MNIST-sized models
            and anneals it; here it is constant.

    Example::

        >>> import pyro_vae
        >>> from pyro_vae.objectives import SpectralRegularizedELBO, get_elbo
        >>> vae = pyro_vae.NVAE(784, groups=2, hidden_dim=8)
        >>> objective = SpectralRegularizedELBO(get_elbo("trace"), vae, coefficient=0.1)
    """

    def __init__(self, elbo: ELBO, module: nn.Module, coefficient: float):
        super().__init__(elbo)
        if not coefficient > 0:
            raise ValueError(f"the spectral regularization coefficient must be > 0, got {coefficient}")
        if not largest_singular_values(module):
            raise ValueError(f"{type(module).__name__} has no Linear or convolution layer to regularize")
        self.module, self.coefficient = module, float(coefficient)

    def penalty(self) -> torch.Tensor:
        """``lambda sum_l sigma_max(W_l)``, per datapoint (a scalar tensor)."""
        return self.coefficient * torch.stack(largest_singular_values(self.module)).sum()

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The wrapped objective's loss (nats, summed over the minibatch) whose gradient also carries
        ``B`` times :meth:`penalty` (``B`` = the size of the first argument, the minibatch)."""
        loss = self.elbo.differentiable_loss(model, guide, *args, **kwargs)
        if not torch.is_grad_enabled():
            return loss
        penalty = args[0].shape[0] * self.penalty()
        return loss + (penalty - penalty.detach())
