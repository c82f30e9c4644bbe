"""Right or refused, free bits: the clamp acts on the unscaled per-datapoint KL of each dimension
(beta, KL warm-up and the subsampling scale multiply the clamped term afterwards), and pairs for
which free bits cannot be computed are refused by name.

The pairs are written here as a user would write them; the KL per dimension is computed by hand
with the closed form for two Normals, independently of torch's ``kl_divergence``.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_vae import ModelGuideError, check_model_guide, train
from pyro_vae.models import HierarchicalVAE
from pyro_vae.objectives import FreeBitsELBO, scale_latents
from pyro_vae.training import KLSchedule

N, B, D, Z = 1000, 8, 5, 3


def _pair(beta: float = 1.0, subsample=None):
    """A linear-Gaussian VAE with a KL weight ``beta`` on the latent in model and guide, and a data
    plate of ``N`` points subsampled to the indices ``subsample`` (``None``: the batch itself)."""
    def plate(x):
        return pyro.plate("data", N, subsample=subsample) if subsample is not None else pyro.plate("data", len(x))

    def model(x):
        w = pyro.param("w", torch.linspace(-1.0, 1.0, Z * D).reshape(Z, D))
        with plate(x):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w, 0.7).to_event(1), obs=x)

    def guide(x):
        c = pyro.param("c", torch.linspace(-0.8, 0.8, D * Z).reshape(D, Z))
        log_s = pyro.param("log_s", torch.tensor([-1.5, -0.4, 0.0]))
        with plate(x), poutine.scale(scale=beta):
            pyro.sample("z", dist.Normal(x @ c, log_s.exp()).to_event(1))

    return model, guide


def _by_hand(x, seed: int):
    """``(sum_n log p(x_n | z_n), per-dimension KL (B, Z))`` at the guide's draw for ``seed``."""
    pyro.set_rng_seed(seed)
    z = poutine.trace(_pair()[1]).get_trace(x).nodes["z"]["value"]
    w, c, log_s = pyro.param("w"), pyro.param("c"), pyro.param("log_s")
    loc, scale = x @ c, log_s.exp()
    kl = -torch.log(scale) + (scale ** 2 + loc ** 2) / 2 - 0.5  # KL(N(loc, scale) || N(0, 1)) per dimension
    log_lik = (-0.5 * ((x - z @ w) / 0.7) ** 2 - math.log(0.7) - 0.5 * math.log(2 * math.pi)).sum()
    return log_lik, kl


def _threshold_between(kl_mean: torch.Tensor, factor: float) -> float:
    """A lambda for which clamping the scaled KL (``factor * KL``) differs from clamping the KL."""
    lam = kl_mean.median().item()
    scaled = B * (factor * kl_mean).clamp(min=lam).sum()
    unscaled = factor * B * kl_mean.clamp(min=lam).sum()
    assert abs(scaled - unscaled) > 0.01 * abs(unscaled), "lambda does not tell the two apart"
    return lam


@pytest.mark.parametrize("how", ["beta 0.5 (poutine.scale)", "warm-up 0.25 (scale_latents)"])
def test_the_clamp_acts_on_the_unscaled_kl(how):
    x = torch.randn(B, D)
    if how.startswith("beta"):
        factor, (model, guide) = 0.5, _pair(beta=0.5)
    else:
        factor, (model, guide) = 0.25, _pair()
        model, guide = scale_latents(model, lambda: 0.25), scale_latents(guide, lambda: 0.25)
    FreeBitsELBO(0.0).differentiable_loss(model, guide, x)  # creates the params
    log_lik, kl = _by_hand(x, seed=3)
    lam = _threshold_between(kl.mean(0), factor)
    pyro.set_rng_seed(3)
    loss = FreeBitsELBO(lam).differentiable_loss(model, guide, x)
    expected = -log_lik + factor * B * kl.mean(0).clamp(min=lam).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_subsampling_scales_the_clamped_term_not_the_kl():
    """Under pyro.plate("data", N, subsample=idx) every site carries N / B; the clamp still sees the
    per-datapoint KL, and the whole objective is N / B times the batch's."""
    x = torch.randn(B, D)
    model, guide = _pair(subsample=torch.arange(B))
    FreeBitsELBO(0.0).differentiable_loss(model, guide, x)
    log_lik, kl = _by_hand(x, seed=4)
    lam = _threshold_between(kl.mean(0), N / B)
    pyro.set_rng_seed(4)
    loss = FreeBitsELBO(lam).differentiable_loss(model, guide, x)
    expected = (N / B) * (-log_lik + B * kl.mean(0).clamp(min=lam).sum())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_free_bits_refuses_a_kl_that_is_not_an_elbo_term():
    """The shipped HierarchicalVAE (guide bottom-up, model top-down): the KL of z1 given z2 is not
    a term of its ELBO, so there is no per-dimension KL to clamp."""
    vae = HierarchicalVAE(D, latent_dim=2, hidden_dim=8, stochastic_layers=2, likelihood="gaussian")
    x = torch.randn(40, D)
    check_model_guide(vae.model, vae.guide, x, elbo="meanfield")  # meanfield alone is fine: it falls back
    message = r"latent site 'z1': free bits .* depends on 'z2', which the guide draws after .* elbo=\"trace\""
    with pytest.raises(ModelGuideError, match=message):
        check_model_guide(vae.model, vae.guide, x, elbo="meanfield", free_bits=0.1)
    with pytest.raises(ModelGuideError, match=message):
        FreeBitsELBO(0.1).differentiable_loss(vae.model, vae.guide, x[:B])
    before = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    with pytest.raises(ModelGuideError, match=message):
        train(vae.model, vae.guide, x, elbo="meanfield", schedule=KLSchedule(free_bits=0.1), batch_size=10,
              progress=False)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items()), "no step was applied"


def test_free_bits_refuses_a_non_reparameterizable_site():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(x.new_full((Z,), 0.3)).to_event(1))
            pyro.sample("x", dist.Normal(c.sum(-1, keepdim=True).expand(*c.shape[:-1], D), 1.0).to_event(1), obs=x)

    def guide(x):
        a = pyro.param("a", torch.zeros(D, Z))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(logits=x @ a).to_event(1))

    x = torch.randn(20, D)
    check_model_guide(model, guide, x, elbo="meanfield")  # meanfield has the score-function terms
    message = r"guide site 'c' \(Bernoulli\) is not reparameterizable: the free-bits objective"
    with pytest.raises(ModelGuideError, match=message):
        check_model_guide(model, guide, x, elbo="meanfield", free_bits=0.1)
    with pytest.raises(ModelGuideError, match=message):
        FreeBitsELBO(0.1).differentiable_loss(model, guide, x[:B])


def test_free_bits_refuses_a_latent_scaled_in_the_model_only():
    model, _ = _pair(beta=0.5)
    _, guide = _pair(beta=1.0)
    with pytest.raises(ModelGuideError, match=r"latent site 'z': the model and the guide put different scales"):
        check_model_guide(model, guide, torch.randn(20, D), elbo="meanfield", free_bits=0.1)
