"""STL, DReG, MIWAE, PIWAE and CIWAE (pyro_vae.objectives.gradients): each gradient against an
exact one (a linear-Gaussian pair whose ELBO is known in closed form), against an independent
estimator of the same quantity (plain IWAE, with a tolerance of 4 Monte Carlo standard errors),
or, where two estimators share their draws, against the other one exactly.

The pair is written here as a Pyro user writes one: nn.Linear nets through pyro.module, a data
plate, z ~ N(0, I), x ~ N(W z + b, I), q(z | x) = N(A x + c, diag(exp(2 s))).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae.objectives import IWAE_ELBO, Trace_ELBO
from pyro_vae.objectives.gradients import CIWAE_ELBO, IWAE_DReG, IWAE_STL, MIWAE_ELBO, PIWAE_ELBO, STL_ELBO

D, Z, B = 3, 2, 4


class LinearGaussian(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.decoder = nn.Linear(Z, D)
        self.encoder = nn.Linear(D, Z)
        self.log_scale = nn.Parameter(torch.full((Z,), -0.5))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self)  # the encoder and the scales (the decoder is the model's)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.encoder(x), self.log_scale.exp()).to_event(1))

    def exact_elbo(self, x):
        """sum_n ELBO(x_n) in closed form: E_q log N(x; W z + b, I) - KL(q || N(0, I))."""
        m, s = self.encoder(x), self.log_scale.exp()
        W = self.decoder.weight
        mean = self.decoder(m)
        expected_log_lik = (-0.5 * math.log(2 * math.pi) - 0.5 * ((x - mean) ** 2 + (W ** 2 * s ** 2).sum(1))).sum(1)
        kl = 0.5 * (s ** 2 + m ** 2 - 1 - 2 * torch.log(s)).sum(1)
        return (expected_log_lik - kl).sum()


def data():
    return torch.randn(B, D, generator=torch.Generator().manual_seed(1)) * 1.5


def names(pair):
    return [n for n, _ in pair.named_parameters()]


def gradient(pair, objective, x, seed=None):
    """The flat gradient of the objective's loss (``-bound``) with respect to all the pair's
    parameters, in ``names(pair)`` order."""
    if seed is not None:
        pyro.set_rng_seed(seed)
    params = list(pair.parameters())
    loss = objective.differentiable_loss(pair.model, pair.guide, x)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]), float(loss.detach())


def decoder_part(pair, flat):
    sizes = [p.numel() for p in pair.parameters()]
    parts = torch.split(flat, sizes)
    return torch.cat([g for (n, _), g in zip(pair.named_parameters(), parts) if n.startswith("decoder")])


def encoder_part(pair, flat):
    sizes = [p.numel() for p in pair.parameters()]
    parts = torch.split(flat, sizes)
    return torch.cat([g for (n, _), g in zip(pair.named_parameters(), parts) if not n.startswith("decoder")])


def repeated(pair, objective, x, repeats, seed):
    pyro.set_rng_seed(seed)
    return torch.stack([gradient(pair, objective, x)[0] for _ in range(repeats)]).double()


def test_stl_is_unbiased_for_the_exact_elbo_gradient():
    pair, x = LinearGaussian(), data()
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(-pair.exact_elbo(x), list(pair.parameters()))])
    draws = repeated(pair, STL_ELBO(num_particles=20, max_plate_nesting=1), x, 200, seed=0)
    se = draws.std(0) / math.sqrt(len(draws))
    assert torch.all((draws.mean(0) - exact.double()).abs() < 4 * se + 1e-6), (draws.mean(0), exact, se)


@pytest.mark.parametrize("ours, plain", [(STL_ELBO(1, max_plate_nesting=1), Trace_ELBO(1, max_plate_nesting=1)),
                                         (IWAE_STL(8, max_plate_nesting=1), IWAE_ELBO(8, max_plate_nesting=1)),
                                         (IWAE_DReG(8, max_plate_nesting=1), IWAE_ELBO(8, max_plate_nesting=1))])
def test_the_encoder_gradient_is_zero_at_the_exact_posterior(ours, plain):
    """Roeder et al.'s and Tucker et al.'s property: with q the exact posterior, log w = log p(x)
    whatever z, so the path part vanishes and each draw of the encoder's gradient is 0; the plain
    estimators keep the score part, whose draws are not (its mean is 0)."""
    pair, x = LinearGaussian(), data()
    with torch.no_grad():  # orthogonal columns: the posterior's covariance (I + W^T W)^-1 is diagonal
        pair.decoder.weight.copy_(torch.tensor([[1.0, 0.5], [0.0, -1.0], [1.0, -0.5]]))
        W, b = pair.decoder.weight, pair.decoder.bias
        cov = torch.linalg.inv(torch.eye(Z) + W.T @ W)
        assert torch.allclose(cov, torch.diag(torch.diag(cov)))
        pair.encoder.weight.copy_(cov @ W.T)
        pair.encoder.bias.copy_(-(cov @ W.T @ b))
        pair.log_scale.copy_(0.5 * torch.log(torch.diag(cov)))
    draws = encoder_part(pair, repeated(pair, ours, x, 30, seed=0).T)  # (encoder parameters, draws)
    plain_draws = encoder_part(pair, repeated(pair, plain, x, 30, seed=0).T)
    assert float(draws.abs().max()) < 1e-4
    assert float(plain_draws.std(1).max()) > 0.1


def test_dreg_is_unbiased_for_the_iwae_gradient():
    pair, x = LinearGaussian(), data()
    dreg = repeated(pair, IWAE_DReG(8, max_plate_nesting=1), x, 300, seed=0)
    iwae = repeated(pair, IWAE_ELBO(8, max_plate_nesting=1), x, 300, seed=1)
    se = (dreg.var(0) / len(dreg) + iwae.var(0) / len(iwae)).sqrt()
    assert torch.all((dreg.mean(0) - iwae.mean(0)).abs() < 4 * se + 1e-6), (dreg.mean(0), iwae.mean(0), se)


@pytest.mark.parametrize("objective", [IWAE_STL(6, max_plate_nesting=1), IWAE_DReG(6, max_plate_nesting=1)])
def test_stl_and_dreg_keep_iwaes_value_and_decoder_gradient_on_the_same_draws(objective):
    pair, x = LinearGaussian(), data()
    ours, ours_loss = gradient(pair, objective, x, seed=3)
    iwae, iwae_loss = gradient(pair, IWAE_ELBO(6, max_plate_nesting=1), x, seed=3)
    assert ours_loss == pytest.approx(iwae_loss, rel=1e-6)
    assert torch.allclose(decoder_part(pair, ours), decoder_part(pair, iwae), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(encoder_part(pair, ours), encoder_part(pair, iwae), rtol=1e-3)  # the encoder's differs


def test_miwae_with_one_group_is_iwae_and_ciwae_spans_elbo_and_iwae():
    pair, x = LinearGaussian(), data()
    iwae, iwae_loss = gradient(pair, IWAE_ELBO(5, max_plate_nesting=1), x, seed=4)
    for objective in (MIWAE_ELBO(groups=1, num_particles=5, max_plate_nesting=1),
                      CIWAE_ELBO(beta=0.0, num_particles=5, max_plate_nesting=1)):
        grad, loss = gradient(pair, objective, x, seed=4)
        assert loss == pytest.approx(iwae_loss, rel=1e-6) and torch.allclose(grad, iwae, rtol=1e-5, atol=1e-6)
    # beta = 1: the ELBO averaged over the 5 draws, MIWAE(5, 1) the same bound
    elbo, elbo_loss = gradient(pair, MIWAE_ELBO(groups=5, num_particles=1, max_plate_nesting=1), x, seed=4)
    grad, loss = gradient(pair, CIWAE_ELBO(beta=1.0, num_particles=5, max_plate_nesting=1), x, seed=4)
    assert loss == pytest.approx(elbo_loss, rel=1e-6) and torch.allclose(grad, elbo, rtol=1e-5, atol=1e-6)
    # beta = 0.3: the same mixture of the two gradients
    mixed, _ = gradient(pair, CIWAE_ELBO(beta=0.3, num_particles=5, max_plate_nesting=1), x, seed=4)
    assert torch.allclose(mixed, 0.3 * elbo + 0.7 * iwae, rtol=1e-5, atol=1e-6)


def test_miwae_is_the_mean_of_independent_iwae_bounds():
    pair, x = LinearGaussian(), data()
    with torch.no_grad():
        miwae = torch.tensor([MIWAE_ELBO(4, 3, max_plate_nesting=1).loss(pair.model, pair.guide, x)
                              for _ in range(400)], dtype=torch.float64)
        iwae = torch.tensor([IWAE_ELBO(3, max_plate_nesting=1).loss(pair.model, pair.guide, x) for _ in range(400)],
                            dtype=torch.float64)
    se = math.sqrt(miwae.var() / 400 + iwae.var() / 400)
    assert abs(float(miwae.mean() - iwae.mean())) < 4 * se
    assert miwae.std() < iwae.std()  # the mean of 4 independent bounds


def test_piwae_trains_the_decoder_on_iwae_mk_and_the_encoder_on_miwae():
    pair, x = LinearGaussian(), data()
    piwae, piwae_loss = gradient(pair, PIWAE_ELBO(groups=3, num_particles=4, max_plate_nesting=1), x, seed=5)
    iwae, iwae_loss = gradient(pair, IWAE_ELBO(12, max_plate_nesting=1), x, seed=5)
    miwae, _ = gradient(pair, MIWAE_ELBO(groups=3, num_particles=4, max_plate_nesting=1), x, seed=5)
    assert piwae_loss == pytest.approx(iwae_loss, rel=1e-6)
    assert torch.allclose(decoder_part(pair, piwae), decoder_part(pair, iwae), rtol=1e-5, atol=1e-6)
    assert torch.allclose(encoder_part(pair, piwae), encoder_part(pair, miwae), rtol=1e-5, atol=1e-6)


def test_bad_settings_and_a_guide_that_cannot_be_reparameterized_are_refused():
    with pytest.raises(ValueError, match="num_particles and groups must be >= 1, got 0 and 1"):
        IWAE_DReG(0)
    with pytest.raises(ValueError, match=r"CIWAE's beta must lie in \[0, 1\], got 1.5"):
        CIWAE_ELBO(beta=1.5)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Bernoulli(0.5 * x.new_ones(())))
            pyro.sample("x", dist.Normal(y, 1.0).to_event(0), obs=x[:, 0])

    def guide(x):
        p = pyro.param("p", torch.tensor(0.4))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Bernoulli(p))

    with pytest.raises(ValueError, match="guide site 'y' \\(Bernoulli\\) is not reparameterizable"):
        IWAE_DReG(3, max_plate_nesting=1).differentiable_loss(model, guide, data())


def test_an_object_trains_exactly_as_its_name_does():
    """``get_elbo``/``train`` fill the plate depth of an object built without one, so it does not run
    the pair once more to guess it (which would draw from the RNGs): the same parameters, bitwise."""
    from pyro_vae import train

    x = torch.randn(16, D, generator=torch.Generator().manual_seed(2))
    finals = []
    for elbo in ("dreg", IWAE_DReG(3)):
        pair = LinearGaussian()
        train(pair.model, pair.guide, x, elbo=elbo, num_particles=3 if elbo == "dreg" else 1, batch_size=8,
              epochs=2, progress=False, step="eager")
        finals.append(torch.cat([p.detach().flatten() for p in pair.parameters()]))
    assert torch.equal(finals[0], finals[1])


def test_a_latent_scaled_apart_from_the_rest_is_refused_by_the_checker():
    from pyro_vae import ModelGuideError, check_model_guide
    from pyro import poutine

    pair = LinearGaussian()

    def model(x):
        pyro.module("decoder", pair.decoder)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=0.5):  # beta = 0.5 on the latent only
                z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(pair.decoder(z), 1.0).to_event(1), obs=x)

    def guide(x):
        with poutine.scale(scale=0.5):
            pair.guide(x)

    for elbo in ("dreg", "stl", STL_ELBO(2, max_plate_nesting=1)):
        with pytest.raises(ModelGuideError, match="another scale than"):
            check_model_guide(model, guide, data(), elbo=elbo)
    check_model_guide(model, guide, data(), elbo="trace")  # a beta-VAE's ELBO is fine
