r"""The VAE-GAN's two objectives (Larsen et al. 2016, section 2): the VAE's and the discriminator's.

Larsen et al. replace the pixel likelihood by a Gaussian in the features of a discriminator
``Dis_l`` and add a GAN. pyro-vae keeps the pair's pixel likelihood (so the ELBO, the test ELBO and
``log p̂(x)`` are those of the pair's generative model) and adds the two learned terms to the
*gradient* of the encoder and decoder:

.. math::

    \text{loss}_{\text{VAE}} = -\mathcal{L}(x) + \gamma \sum_n \tfrac12 \lVert \text{Dis}_l(x_n) -
    \text{Dis}_l(\tilde x_n) \rVert^2 + \alpha \sum_n \big[ s(-D(\tilde x'_n)) + s(-D(x^p_n)) \big]

    \text{loss}_{\text{Dis}} = \sum_n \big[ s(-D(x_n)) + s(D(\tilde x_n)) + s(D(x^p_n)) \big]

with ``s = softplus`` (so ``s(-D) = -log sigmoid(D)``: the non-saturating generator loss of
Goodfellow et al.), ``x̃ ~ p(x | z)``, ``z ~ q(z | x)`` (``x̃'``: the same with ``z`` held fixed,
so that, as in the paper, the GAN term does not train the encoder), ``x^p ~ p(x | z)``,
``z ~ p(z)``. The discriminator sees *draws* of the likelihood, not its mean, because the data it
is shown are draws too (binarized pixels): a mean would be told from data by its grey levels.
Draws without ``rsample`` (Bernoulli) pass gradients straight through (``draw + mean -
mean.detach()``). Sums are over the minibatch, in the units of the ELBO's loss (nats summed).

References:
    Larsen, Sønderby, Larochelle & Winther (2016), Autoencoding beyond pixels using a learned
    similarity metric, https://arxiv.org/abs/1512.09300
"""

from __future__ import annotations

import pyro
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import ELBO
from torch import nn

from .base import LossFromDifferentiableLoss, WrappedELBO
from .registry import get_elbo

__all__ = ["DiscriminatorLoss", "VAEGANLoss", "frozen", "generated_draws", "vaegan_objectives"]


def generated_draws(model, guide, x: torch.Tensor, *args, site: str = "x", **kwargs) -> dict[str, torch.Tensor]:
    """Draws of the observed site ``site`` from the model, each ``(batch, D)`` like ``x``:
    ``"reconstruction"`` at ``z ~ q(z | x)``, ``"fixed_z"`` the same with the guide's draws
    detached, and ``"prior"`` at ``z ~ p(z)``. Parameters are traced as usual; nothing is observed
    but ``site`` itself."""
    guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
    latents = {name: node["value"].detach() for name, node in guide_trace.nodes.items()
               if node["type"] == "sample" and not node["is_observed"]}
    runs = {
        "reconstruction": poutine.replay(model, trace=guide_trace),
        "fixed_z": poutine.condition(model, data=latents),
        "prior": model,
    }
    return {key: _draw(poutine.trace(fn).get_trace(x, *args, **kwargs).nodes[site]["fn"]) for key, fn in runs.items()}


def frozen(net: nn.Module):
    """``net`` as a function of its input only: its parameters enter detached (the gradient flows to
    the input, never to ``net``), so a loss that runs it cannot move it, whichever optimizer steps."""
    params = {name: p.detach() for name, p in net.named_parameters()}
    return lambda *inputs: torch.func.functional_call(net, params, inputs)


def _draw(fn) -> torch.Tensor:
    if fn.has_rsample:
        return fn.rsample()
    mean = fn.mean
    return fn.sample() + (mean - mean.detach())  # straight through: the draw's value, the mean's gradient


class VAEGANLoss(WrappedELBO):
    """The VAE's objective of a VAE-GAN: an ELBO whose gradient also carries the discriminator-feature
    reconstruction (weight ``feature_weight``, the paper's ``gamma``) and the generator's adversarial
    loss (weight ``adversarial_weight``) of the module docstring.

    The **value** it returns is the wrapped ELBO's loss alone (a run's ``train_elbo`` stays that
    ELBO, in nats per datapoint); the **gradient** is the sum's. The discriminator runs with its
    parameters detached (:func:`frozen`): this loss never moves it; its own phase does
    (:class:`DiscriminatorLoss`).

    Args:
        elbo: the pair's ELBO (an object with ``differentiable_loss``; see
            :func:`~pyro_vae.objectives.get_elbo`).
        discriminator: ``x -> (logit, features)``, e.g. :class:`~pyro_vae.models.vaegan.Discriminator`.
        feature_weight, adversarial_weight: ``gamma`` and ``alpha`` (>= 0).
        site: the model's observed site.
    """

    def __init__(self, elbo: ELBO, discriminator: nn.Module, feature_weight: float = 1.0,
                 adversarial_weight: float = 1.0, site: str = "x"):
        super().__init__(elbo)
        if feature_weight < 0 or adversarial_weight < 0:
            raise ValueError(f"the VAE-GAN weights must be >= 0, got feature_weight={feature_weight}, "
                             f"adversarial_weight={adversarial_weight}")
        self.discriminator, self.site = discriminator, site
        self.feature_weight, self.adversarial_weight = float(feature_weight), float(adversarial_weight)

    def differentiable_loss(self, model, guide, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The ELBO's loss (nats, summed over the minibatch) carrying the two terms' gradients."""
        loss = self.elbo.differentiable_loss(model, guide, x, *args, **kwargs)
        if not torch.is_grad_enabled():
            return loss
        draws = generated_draws(model, guide, x, *args, site=self.site, **kwargs)
        discriminate = frozen(self.discriminator)
        _, data_features = discriminate(x)
        _, features = discriminate(draws["reconstruction"])
        feature_loss = 0.5 * (features - data_features.detach()).pow(2).sum()
        adversarial = F.softplus(-discriminate(draws["fixed_z"])[0]).sum() + \
            F.softplus(-discriminate(draws["prior"])[0]).sum()
        extra = self.feature_weight * feature_loss + self.adversarial_weight * adversarial
        return loss + (extra - extra.detach())


class DiscriminatorLoss(LossFromDifferentiableLoss):
    """The discriminator's objective of a VAE-GAN: the logistic loss of telling the data ``x`` from
    the model's draws at ``z ~ q(z | x)`` and at ``z ~ p(z)`` (module docstring), in nats summed over
    the minibatch. The draws are made without gradients: only the discriminator learns from it.

    Args:
        discriminator: ``x -> (logit, features)``; registered as ``pyro.module(name, discriminator)``.
        site: the model's observed site.
        name: the discriminator's ``pyro.module`` name (the training phase's ``params``).
    """

    def __init__(self, discriminator: nn.Module, site: str = "x", name: str = "discriminator"):
        self.discriminator, self.site, self.name = discriminator, site, name
        self.num_particles, self.vectorize_particles = 1, False  # one draw of each kind per datapoint

    def differentiable_loss(self, model, guide, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.no_grad():
            draws = generated_draws(model, guide, x, *args, site=self.site, **kwargs)
        discriminate = pyro.module(self.name, self.discriminator)
        real, reconstructed, prior = (discriminate(v)[0] for v in (x, draws["reconstruction"], draws["prior"]))
        return F.softplus(-real).sum() + F.softplus(reconstructed).sum() + F.softplus(prior).sum()


def vaegan_objectives(discriminator: nn.Module, elbo: ELBO | None = None, feature_weight: float = 1.0,
                      adversarial_weight: float = 1.0) -> tuple[VAEGANLoss, DiscriminatorLoss]:
    """The two objectives of a VAE-GAN around ``discriminator``: the VAE's (``elbo`` default
    ``Trace_ELBO``) and the discriminator's, to train as ``train(..., elbo=first,
    phases=[TrainingPhase("discriminator", second, optim, params="discriminator")])``."""
    inner = get_elbo("trace") if elbo is None else elbo
    return VAEGANLoss(inner, discriminator, feature_weight, adversarial_weight), DiscriminatorLoss(discriminator)
