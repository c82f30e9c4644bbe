"""Discrete latents (pyro_vae.models.discrete) and score-function baselines (pyro_vae.objectives.baselines).

On a tiny model with three Bernoulli latents and fixed weights, everything is a sum over 8 states: the
enumerated ELBO and its gradient equal the brute-force ones; the score-function gradient with and without
baselines equals the exact gradient within Monte Carlo error, and the baselines lower its variance. The
estimators give the exact log p(x) of the shipped discrete pairs (summed by enumeration, or importance-sampled:
unbiased in p(x)); the Concrete pair's draws, temperature and straight-through input behave as stated; the
checker passes or refuses each pair with its existing messages; short MNIST runs improve on the untrained pairs;
a run with a neural baseline resumes bitwise.
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_resume_is_bitwise
from pyro import poutine

from pyro_vae import check_model_guide, estimate_log_likelihood, evaluate_elbo, train
from pyro_vae.check import ModelGuideError
from pyro_vae.models.bernoulli import BernoulliVAE
from pyro_vae.models.concrete import ConcreteVAE, TemperatureSchedule
from pyro_vae.objectives import Trace_ELBO, get_elbo
from pyro_vae.objectives.baselines import TraceBaseline_ELBO

# -- a tiny model with closed forms: 3 Bernoulli latents, a Gaussian likelihood with fixed weights ------------

L, D, B = 3, 4, 5
PRIOR = torch.tensor([0.3, 0.5, 0.8])
W = torch.tensor([[1.5, -1.0, 0.5, 2.0], [-0.5, 2.0, 1.0, -1.5], [1.0, 1.0, -2.0, 0.5]])
X = torch.tensor([[1.2, 0.3, -0.4, 2.1], [0.1, 1.8, 0.9, -1.2], [2.0, 2.5, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0],
                  [1.1, -0.2, -1.5, 2.4]])
STATES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=L)))  # (8, L)


def tiny_pair(infer: dict | None = None):
    """Model p(z) p(x | z), one Bernoulli site per latent; guide q(z_i | x) = Bernoulli(a_i + x c_i)."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            bits = [pyro.sample(f"z{i}", dist.Bernoulli(PRIOR[i])) for i in range(L)]
            z = torch.stack(torch.broadcast_tensors(*bits), -1)
            pyro.sample("x", dist.Normal(z @ W, 0.7).to_event(1), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor([0.2, -0.4, 0.6]))
        c = pyro.param("c", torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.4, -0.3], [-0.2, 0.1, 0.2], [0.5, -0.1, 0.0]]))
        with pyro.plate("data", x.shape[0]):
            logits = a + x @ c
            for i in range(L):
                pyro.sample(f"z{i}", dist.Bernoulli(logits=logits[..., i]), infer=dict(infer or {}))

    return model, guide


def exact_terms(x):
    """``(ELBO, log p(x))`` per datapoint by brute force over the 8 states, differentiable in a and c."""
    guide_params()
    logits = pyro.param("a") + x @ pyro.param("c")
    log_q = dist.Bernoulli(logits=logits[:, None, :]).log_prob(STATES).sum(-1)  # (B, 8)
    log_p = dist.Bernoulli(PRIOR).log_prob(STATES).sum(-1) + dist.Normal(STATES @ W, 0.7).log_prob(x[:, None]).sum(-1)
    return (log_q.exp() * (log_p - log_q)).sum(-1), torch.logsumexp(log_p, -1)


def guide_params():
    model, guide = tiny_pair()
    guide(X)  # registers a and c
    return [pyro.param("a").unconstrained(), pyro.param("c").unconstrained()]


def exact_gradient():
    params = guide_params()
    elbo, _ = exact_terms(X)
    return torch.cat([g.flatten() for g in torch.autograd.grad(-elbo.sum(), params)])


def gradient_draws(elbo, infer=None, draws=40, warmup=0, net=None):
    """``(draws, 15)`` gradients of the loss in a and c (then in ``net``'s parameters), each an average over
    the objective's particles."""
    model, guide = tiny_pair(infer)
    params = guide_params() + (list(net.parameters()) if net is not None else [])
    pyro.set_rng_seed(0)
    out = []
    for i in range(warmup + draws):
        loss = elbo.differentiable_loss(model, guide, X)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        if i >= warmup:
            out.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(out)


def _sf(**kwargs):
    return dict(num_particles=100, vectorize_particles=True, max_plate_nesting=1, **kwargs)


_PLAIN = {}


def plain_draws():
    """The plain score-function estimator's draws (Trace_ELBO, seed 0), computed once."""
    if "draws" not in _PLAIN:
        _PLAIN["draws"] = gradient_draws(Trace_ELBO(**_sf()))
    return _PLAIN["draws"]


def unbiased(draws, exact):
    """The mean of the draws equals the exact gradient within 4 standard errors, in every coordinate."""
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    return bool(((mean - exact).abs() < 4 * se).all())


def test_the_enumerated_elbo_and_its_gradient_are_the_brute_force_sums():
    model, guide = tiny_pair({"enumerate": "parallel"})
    params = guide_params()
    loss = get_elbo("enum", max_plate_nesting=1).differentiable_loss(model, guide, X)
    elbo, _ = exact_terms(X)
    assert float(loss.detach()) == pytest.approx(-float(elbo.sum().detach()), rel=1e-6)
    got = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(-elbo.sum(), params)
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))


@pytest.mark.parametrize("name", ["none", "value", "decaying average"])
def test_score_function_gradients_are_unbiased_and_baselines_lower_their_variance(name):
    """The mean of 40 draws (each over 100 particles) equals the exact gradient within 4 standard errors in
    every coordinate; with a baseline the variance is below the plain score-function estimator's (same seed)."""
    elbo_values, _ = exact_terms(X)
    infer = {"none": None,
             "value": {"baseline": {"baseline_value": elbo_values.detach()}},  # E[signal] of each datapoint
             "decaying average": {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}}[name]
    draws = gradient_draws(TraceBaseline_ELBO(**_sf()), infer, warmup=10 if name == "decaying average" else 0)
    assert unbiased(draws, exact_gradient())
    if name == "none":  # no baseline: the same draws, the same gradients as Trace_ELBO
        assert torch.allclose(draws, plain_draws())
    else:
        assert draws.var(0).sum() < 0.5 * plain_draws().var(0).sum()


def test_a_neural_baseline_gets_the_gradient_of_its_squared_error_and_lowers_the_variance_without_bias():
    """The net's gradient is that of L sum_n (b(x_n) - ELBO_n)^2 in expectation (L = 3 sites share it): it
    learns the ELBO of each datapoint. There (a least-squares fit of 5 points by a linear net) the encoder's
    gradient stays unbiased and its variance halves."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(D, 1), torch.nn.Flatten(-2))  # b(x)
    infer = {"baseline": {"nn_baseline": net, "nn_baseline_input": X}}
    elbo_values, _ = exact_terms(X)
    want = torch.autograd.grad(L * ((net(X) - elbo_values.detach()) ** 2).sum(), list(net.parameters()))
    draws = gradient_draws(TraceBaseline_ELBO(**_sf()), infer, net=net)
    assert unbiased(draws[:, 15:], torch.cat([w.flatten() for w in want]))
    with torch.no_grad():  # the squared error's minimum: b(x_n) = ELBO_n exactly
        solution = torch.linalg.solve(torch.cat([X, torch.ones(B, 1)], 1), elbo_values.detach())
        net[0].weight.copy_(solution[:D][None]), net[0].bias.copy_(solution[D:])
    draws = gradient_draws(TraceBaseline_ELBO(**_sf()), infer)
    assert unbiased(draws, exact_gradient())
    assert draws.var(0).sum() < 0.5 * plain_draws().var(0).sum()


def test_pyros_trace_elbo_ignores_baselines_and_bad_baselines_are_named():
    """The reason for TraceBaseline_ELBO: Trace_ELBO gives the same gradient with or without a baseline."""
    infer = {"baseline": {"baseline_value": torch.full((B,), -7.0)}}
    with_b, without = gradient_draws(Trace_ELBO(**_sf()), infer, draws=3), plain_draws()[:3]
    assert torch.equal(with_b, without)
    assert not torch.allclose(gradient_draws(TraceBaseline_ELBO(**_sf()), infer, draws=3), without)
    for bad, message in [({"baseline": {"nn_baselin": 1}}, "unknown baseline option"),
                         ({"baseline": {"baseline_value": torch.zeros(B + 1)}}, "does not broadcast"),
                         ({"baseline": {"baseline_value": 0.0, "nn_baseline": torch.nn.Identity(),
                                        "nn_baseline_input": X}}, "not both")]:
        with pytest.raises(ValueError, match=message):
            gradient_draws(TraceBaseline_ELBO(**_sf()), bad, draws=1)


# -- the shipped pairs: exact log p(x), the estimators ---------------------------------------------------------

def perturbed(vae):
    """The pair with its weights scaled up, so that posteriors are far from uniform and the decoder sharp."""
    with torch.no_grad():
        for p in vae.parameters():
            p.mul_(3.0)
    return vae


def brute_force_log_likelihood(vae, x, states):
    """``log sum_z p(z) p(x | z)`` with torch alone: the decoder at each state ``(S, input)``, a uniform prior."""
    log_px = torch.stack([-F.binary_cross_entropy_with_logits(vae.decoder(s).expand_as(x), x, reduction="none").sum(-1)
                          for s in states])
    return torch.logsumexp(log_px, 0) - math.log(len(states))


def binary_data(n=20, d=30):
    return torch.bernoulli(torch.rand(n, d, generator=torch.Generator().manual_seed(3)))


def test_exact_log_likelihoods_are_the_brute_force_sums():
    x = binary_data()
    vae = perturbed(BernoulliVAE(30, latent_dim=4, hidden_dim=16))
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)))
    with torch.no_grad():
        assert torch.allclose(vae.exact_log_likelihood(x), brute_force_log_likelihood(vae, x, bits), atol=1e-4)
        concrete = perturbed(ConcreteVAE(30, latent_dim=2, num_categories=3, hidden_dim=16))
        one_hots = [torch.cat([F.one_hot(torch.tensor(i), 3), F.one_hot(torch.tensor(j), 3)]).float()
                    for i, j in itertools.product(range(3), repeat=2)]
        assert torch.allclose(concrete.exact_log_likelihood(x), brute_force_log_likelihood(concrete, x, one_hots),
                              atol=1e-4)


def test_the_enumerated_bernoulli_pair_trains_on_the_exact_elbo():
    """TraceEnum_ELBO on the pair (decoding each state once: a matrix product for the pixels) equals the
    ELBO summed over the 16 states by brute force, value and gradient."""
    x = binary_data(6)
    vae = perturbed(BernoulliVAE(30, latent_dim=4, hidden_dim=16, prior="learned", enumerate=True))
    loss = get_elbo("enum", max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)))
    log_q = dist.Bernoulli(logits=vae.encoder(x)[:, None, :]).log_prob(bits).sum(-1)  # (6, 16)
    log_prior = dist.Bernoulli(logits=vae.prior_logits).log_prob(bits).sum(-1)
    logits = vae.decoder(bits)[None].expand(6, 16, 30)
    log_lik = -F.binary_cross_entropy_with_logits(logits, x[:, None].expand(6, 16, 30), reduction="none").sum(-1)
    elbo = (log_q.exp() * (log_prior + log_lik - log_q)).sum()
    assert float(loss.detach()) == pytest.approx(-float(elbo.detach()), rel=1e-5)
    params = [p for _, p in pyro.get_param_store().named_parameters()]
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(-elbo, params)):
        assert torch.allclose(got, want, atol=1e-3, rtol=1e-4)


def unbiased_in_p(result, exact):
    """The importance-sampled p̂(x) is unbiased: the mean over datapoints of p̂(x_n) / p(x_n) is 1 within
    4 standard errors."""
    ratio = (result.log_likelihood - exact.double()).exp()
    return abs(float(ratio.mean()) - 1.0) < 4 * float(ratio.std()) / math.sqrt(len(ratio)) + 1e-9


def test_estimate_log_likelihood_is_exact_for_the_enumerated_pair_and_unbiased_for_the_sampled_ones():
    x = binary_data()
    enumerated = perturbed(BernoulliVAE(30, latent_dim=4, hidden_dim=16, enumerate=True))
    result = estimate_log_likelihood(enumerated.model, enumerated.guide, x, num_samples=1, batch_size=10,
                                     bound_ks=(1,), seed=0)
    with torch.no_grad():
        exact = enumerated.exact_log_likelihood(x)
    assert torch.allclose(result.log_likelihood, exact.double(), atol=1e-4)  # the 16 states summed in each weight
    pyro.clear_param_store()
    sampled = BernoulliVAE(30, latent_dim=4, hidden_dim=16, baseline="none")
    sampled.load_state_dict(enumerated.state_dict())  # the same pair, its bits sampled from the guide
    result = estimate_log_likelihood(sampled.model, sampled.guide, x, num_samples=500, batch_size=10, bound_ks=(1,),
                                     seed=0)
    assert unbiased_in_p(result, exact) and result.bound(1)[0] < result.mean
    pyro.clear_param_store()
    concrete = perturbed(ConcreteVAE(30, latent_dim=2, num_categories=3, hidden_dim=16, temperature=0.5,
                                     straight_through=True))
    with torch.no_grad():
        exact = concrete.exact_log_likelihood(x)
    # the straight-through pair's model is the discrete one (argmax of a relaxed uniform draw is uniform), and so
    # is the discrete pair with the same nets: both estimate the discrete log p(x)
    for model, guide in ((concrete.model, concrete.guide), (concrete.discrete_model, concrete.discrete_guide)):
        result = estimate_log_likelihood(model, guide, x, num_samples=500, batch_size=10, bound_ks=(1,), seed=0)
        assert unbiased_in_p(result, exact), (float(exact.mean()), result.mean)
        assert result.bound(1)[0] <= float(exact.mean())  # the ELBO is below log p(x)


# -- the Concrete pair: draws, temperature, straight-through ---------------------------------------------------

def test_relaxed_draws_approach_one_hots_as_the_temperature_falls_and_their_argmax_is_categorical():
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    vae = ConcreteVAE(5, latent_dim=1, num_categories=4, hidden_dim=4).double()
    largest = []
    for tau in (2.0, 1.0, 0.5, 0.1, 0.02):
        vae.set_temperature(tau)
        s = vae.relaxed(logits.expand(20000, 1, 4)).sample()
        largest.append(float(s.max(-1).values.mean()))
        # Gumbel-max: argmax(s) ~ Categorical(softmax(logits)) whatever the temperature
        freq = F.one_hot(s.argmax(-1), 4).double().mean((0, 1))
        assert (freq - logits.softmax(-1)).abs().max() < 4 * math.sqrt(0.25 / 20000)
    assert largest == sorted(largest) and largest[-1] > 0.99 and largest[0] < 0.7


def test_the_straight_through_input_is_exactly_one_hot_and_passes_the_relaxed_gradient():
    vae = ConcreteVAE(5, latent_dim=3, num_categories=4, hidden_dim=4, temperature=0.5, straight_through=True)
    logits = torch.randn(6, 3, 4, requires_grad=True)
    s = vae.relaxed(logits).rsample()
    hard = vae.decoder_input(s)
    assert torch.equal(hard, F.one_hot(s.argmax(-1), 4).float().flatten(-2))  # forward: exactly one-hot
    weights = torch.randn(12)
    got = torch.autograd.grad((hard * weights).sum(), logits, retain_graph=True)[0]
    want = torch.autograd.grad((s.flatten(-2) * weights).sum(), logits)[0]  # backward: the relaxed draw's
    assert torch.equal(got, want) and got.abs().sum() > 0
    vae.straight_through = False
    assert torch.equal(vae.decoder_input(s), s.flatten(-2))


def test_the_temperature_is_a_tensor_input_that_follows_the_schedule():
    schedule = TemperatureSchedule(initial=1.0, minimum=0.5, rate=1e-4, every=500)
    for step in (0, 499, 500, 1234, 6000, 7000, 10 ** 6):
        assert schedule(step) == max(0.5, math.exp(-1e-4 * 500 * (step // 500)))
    assert schedule(6999) > 0.5 and schedule(7000) == 0.5  # exp(-0.7) < 0.5 < exp(-0.65)
    with pytest.raises(ValueError):
        TemperatureSchedule(minimum=2.0)
    vae = ConcreteVAE(5, latent_dim=2, num_categories=3, hidden_dim=4)
    buffer = vae.temperature
    vae.set_temperature(schedule(6000))
    trace = poutine.trace(vae.guide).get_trace(torch.ones(2, 5))
    assert trace.nodes["z"]["fn"].base_dist.temperature is buffer  # read at each call, no copy, no host sync
    assert float(buffer) == pytest.approx(math.exp(-0.6))
    assert vae.double().temperature.dtype == torch.float64 and "temperature" in vae.state_dict()
    with pytest.raises(ValueError, match="positive"):
        vae.set_temperature(0.0)


# -- the checker --------------------------------------------------------------------------------------------

def test_each_pair_passes_the_checker_with_its_default_objective_and_is_refused_where_it_should_be():
    x = binary_data(8)
    pairs = [ConcreteVAE(30, latent_dim=4, num_categories=5, hidden_dim=16),
             ConcreteVAE(30, latent_dim=4, num_categories=5, hidden_dim=16, straight_through=True, temperature=0.5),
             BernoulliVAE(30, latent_dim=4, hidden_dim=16, baseline="none"),
             BernoulliVAE(30, latent_dim=4, hidden_dim=16, baseline="constant"),
             BernoulliVAE(30, latent_dim=4, hidden_dim=16, baseline="neural", prior="learned"),
             BernoulliVAE(30, latent_dim=4, hidden_dim=16, enumerate=True)]
    for vae in pairs:
        check_model_guide(vae.model, vae.guide, x, elbo=vae.default_elbo)
    assert [vae.default_elbo for vae in pairs[2:]] == ["trace", "baseline", "baseline", "enum"]
    assert BernoulliVAE(30).default_elbo == "baseline"  # the shipped pair: score function, neural baseline
    assert ConcreteVAE(30).default_elbo == "trace"  # relaxed latents: reparameterized
    assert type(get_elbo("baseline")).__name__ == "TraceBaseline_ELBO"
    check_model_guide(pairs[0].model, pairs[0].guide, x, elbo="iwae")  # relaxed: reparameterized
    check_model_guide(pairs[0].discrete_model, pairs[0].discrete_guide, x, elbo="trace")
    with pytest.raises(ModelGuideError, match="guide site 'z0' .Bernoulli. is not reparameterizable"):
        check_model_guide(pairs[2].model, pairs[2].guide, x, elbo="iwae")
    with pytest.raises(ModelGuideError, match="marked for enumeration .* but elbo 'trace' would sample it"):
        check_model_guide(pairs[5].model, pairs[5].guide, x, elbo="trace")
    with pytest.raises(ModelGuideError, match="at temperature 0.1 the relaxed draws lie so close to the corners"):
        pairs[0].set_temperature(0.1)
        check_model_guide(pairs[0].model, pairs[0].guide, x)
    with pytest.raises(ValueError, match="no score-function term"):
        BernoulliVAE(30, enumerate=True, baseline="neural")
    with pytest.raises(ValueError, match="MAX_ENUMERATED_STATES"):
        BernoulliVAE(30, latent_dim=11, enumerate=True)


# -- training on MNIST, checkpoints --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["concrete", "straight-through", "baseline", "enum"])
def test_a_short_run_on_mnist_improves_on_the_untrained_pair(mnist, name):
    data = mnist.subset(num_train=1000, num_test=100)
    vae = {"concrete": lambda: ConcreteVAE(784, latent_dim=10, num_categories=5, hidden_dim=64),
           "straight-through": lambda: ConcreteVAE(784, latent_dim=10, num_categories=5, hidden_dim=64,
                                                   straight_through=True),
           "baseline": lambda: BernoulliVAE(784, latent_dim=8, hidden_dim=64, baseline="neural"),
           "enum": lambda: BernoulliVAE(784, latent_dim=8, hidden_dim=64, enumerate=True)}[name]()
    before, before_se = evaluate_elbo(vae.model, vae.guide, data.test, 100)
    result = train(vae.model, vae.guide, data, elbo=vae.default_elbo, epochs=1, step="eager", progress=False,
                   eval_batch_size=100)
    after, after_se = result.final["test_elbo"], result.final["test_elbo_se"]
    assert after - before > 10 * math.hypot(before_se, after_se), (before, after)


def test_an_interrupted_and_resumed_run_with_a_neural_baseline_is_bitwise_equal(mnist, tmp_path):
    data = mnist.subset(num_train=200, num_test=20)
    settings = {"epochs": 2, "batch_size": 50, "progress": False, "step": "eager", "eval_batch_size": 20}

    def small():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        return BernoulliVAE(784, latent_dim=4, hidden_dim=16, baseline="neural", prior="learned")

    expected = assert_resume_is_bitwise(small, data, tmp_path, settings)
    assert any("baseline_net" in k for k in expected)  # the baseline is in the checkpoints
