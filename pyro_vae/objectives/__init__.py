"""Training objectives by name: ``trace``, ``meanfield``, ``iwae``, ``enum`` and the gradient estimators.

Sign convention, everywhere in pyro-vae: an *ELBO* or *bound* is a lower bound on
``log p(x)`` in nats per datapoint (higher is better, typically negative, e.g. -100 on MNIST);
a *loss* is its negative, as Pyro's ELBO classes return it.

=========  ============================  ==============================================
name       class                         estimator of the per-datapoint bound
=========  ============================  ==============================================
trace      :class:`Trace_ELBO`           Monte Carlo KL: log p(x,z) - log q(z|x), z ~ q
meanfield  :class:`TraceMeanField_ELBO`  trace's, with the analytic KL(q || p) of each latent
                                         site where it is a term of the ELBO (*)
iwae       :class:`IWAE_ELBO`            log (1/K) sum_k w_k  (Burda et al. 2015)
enum       :class:`TraceEnum_ELBO`       trace's, with enumerated discrete guide sites
                                         summed out exactly (Pyro's TraceEnum_ELBO)
stl        :class:`STL_ELBO`             trace's bound, sticking-the-landing gradient
                                         (Roeder et al. 2017)
iwae-stl   :class:`IWAE_STL`             iwae's bound, STL gradient (encoder's biased)
dreg       :class:`IWAE_DReG`            iwae's bound, doubly reparameterized gradient
                                         (Tucker et al. 2018)
miwae      :class:`MIWAE_ELBO`           mean of M IWAE_K bounds (Rainforth et al. 2018)
piwae      :class:`PIWAE_ELBO`           IWAE_MK for the decoder, MIWAE for the encoder
ciwae      :class:`CIWAE_ELBO`           beta ELBO + (1 - beta) IWAE_K
=========  ============================  ==============================================

The last six: :mod:`pyro_vae.objectives.gradients`, where their gradients are derived.

By object only: :class:`SpectralRegularizedELBO` (any of these, with NVAE's spectral
regularization in its gradient, Vahdat & Kautz 2020), and :class:`SemiSupervisedELBO` (Kingma et
al. 2014, eq. 9), ``enum``'s bound plus ``alpha log q(y | x)`` on the labelled rows, for the
semi-supervised M2.

``Trace_ELBO`` here is Pyro's class (a subclass, same estimator, same gradients) whose loss stays a
device tensor: Pyro's reads every site's log-density to the host with ``.item()`` and checks the
loss for NaN in the forward and backward pass, up to seven host syncs per step on a GPU.

(*) ``TraceMeanField_ELBO`` here is *not* Pyro's, which takes the analytic KL at every site and so
optimizes another objective for guides that run against the model's order (e.g. the shipped
``HierarchicalVAE``), with no score-function term for discrete latents. Ours decides per site from
the dependency structure of the two programs (:mod:`pyro_vae.check.structure`, where the
condition is derived), falls back to the sampled ``log p - log q`` elsewhere, and adds
``Trace_ELBO``'s score-function terms for guide sites without ``rsample``: the same ELBO as
``trace`` for every pair, with lower variance where closed forms apply.

Two modifications of the KL term for any pair, outside the table:

* **KL warm-up / annealing** (Bowman et al. 2016, Sønderby et al. 2016): :func:`scale_latents`
  multiplies the log-densities of every *latent* site, in model and guide alike, by a factor
  ``beta`` (the trainer raises it linearly from ``1/N`` to 1 over ``N`` steps). Scale both
  functions: a KL has one weight (a site scaled differently in model and guide gets the sampled
  term under ``meanfield`` and is refused under free bits).
* **Free bits** (Kingma et al. 2016): :class:`FreeBitsELBO` replaces the KL of each latent
  dimension, unscaled and averaged over the minibatch, by ``max(lambda, KL_j)``; ``beta`` and the
  data scale multiply the clamped term afterwards.

One module per concept:

===================  =============================================================================
module               contents
===================  =============================================================================
``base``             :class:`ValueFromDifferentiableLoss`, :class:`LossFromDifferentiableLoss`,
                     :class:`WrappedELBO`
``trace``            :class:`Trace_ELBO`
``baselines``        :class:`TraceBaseline_ELBO` (Pyro's baselines on the score-function terms)
``meanfield``        :class:`TraceMeanField_ELBO`
``iwae``             :class:`IWAE_ELBO`
``enum``             :class:`TraceEnum_ELBO`
``free_bits``        :class:`FreeBitsELBO`
``gradients``        :class:`STL_ELBO`, :class:`IWAE_STL`, :class:`IWAE_DReG`, :class:`MIWAE_ELBO`,
                     :class:`PIWAE_ELBO`, :class:`CIWAE_ELBO` (:class:`SplitGradientELBO`)
``semi_supervised``  :class:`SemiSupervisedELBO`
``spectral``         :class:`SpectralRegularizedELBO` (NVAE's spectral regularization)
``vq``               :class:`VQVAELoss` (the VQ-VAE's loss; its value the uniform-prior ELBO)
``wae``              :class:`WAELoss` (WAE-MMD: reconstruction + MMD penalty; not a bound), :func:`wae_metrics`
``vaegan``           :class:`VAEGANLoss`, :class:`DiscriminatorLoss` (the VAE-GAN's two players)
``wae_gan``          :class:`~pyro_vae.objectives.wae_gan.WAEGANLoss`, its latent discriminator's loss (WAE-GAN)
``scaling``          :func:`scale_latents`
``registry``         :data:`ELBO_NAMES`, :func:`get_elbo` (names or ELBO objects), :func:`elbo_label`
===================  =============================================================================

Pyro's private names are reached through :mod:`pyro_vae.pyro_internals` only.
"""

from .base import LossFromDifferentiableLoss, ValueFromDifferentiableLoss
from .baselines import TraceBaseline_ELBO
from .enum import TraceEnum_ELBO
from .free_bits import FreeBitsELBO
from .gradients import CIWAE_ELBO, IWAE_DReG, IWAE_STL, MIWAE_ELBO, PIWAE_ELBO, STL_ELBO, SplitGradientELBO
from .iwae import IWAE_ELBO
from .meanfield import TraceMeanField_ELBO
from .registry import ELBO_NAMES, GRADIENT_ESTIMATORS, elbo_label, get_elbo
from .scaling import scale_latents
from .semi_supervised import SemiSupervisedELBO
from .spectral import SpectralRegularizedELBO
from .vaegan import DiscriminatorLoss, VAEGANLoss, vaegan_objectives
from .vq import VQVAELoss
from .wae import WAELoss, wae_metrics
from .trace import Trace_ELBO

__all__ = [
    "CIWAE_ELBO",
    "DiscriminatorLoss",
    "ELBO_NAMES",
    "GRADIENT_ESTIMATORS",
    "IWAE_DReG",
    "IWAE_ELBO",
    "IWAE_STL",
    "MIWAE_ELBO",
    "PIWAE_ELBO",
    "STL_ELBO",
    "SplitGradientELBO",
    "FreeBitsELBO",
    "LossFromDifferentiableLoss",
    "SemiSupervisedELBO",
    "SpectralRegularizedELBO",
    "TraceBaseline_ELBO",
    "TraceEnum_ELBO",
    "TraceMeanField_ELBO",
    "Trace_ELBO",
    "VAEGANLoss",
    "VQVAELoss",
    "WAELoss",
    "ValueFromDifferentiableLoss",
    "elbo_label",
    "get_elbo",
    "scale_latents",
    "vaegan_objectives",
]
