r"""WAE-GAN (Tolstikhin et al. 2018, Algorithm 2): the WAE's penalty on the aggregate posterior
``q(z)`` as an adversary in latent space, trained as a second player.

Over a minibatch of ``B`` datapoints (nats, summed over the minibatch like the other losses;
``s = softplus``, ``D`` the latent discriminator's logit of "drawn from the prior")::

    encoder and decoder:    -sum_n log p(x_n | z_n)  +  lambda sum_n s(-D(z_n)),   z_n ~ q(z | x_n)
    latent discriminator:    lambda sum_n [ s(-D(z~_n)) + s(D(z_n)) ],              z~_n ~ p(z)

``s(-D) = -log D``: the paper's ``- lambda log D(z_n)`` term of the encoder, and its discriminator's
``lambda [log D(z~) + log(1 - D(z))]`` ascended. The default ``lambda = 100`` keeps the paper's
balance, not its number: its ``lambda = 1`` (MNIST) weighs a cost ``0.05 ||x - G(z)||^2`` of about
1 per digit, where the Bernoulli ``-log p(x | z)`` here is about 100 nats. Measured once (6 epochs
on 1000 MNIST images, test ``MMD^2`` of one minibatch of 200): 7.85 without the adversary, 7.61 at
``lambda = 1``, 7.99 at 10, 4.75 at 100; ``tests/test_wae_gan.py`` checks 0 against 100. The
pair and the checker's rules are the WAE's (:class:`~pyro_vae.objectives.wae.WAELoss`: rule set
``"wae"``, one continuous latent site, a point-mass guide allowed). Neither value is a bound on
``log p(x)``.
"""

from __future__ import annotations

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from .base import LossFromDifferentiableLoss
from .vaegan import frozen
from .wae import wae_traces

__all__ = ["LatentDiscriminatorLoss", "WAEGANLoss", "wae_gan_objectives"]


class WAEGANLoss(LossFromDifferentiableLoss):
    """The encoder's and decoder's WAE-GAN loss (module docstring).

    Args:
        latent_discriminator: ``z (B, d) -> logit (B,)``; run with its parameters detached here,
            registered as ``pyro.module(name, ...)`` by :class:`LatentDiscriminatorLoss`.
        lam: ``lambda`` (>= 0; module docstring for the default).
        data_plate: the pair's plate over datapoints.
        name: the discriminator's ``pyro.module`` name (its training phase's ``params``).
    """

    checker_rules = "wae"

    def __init__(self, latent_discriminator: nn.Module, lam: float = 100.0, data_plate: str = "data",
                 name: str = "latent_discriminator"):
        if not lam >= 0:
            raise ValueError(f"the adversarial weight lambda must be >= 0, got {lam}")
        super().__init__(num_particles=1)
        self.latent_discriminator, self.lam, self.data_plate, self.name = latent_discriminator, float(lam), \
            data_plate, name

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        _, model_trace, z, _ = wae_traces(model, guide, self.data_plate, args, kwargs)
        reconstruction = -model_trace.log_prob_sum(lambda name, site: site["is_observed"])
        logit = frozen(self.latent_discriminator)(z)  # this loss never moves the adversary; its phase does
        return reconstruction + self.lam * F.softplus(-logit).sum()


class LatentDiscriminatorLoss(WAEGANLoss):
    """The latent discriminator's WAE-GAN loss (module docstring): the guide's codes (no gradient to
    the encoder) against as many prior draws. Same arguments as :class:`WAEGANLoss`."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        with torch.no_grad():
            _, _, z, prior_z = wae_traces(model, guide, self.data_plate, args, kwargs)
        discriminate = pyro.module(self.name, self.latent_discriminator)
        return self.lam * (F.softplus(-discriminate(prior_z)).sum() + F.softplus(discriminate(z)).sum())


def wae_gan_objectives(latent_discriminator: nn.Module, lam: float = 100.0,
                       data_plate: str = "data") -> tuple[WAEGANLoss, LatentDiscriminatorLoss]:
    """The two players' losses around ``latent_discriminator``, to train as ``train(..., elbo=first,
    phases=[TrainingPhase("latent_discriminator", second, optim, params="latent_discriminator")])``."""
    return (WAEGANLoss(latent_discriminator, lam, data_plate),
            LatentDiscriminatorLoss(latent_discriminator, lam, data_plate))
