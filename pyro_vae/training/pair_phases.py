"""The training phases of the shipped pairs that need them: :func:`pair_phases`, what ``pyro-vae
train`` (and the experiment scripts) give :func:`~pyro_vae.train` for a VAE-GAN or a WAE-GAN."""

from __future__ import annotations

from ..models.vaegan import VAEGAN
from ..models.wae import WAEGAN
from ..objectives import get_elbo, vaegan_objectives
from ..objectives.wae_gan import LatentDiscriminatorLoss, WAEGANLoss, wae_gan_objectives
from ..optim import make_optimizer
from .phases import TrainingPhase

__all__ = ["pair_phases"]


def pair_phases(vae, objective, num_particles: int = 1, free_bits: float = 0.0) -> tuple:
    """``(objective, free_bits, phases)`` to ``train`` a shipped pair ``vae`` with its objective
    ``objective`` (a name or an ELBO object) as ``pyro-vae train`` does. A VAE-GAN: its objective wrapped in
    :class:`~pyro_vae.objectives.VAEGANLoss` (which then carries the free bits) and its
    discriminator's training phase; a WAE-GAN: its own two objectives
    (:func:`~pyro_vae.objectives.wae_gan.wae_gan_objectives`; another ``--elbo`` is refused). Each
    discriminator takes Adam at the pair's ``discriminator_lr``. Any other pair: its objective as
    given, no phases. Each pair that needs a phase names its networks in ``phase_params``;
    :func:`~pyro_vae.train` refuses it without them."""
    if isinstance(vae, VAEGAN):  # get_elbo carries the particles and free bits, or refuses a conflict
        elbo, discriminator_loss = vaegan_objectives(vae.discriminator, get_elbo(objective, num_particles, free_bits))
        return elbo, 0.0, [TrainingPhase("discriminator", discriminator_loss,
                                         make_optimizer("adam", vae.discriminator_lr), params="discriminator")]
    if isinstance(vae, WAEGAN):
        if objective != vae.default_elbo and not isinstance(objective, WAEGANLoss):
            raise ValueError(f"the WAE-GAN trains with its own two objectives (encoder and decoder; latent "
                             f"discriminator), not {objective!r}: drop --elbo (or pass a WAEGANLoss)")
        if num_particles != 1:
            raise ValueError(f"the WAE-GAN's loss draws one code per datapoint (a point-mass encoder): num_particles "
                             f"must be 1, got {num_particles}")
        elbo = objective if isinstance(objective, WAEGANLoss) else wae_gan_objectives(vae.latent_discriminator)[0]
        discriminator_loss = LatentDiscriminatorLoss(elbo.latent_discriminator, elbo.lam, elbo.data_plate, elbo.name)
        return elbo, free_bits, [TrainingPhase("latent_discriminator", discriminator_loss,
                                               make_optimizer("adam", vae.discriminator_lr), params=elbo.name)]
    return objective, free_bits, []
