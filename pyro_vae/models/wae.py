r"""The Wasserstein autoencoder (Tolstikhin, Bousquet, Gelly & Schölkopf 2018, "Wasserstein
Auto-Encoders", https://arxiv.org/abs/1711.01558) as a Pyro model/guide pair.

The generative model is a VAE's; the encoder is, by default, **deterministic**::

    model:  z_n ~ Normal(0, I)                       latent_dim (8 for MNIST, as in the paper)
            x_n ~ likelihood(decoder(z_n))           Bernoulli pixels by default
    guide:  z_n ~ Delta(encoder(x_n))                a point mass (stochastic=True: a diagonal Normal)

A WAE is not trained by an ELBO. It minimizes a reconstruction cost plus a penalty that pulls the
*aggregate* posterior ``q(z) = E_x q(z | x)`` towards the prior, here the maximum mean discrepancy
(WAE-MMD): :class:`~pyro_vae.objectives.wae.WAELoss` (``default_elbo = "wae"``). Each ``q(z | x)``
may be a point mass, since only the aggregate must match the prior.

A point mass over a continuous latent has no density: ``KL(q(z | x) || p(z))`` is infinite, so the
ELBO of the deterministic pair is ``-inf`` (what :func:`pyro_vae.evaluate_elbo` reports for it,
and so a run's ``test_elbo``), the checker refuses the pair under the ELBOs (``trace``, ...: they
would optimize ``log p(x, z*)``, a MAP objective) and
:func:`pyro_vae.estimate_log_likelihood` refuses it (a point mass is no importance-sampling
proposal). Report :func:`~pyro_vae.objectives.wae.wae_metrics` (reconstruction, MMD²) instead.
With ``stochastic=True`` the guide has a density: the ELBO and the log-likelihood estimate are
valid for the trained pair (the WAE objective does not maximize them).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from ..nets import MLPDecoder, MLPEncoder, mlp
from .base import PairModule

__all__ = ["WAE", "WAEGAN"]


class WAE(PairModule):
    """The WAE pair (module docstring): MLP encoder and decoder (tanh hidden layers), prior
    ``Normal(0, I)`` on ``z``.

    Sites: latent ``"z"`` (``(batch, latent_dim)``; the guide a ``Delta`` at the encoder's output,
    or with ``stochastic`` a diagonal Normal), observed ``"x"``. Nets: ``pyro.module("encoder")``
    (guide), ``"decoder"`` (model).

    Train it with :class:`~pyro_vae.objectives.wae.WAELoss` (``default_elbo = "wae"``, ``lambda =
    10``); the checker refuses the deterministic pair under the ELBOs.

    Args:
        data_dim: number of pixels ``D``.
        latent_dim: dimension of ``z`` (8: the paper's MNIST setting).
        hidden_dim: hidden units, one layer (an int) or one per entry (a sequence), each way.
        likelihood: observation model by name (:mod:`pyro_vae.likelihoods`).
        stochastic: a diagonal-Normal encoder (``loc`` and ``scale`` from the net, as the VAE's)
            instead of the point mass.

    References:
        Tolstikhin, Bousquet, Gelly & Schölkopf (2018), Wasserstein Auto-Encoders, ICLR,
        https://arxiv.org/abs/1711.01558

    Example::

        >>> import torch
        >>> from pyro_vae.models.wae import WAE
        >>> wae = WAE(784, latent_dim=8, hidden_dim=32)
        >>> wae.default_elbo, wae.embed(torch.zeros(3, 784)).shape
        ('wae', torch.Size([3, 8]))
    """

    description = "WAE-MMD (Tolstikhin et al. 2018): deterministic MLP encoder, N(0, I) prior, MMD penalty"
    default_elbo = "wae"  # objectives.wae.WAELoss, lambda = 10 (an object for another lambda)

    def __init__(self, data_dim: int, latent_dim: int = 8, hidden_dim: int | Sequence[int] = 500,
                 likelihood: str = "bernoulli", stochastic: bool = False):
        super().__init__(data_dim, latent_dim, likelihood)
        self.stochastic = bool(stochastic)
        # deterministic: an MLP with a linear output (MLPDecoder's net), read as x -> z
        self.encoder = (MLPEncoder(data_dim, hidden_dim, latent_dim) if self.stochastic
                        else MLPDecoder(data_dim, hidden_dim, latent_dim))
        self.decoder = MLPDecoder(latent_dim, hidden_dim, data_dim * self.likelihood.params_per_pixel)

    def prior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """``p(z) = Normal(0, I)`` over ``latent_dim``, on ``x``'s device and dtype."""
        return self.standard_normal(x, self.latent_dim)

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """``q(z | x)`` for ``x`` ``(..., data_dim)``: ``Delta(encoder(x))`` with event shape
        ``(latent_dim,)``, or with ``stochastic`` ``Normal(loc, scale)``."""
        if self.stochastic:
            loc, scale = self.encoder(x)
            return dist.Normal(loc, scale).to_event(1)
        return dist.Delta(self.encoder(x), event_dim=1)

    def model(self, x: torch.Tensor) -> None:
        """``p(z) p(x | z)`` for a batch ``x`` of shape ``(batch, data_dim)``."""
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """``q(z | x)`` (:meth:`posterior`) for a batch ``x`` of shape ``(batch, data_dim)``."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The latent code of each datapoint, ``(batch, latent_dim)``: the encoder's output (with
        ``stochastic``, the mean of ``q(z | x)``)."""
        return self.posterior(x).mean

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of ``p(x | z)`` for codes ``z`` ``(..., latent_dim)``: ``(..., data_dim)``
        (pixel probabilities for a Bernoulli likelihood)."""
        return self.likelihood(self.decoder(z)).mean

    @torch.no_grad()
    def sample(self, num_samples: int) -> torch.Tensor:
        """``num_samples`` images from the model, ``(num_samples, data_dim)``: the decoder's mean
        at ``z ~ p(z)`` (torch's global RNG)."""
        like = next(self.decoder.parameters())
        return self.decode(self.prior(like.new_zeros(1)).sample((num_samples,)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at the code of each datapoint (:meth:`embed`): ``(batch, data_dim)``."""
        return self.decode(self.embed(x))


class WAEGAN(WAE):
    """WAE-GAN (Tolstikhin et al. 2018, Algorithm 2): the :class:`WAE` pair whose penalty on the
    aggregate posterior is adversarial instead of the MMD: a ``latent_discriminator`` (an MLP
    ``latent_dim -> hidden -> hidden -> 1``, tanh; the paper's has four ReLU layers of 512) tells
    codes of the data from draws of the prior. It is registered by the model
    (``pyro.module("latent_discriminator", ...)``, so checkpoints hold it), takes no part in ``p``,
    and is trained as its own phase: :func:`~pyro_vae.objectives.wae_gan.wae_gan_objectives`
    (``pyro-vae train --model wae-gan`` does it).

    Args:
        data_dim, latent_dim, hidden_dim, likelihood, stochastic: as for :class:`WAE`.
        discriminator_dim: the latent discriminator's hidden width.
        discriminator_lr: the learning rate its optimizer is meant to take (the paper: 5e-4,
            against 1e-3 for encoder and decoder).
    """

    description = "WAE-GAN (Tolstikhin et al. 2018): the WAE with an adversarial penalty on z, its own phase"
    default_elbo = "wae-gan"  # a label, not an objective's name: the CLI trains it with wae_gan_objectives
    phase_params = ("latent_discriminator",)  # train() refuses the pair without a phase that owns it

    def __init__(self, data_dim: int, latent_dim: int = 8, hidden_dim: int | Sequence[int] = 500,
                 likelihood: str = "bernoulli", stochastic: bool = False, discriminator_dim: int = 512,
                 discriminator_lr: float = 5e-4):
        super().__init__(data_dim, latent_dim, hidden_dim, likelihood, stochastic)
        self.latent_discriminator = torch.nn.Sequential(mlp([latent_dim, discriminator_dim, discriminator_dim]),
                                                        torch.nn.Linear(discriminator_dim, 1), torch.nn.Flatten(0))
        self.discriminator_lr = float(discriminator_lr)

    def model(self, x: torch.Tensor) -> None:
        """``p(z) p(x | z)`` for a batch ``x``; registers the latent discriminator."""
        pyro.module("latent_discriminator", self.latent_discriminator)
        super().model(x)
