"""Objectives by name, the IWAE objective under minibatch scaling (where RenyiELBO is wrong), free bits and
latent scaling against hand computations, and the package's names."""

import math

import pyro
import pyro.distributions as dist
import pyro.infer
import pyro.optim
import pytest
import torch
from linear_gaussian import LinearGaussian
from pyro.infer import RenyiELBO

from pyro_vae import ELBO_NAMES, IWAE_ELBO, VAE, get_elbo
from pyro_vae.models import FlowVAE
from pyro_vae.objectives import FreeBitsELBO, Trace_ELBO, TraceMeanField_ELBO, scale_latents

N, B, K = 1000, 10, 20


def test_names():
    assert isinstance(get_elbo("trace"), pyro.infer.Trace_ELBO) and type(get_elbo("trace")) is Trace_ELBO
    # the meanfield objective is Trace_ELBO's ELBO with closed-form KLs where they are its terms;
    # not Pyro's TraceMeanField_ELBO, which takes them at every site (and warns by site order)
    assert isinstance(get_elbo("meanfield"), Trace_ELBO)
    assert type(get_elbo("meanfield")) is TraceMeanField_ELBO
    assert isinstance(get_elbo("iwae", 5), IWAE_ELBO)
    with pytest.raises(ValueError, match="choose one of trace, meanfield, iwae"):
        get_elbo("elbo")


def _subsampled_pair(lg, index):
    def model(x):
        with pyro.plate("data", N, subsample=index):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.mu, lg.sigma).to_event(1), obs=x)

    def guide(x):
        loc = 0.7 * (x - lg.mu) @ lg.A.T
        with pyro.plate("data", N, subsample=index):
            pyro.sample("z", dist.Normal(loc, 1.6 * lg.post_cov.diagonal().sqrt()).to_event(1))

    return model, guide


def test_iwae_is_correct_under_subsampling_and_renyi_is_not():
    lg = LinearGaussian()
    x = lg.sample(B)
    model, guide = _subsampled_pair(lg, torch.arange(B))
    iwae = IWAE_ELBO(num_particles=K)
    iwae.loss(model, guide, x)  # first call guesses the plate nesting (consumes random numbers)

    pyro.set_rng_seed(7)
    ours = iwae.differentiable_loss(model, guide, x).item()

    # the same draws, by hand: z ~ q in an outer particle plate, then log p(x, z) - log q(z | x)
    pyro.set_rng_seed(7)
    with pyro.plate("particles", K, dim=-2):
        trace = pyro.poutine.trace(guide).get_trace(x)
    z = trace.nodes["z"]["value"]  # (K, B, 2)
    loc = 0.7 * (x - lg.mu) @ lg.A.T
    scale = 1.6 * lg.post_cov.diagonal().sqrt()
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_lik = torch.distributions.Normal(z @ lg.W.T + lg.mu, lg.sigma).log_prob(x).sum(-1)
    log_w = log_lik + log_prior - log_q  # (K, B)
    direct = -(N / B) * (torch.logsumexp(log_w, 0) - math.log(K)).sum().item()
    assert ours == pytest.approx(direct, rel=1e-10)

    # RenyiELBO(alpha=0) applies logsumexp to log-densities already multiplied by N / B
    renyi = RenyiELBO(alpha=0.0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    renyi_values = torch.tensor([renyi.loss(model, guide, x) for _ in range(40)])
    ours_values = torch.tensor([iwae.loss(model, guide, x) for _ in range(40)])
    se = math.hypot(renyi_values.std().item(), ours_values.std().item()) / math.sqrt(40)
    gap = abs(renyi_values.mean().item() - ours_values.mean().item())
    assert gap > 6 * se, (gap, se)


def test_iwae_without_scaling_agrees_with_renyi():
    """With no scaling the two are the same estimator: same seed, same number."""
    lg = LinearGaussian()
    x = lg.sample(B)
    iwae = IWAE_ELBO(num_particles=K)
    renyi = RenyiELBO(alpha=0.0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    iwae._nesting = 1
    pyro.set_rng_seed(3)
    a = iwae.loss(lg.model, lg.poor_guide, x)
    pyro.set_rng_seed(3)
    b = renyi.loss(lg.model, lg.poor_guide, x)
    assert a == pytest.approx(b, rel=1e-9)


def test_iwae_refuses_non_reparameterizable_guides_and_partial_scales():
    lg = LinearGaussian()
    x = lg.sample(4)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(torch.full((x.shape[0],), 0.5, dtype=x.dtype)))
            pyro.sample("x", dist.Normal(lg.mu + c.unsqueeze(-1), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(torch.full((x.shape[0],), 0.3, dtype=x.dtype)))

    with pytest.raises(ValueError, match="guide site 'c' .* not reparameterizable"):
        IWAE_ELBO(5).loss(model, guide, x)

    def beta_guide(x):
        with pyro.poutine.scale(scale=0.5):
            lg.poor_guide(x)

    with pytest.raises(ValueError, match="different scales"):
        IWAE_ELBO(5).loss(lg.model, beta_guide, x)


def _discrete_latent_pair():
    """A Bernoulli latent (score-function term of Trace_ELBO) and a Normal one, params on both sides."""
    def model(x):
        w = pyro.param("w", torch.linspace(-1, 1, 12).reshape(2, 6))
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(torch.full((x.shape[0], 2), 0.3)).to_event(1))
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal((z + c) @ w, 0.5).to_event(1), obs=x)

    def guide(x):
        a = pyro.param("a", torch.linspace(-0.5, 0.5, 12).reshape(6, 2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(logits=x @ a).to_event(1))
            pyro.sample("z", dist.Normal(0.3 * x @ a, 0.8).to_event(1))

    return model, guide


def _loss_and_grads(elbo, model, guide, x, seed=5):
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide, x)
    params = [p for _, p in pyro.get_param_store().named_parameters()]  # the unconstrained leaves
    return loss, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("case", ["trace, discrete latent", "trace, VAE, 3 particles", "meanfield, VAE",
                                  "meanfield, flow guide (no analytic KL)"])
def test_device_elbos_equal_pyros(case):
    """Our Trace_ELBO / TraceMeanField_ELBO keep the loss on the device (no .item()): the same loss
    value and the same gradients as Pyro's classes, at the same random state."""
    x = torch.randn(7, 6)
    particles = 3 if "3 particles" in case else 1
    if "discrete" in case:
        model, guide = _discrete_latent_pair()
    else:
        vae = (FlowVAE if "flow" in case else VAE)(6, latent_dim=2, hidden_dim=8, likelihood="gaussian")
        model, guide = vae.model, vae.guide
    options = {"num_particles": particles, "vectorize_particles": True, "max_plate_nesting": 1}
    ours_cls, pyro_cls = ((Trace_ELBO, pyro.infer.Trace_ELBO) if case.startswith("trace")
                          else (TraceMeanField_ELBO, pyro.infer.TraceMeanField_ELBO))
    _loss_and_grads(pyro_cls(**options), model, guide, x)  # creates the params
    expected, expected_grads = _loss_and_grads(pyro_cls(**options), model, guide, x)
    loss, grads = _loss_and_grads(ours_cls(**options), model, guide, x)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)  # Pyro sums the site values as doubles
    assert any(g.abs().sum() > 0 for g in grads)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    # and they still serve pyro.infer.SVI, which expects a number
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), ours_cls(**options))
    assert isinstance(svi.step(x), float)


def _guide_draw_and_terms(lg, x, seed):
    """The poor guide's draw at ``seed``, the per-datapoint log p(x | z) and the per-dimension
    analytic KL(q || p) ``(B, d)``, computed with torch.distributions alone."""
    pyro.set_rng_seed(seed)
    z = pyro.poutine.trace(lg.poor_guide).get_trace(x).nodes["z"]["value"]
    loc = 0.7 * (x - lg.mu) @ lg.A.T
    scale = 1.6 * lg.post_cov.diagonal().sqrt()
    log_lik = torch.distributions.Normal(z @ lg.W.T + lg.mu, lg.sigma).log_prob(x).sum(-1)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                           torch.distributions.Normal(0.0, 1.0))
    return log_lik, kl


def test_free_bits_loss_equals_the_hand_computation():
    """-sum_n log p(x_n | z_n) + B sum_j max(lambda, mean_n KL_j), with lambda between the dimensions'
    KLs so that the floor holds for one dimension and not the other."""
    lg = LinearGaussian()
    x = lg.sample(B)
    log_lik, kl = _guide_draw_and_terms(lg, x, seed=9)
    per_dim = kl.mean(0)
    free_bits = per_dim.mean().item()
    assert per_dim.min() < free_bits < per_dim.max()
    by_hand = -log_lik.sum() + B * per_dim.clamp(min=free_bits).sum()
    pyro.set_rng_seed(9)
    loss = FreeBitsELBO(free_bits).differentiable_loss(lg.model, lg.poor_guide, x)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-10)
    pyro.set_rng_seed(9)
    plain = FreeBitsELBO(0.0).differentiable_loss(lg.model, lg.poor_guide, x)
    assert plain.item() == pytest.approx((-log_lik.sum() + kl.sum()).item(), rel=1e-10)
    assert loss.item() > plain.item()


@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_scale_latents_multiplies_the_kl_by_beta(beta):
    """Model and guide wrapped: the meanfield loss is -sum_n log p(x_n | z_n) + beta * sum_n KL(q || p)."""
    lg = LinearGaussian()
    x = lg.sample(B)
    log_lik, kl = _guide_draw_and_terms(lg, x, seed=4)
    elbo = get_elbo("meanfield", max_plate_nesting=1)
    pyro.set_rng_seed(4)
    # the factor as a number, and as a callable (a schedule)
    model, guide = scale_latents(lg.model, beta), scale_latents(lg.poor_guide, lambda: beta)
    loss = elbo.differentiable_loss(model, guide, x)
    assert loss.item() == pytest.approx((-log_lik.sum() + beta * kl.sum()).item(), rel=1e-10)


def test_every_objective_name_is_exported_from_the_package():
    """The names imported from pyro_vae.objectives anywhere (trainer, CLI, tests, experiments) before it
    became a package are still there, each from the module of its concept."""
    from pyro_vae import objectives

    expected = {"ELBO_NAMES": "registry", "get_elbo": "registry", "Trace_ELBO": "trace",
                "TraceMeanField_ELBO": "meanfield", "IWAE_ELBO": "iwae", "FreeBitsELBO": "free_bits",
                "scale_latents": "scaling", "TraceEnum_ELBO": "enum"}
    assert set(expected) <= set(objectives.__all__)
    for name, module in expected.items():
        obj = getattr(objectives, name)
        if name != "ELBO_NAMES":
            assert obj.__module__ == f"pyro_vae.objectives.{module}", name
    assert objectives.ELBO_NAMES == ("trace", "meanfield", "iwae", "enum", "stl", "iwae-stl", "dreg", "miwae",
                                     "piwae", "ciwae", "vq", "baseline", "wae")
    assert all(hasattr(objectives, name) for name in objectives.__all__)


@pytest.mark.parametrize("name", ELBO_NAMES)
def test_each_name_has_the_checker_rules_of_the_object_it_builds(name):
    """The checker reads a name's rules without building the objective (check.NAMED_RULES): the
    same rules as the object ``get_elbo(name)`` says it needs (``checker_rules``, or its class)."""
    from pyro_vae.check.objective_rules import rules_of
    from pyro_vae.objectives import get_elbo

    particles = 1 if name in ("vq", "wae") else 2  # one code per datapoint: more particles are refused
    assert rules_of(name).name == rules_of(get_elbo(name, num_particles=particles)).name
    if particles == 1:
        with pytest.raises(ValueError, match="num_particles must be 1, got 2"):
            get_elbo(name, num_particles=2)
