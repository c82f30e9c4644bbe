"""WAE-GAN: the two players' losses against an independent computation, each reaching only its own
parameters, and the adversary pulling the aggregate posterior towards the prior on MNIST (MMD^2
lower than the same run without it, by more than the standard errors)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from pyro_vae import train
from pyro_vae.models.wae import WAEGAN
from pyro_vae.objectives.wae import wae_metrics
from pyro_vae.objectives.wae_gan import LatentDiscriminatorLoss, WAEGANLoss, wae_gan_objectives
from pyro_vae.optim import make_optimizer
from pyro_vae.training import TrainingPhase


def small_wae_gan() -> WAEGAN:
    pyro.set_rng_seed(0)
    return WAEGAN(784, latent_dim=8, hidden_dim=64, discriminator_dim=64)


def test_both_losses_equal_a_direct_computation_and_reach_only_their_own_parameters(mnist):
    wae, x, lam = small_wae_gan(), torch.bernoulli(mnist.train[:20]), 7.0
    with torch.no_grad():
        z = wae.encoder(x)  # the deterministic encoder: q(z | x) is a point mass here
        logit = lambda v: wae.latent_discriminator(v).double()
        reconstruction = -dist.Bernoulli(logits=wae.decoder(z)).log_prob(x).sum().double()
    with poutine.trace(param_only=True) as params:
        got = WAEGANLoss(wae.latent_discriminator, lam).differentiable_loss(wae.model, wae.guide, x)
    torch.testing.assert_close(got.double(), reconstruction + lam * F.softplus(-logit(z)).sum(), rtol=1e-5, atol=1e-3)
    assert {n.split("$$$")[0] for n in params.trace.nodes} >= {"encoder", "decoder"}
    adversary = list(wae.latent_discriminator.parameters())  # runs detached: this loss never moves the adversary
    assert all(g is None for g in torch.autograd.grad(got, adversary, allow_unused=True))

    pyro.set_rng_seed(4)
    with poutine.trace(param_only=True) as params:
        got = LatentDiscriminatorLoss(wae.latent_discriminator, lam).differentiable_loss(wae.model, wae.guide, x)
    pyro.set_rng_seed(4)  # the same prior draws: the model's prior at z, (20, 8)
    prior_z = dist.Normal(torch.zeros(20, 8), torch.ones(20, 8)).rsample()
    expected = lam * (F.softplus(-logit(prior_z)).sum() + F.softplus(logit(z)).sum())
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)
    grads = torch.autograd.grad(got, [p for n, p in pyro.get_param_store().named_parameters()
                                      if not n.startswith("latent_discriminator")], allow_unused=True)
    assert all(g is None for g in grads)  # the codes are drawn without gradient: only the adversary learns


def test_the_adversary_pulls_the_aggregate_posterior_towards_the_prior(mnist):
    data = mnist.subset(num_train=1000, num_test=400)
    mmd = {}
    for lam in (0.0, 100.0):
        pyro.clear_param_store()
        wae = small_wae_gan()
        elbo, adversary = wae_gan_objectives(wae.latent_discriminator, lam=max(lam, 1.0))
        elbo.lam = lam  # lam = 0: the same run with no adversarial term in the encoder's loss
        phase = TrainingPhase("latent_discriminator", adversary, make_optimizer("adam", 5e-4),
                              params="latent_discriminator")
        with pytest.warns(UserWarning, match="point mass"):  # the test ELBO of a point-mass guide is -inf
            train(wae.model, wae.guide, data, elbo=elbo, phases=[phase], epochs=6, batch_size=50, progress=False,
                  step="eager")
        mmd[lam] = wae_metrics(wae, data.test, batch_size=50)
    without, with_adversary = mmd[0.0], mmd[100.0]
    se = (without.mmd2_se ** 2 + with_adversary.mmd2_se ** 2) ** 0.5
    assert with_adversary.mmd2 < without.mmd2 - 4 * se, (without, with_adversary)


def test_the_checker_reads_the_wae_gan_label_as_the_waes_rules_and_get_elbo_says_what_to_do():
    from pyro_vae import ModelGuideError, check_model_guide
    from pyro_vae.objectives import get_elbo

    wae, x = small_wae_gan(), torch.bernoulli(torch.full((8, 784), 0.3))
    check_model_guide(wae.model, wae.guide, x, elbo="wae-gan")  # a point-mass guide: allowed under the WAE's rules
    with pytest.raises(ModelGuideError, match="point mass"):
        check_model_guide(wae.model, wae.guide, x, elbo="trace")
    with pytest.raises(ValueError, match=r"not an objective's name but a pair's label.*pair_phases"):
        get_elbo("wae-gan")
