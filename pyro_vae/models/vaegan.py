"""The VAE-GAN (Larsen et al. 2016): a VAE whose reconstructions are also judged by a discriminator.

References:
    Larsen, Sønderby, Larochelle & Winther (2016), Autoencoding beyond pixels using a learned
    similarity metric, https://arxiv.org/abs/1512.09300
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

from ..nets import mlp
from .mlp import VAE

__all__ = ["VAEGAN", "Discriminator"]


class Discriminator(nn.Module):
    """``x (batch, data_dim) -> (logit (batch,), features (batch, feature_dim))``: an MLP with tanh
    layers ``data_dim -> hidden_dim -> feature_dim`` (the features: its last hidden layer, the
    paper's ``Dis_l``), then a linear logit of "x is data" (not a model sample).

    Args:
        data_dim: pixels of one flattened datapoint.
        hidden_dim, feature_dim: widths of its two hidden layers.
    """

    def __init__(self, data_dim: int, hidden_dim: int = 512, feature_dim: int = 256):
        super().__init__()
        self.features = mlp([data_dim, hidden_dim, feature_dim])
        self.logit = nn.Linear(feature_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.logit(features).squeeze(-1), features


class VAEGAN(VAE):
    """The Kingma & Welling MLP VAE (:class:`~pyro_vae.models.VAE`: same ``model`` and ``guide``,
    sites ``"z"`` and ``"x"``) with a :class:`Discriminator`, trained as a VAE-GAN.

    The generative model stays ``p(z) p(x | z)`` in pixel space, so its ELBO, test ELBO and
    ``log p̂(x)`` are what they are for any pair. The discriminator is registered by the model
    (``pyro.module("discriminator", ...)``, so that checkpoints hold it) but takes no part in
    ``p``; it is trained by its own objective, with its own optimizer, as a training phase. With
    :mod:`pyro_vae.objectives.vaegan`::

        vae = VAEGAN(784)
        elbo, discriminator_loss = vaegan_objectives(vae.discriminator)
        phase = TrainingPhase("discriminator", discriminator_loss,
                              make_optimizer("adam", vae.discriminator_lr), params="discriminator")
        train(vae.model, vae.guide, data, elbo=elbo, phases=[phase])

    (``pyro-vae train --model vaegan`` does this.) Encoder and decoder follow the ELBO plus the
    discriminator-feature reconstruction and the adversarial term of the decoder's samples
    (:class:`~pyro_vae.objectives.VAEGANLoss`); the discriminator learns to tell data from
    samples of ``p(x | z)`` at ``z`` from the guide and from the prior
    (:class:`~pyro_vae.objectives.DiscriminatorLoss`).

    Args:
        data_dim, latent_dim, hidden_dim, likelihood, beta: as for :class:`~pyro_vae.models.VAE`.
        discriminator_dim: the discriminator's hidden width (its feature layer is half of it).
        discriminator_lr: the learning rate its optimizer is meant to take (read by the CLI).
    """

    description = "Larsen et al. (2016) VAE-GAN: the MLP VAE plus a discriminator trained as its own phase"
    phase_params = ("discriminator",)  # train() refuses the pair without a phase that owns it

    def __init__(self, data_dim: int, latent_dim: int = 20, hidden_dim: int = 500, likelihood: str = "bernoulli",
                 beta: float = 1.0, discriminator_dim: int = 512, discriminator_lr: float = 2e-4):
        super().__init__(data_dim, latent_dim, hidden_dim, likelihood, beta)
        self.discriminator = Discriminator(data_dim, discriminator_dim, discriminator_dim // 2)
        self.discriminator_lr = float(discriminator_lr)

    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x | z) for a batch ``x`` of shape ``(batch, data_dim)``; registers the discriminator."""
        pyro.module("discriminator", self.discriminator)
        super().model(x)
