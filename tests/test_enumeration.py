"""Enumerated discrete latents, end to end, against a mixture of linear Gaussians whose log p(x)
is known in closed form (:class:`MixturePair`, below): the estimator sums an enumerated ``y`` exactly,
the test ELBO takes its exact expectation, ``elbo="enum"`` trains, and the checker knows
enumeration. Pairs are written as Pyro's examples write them (``@config_enumerate``)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import config_enumerate
from torch.distributions import constraints

from pyro_vae import ModelGuideError, check_model_guide, estimate_log_likelihood, evaluate_elbo, train
from pyro_vae.objectives import TraceEnum_ELBO, get_elbo

# -- the mixture of linear Gaussians ------------------------------------------------------------
# A mixture of linear Gaussians with a discrete latent, whose log p(x) is known in closed form,
# and guides for it written the way Pyro's examples write them (``@config_enumerate``).
#
#    y ~ Categorical(pi),  z ~ N(0, I_L),  x | z, y ~ N(W_y z + b_y, s^2 I_D)
#    x | y ~ N(b_y, C_y),  C_y = W_y W_y^T + s^2 I,   log p(x) = logsumexp_y [log pi_y + log N(x; b_y, C_y)]
#
# The exact posterior of z given (x, y) is N(A_y (x - b_y), S_y) with S_y = (I + W_y^T W_y / s^2)^-1
# and A_y = S_y W_y^T / s^2; p(y | x) is the softmax of the terms of the logsumexp.


class MixturePair:
    """The generative model and exact per-component quantities, float64."""

    def __init__(self, num_components=3, x_dim=4, z_dim=2, noise=0.5, spread=1.0, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.C, self.D, self.L, self.s = num_components, x_dim, z_dim, noise
        self.pi = torch.softmax(torch.randn(self.C, generator=g, dtype=torch.float64), 0)
        self.W = torch.randn(self.C, self.D, self.L, generator=g, dtype=torch.float64)
        self.b = spread * torch.randn(self.C, self.D, generator=g, dtype=torch.float64)  # overlapping components
        eye_l = torch.eye(self.L, dtype=torch.float64)
        self.S = torch.linalg.inv(eye_l + self.W.transpose(-1, -2) @ self.W / noise**2)  # (C, L, L)
        self.S_tril = torch.linalg.cholesky(self.S)
        self.A = self.S @ self.W.transpose(-1, -2) / noise**2  # (C, L, D)
        self.cov = self.W @ self.W.transpose(-1, -2) + noise**2 * torch.eye(self.D, dtype=torch.float64)

    def sample(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        y = torch.multinomial(self.pi, n, replacement=True, generator=g)
        z = torch.randn(n, self.L, generator=g, dtype=torch.float64)
        noise = self.s * torch.randn(n, self.D, generator=g, dtype=torch.float64)
        return (self.W[y] @ z.unsqueeze(-1)).squeeze(-1) + self.b[y] + noise

    def log_joint_y(self, x):
        """``(N, C)``: log p(x, y) for every component."""
        comp = dist.MultivariateNormal(self.b, covariance_matrix=self.cov)  # batch (C,)
        return self.pi.log() + comp.log_prob(x.unsqueeze(-2))

    def log_px(self, x):
        """``(N,)``: the exact log p(x), nats per datapoint."""
        return torch.logsumexp(self.log_joint_y(x), -1)

    def posterior_y(self, x):
        """``(N, C)``: p(y | x)."""
        return torch.softmax(self.log_joint_y(x), -1)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(self.pi))
            z = pyro.sample("z", dist.Normal(torch.zeros(self.L, dtype=torch.float64), 1.0).to_event(1))
            loc = (self.W[y] @ z.unsqueeze(-1)).squeeze(-1) + self.b[y]
            pyro.sample("x", dist.Normal(loc, self.s).to_event(1), obs=x)

    def guide_fn(self, q_y=None, z_scale=1.0, z_shift=0.0, enumerate=True):
        """A guide: ``q(y | x)`` from ``q_y(x)`` ``(N, C)`` probabilities (default: p(y | x));
        ``q(z | x, y)`` the exact posterior with its scale times ``z_scale`` and its mean moved by
        ``z_shift`` (1.0 and 0.0: exact). ``enumerate``: decorate with ``@config_enumerate``."""

        def guide(x):
            probs = self.posterior_y(x) if q_y is None else q_y(x)
            with pyro.plate("data", x.shape[0]):
                y = pyro.sample("y", dist.Categorical(probs))
                loc = (self.A[y] @ (x - self.b[y]).unsqueeze(-1)).squeeze(-1) + z_shift
                pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=z_scale * self.S_tril[y]))

        return config_enumerate(guide) if enumerate else guide


# -- tests ---------------------------------------------------------------------------------------

PAIR = MixturePair()


def sharpened(power):
    """An overconfident q(y | x): p(y | x) to the power ``power``, renormalized."""
    return lambda x: torch.softmax(power * PAIR.log_joint_y(x).log_softmax(-1), -1)


def confidently_wrong(weight):
    """An overconfident q(y | x): ``weight`` on a component other than the most probable one, the
    rest spread as p(y | x)."""

    def q_y(x):
        post = PAIR.posterior_y(x)
        wrong = torch.nn.functional.one_hot((post.argmax(-1) + 1) % PAIR.C, PAIR.C).double()
        return weight * wrong + (1 - weight) * post

    return q_y


def estimate(guide, x, k, seed=0):
    return estimate_log_likelihood(PAIR.model, guide, x, num_samples=k, batch_size=100, seed=seed,
                                   diagnostics=False).log_likelihood


def test_enumerated_estimate_is_exact_with_the_exact_guide():
    x = PAIR.sample(200)
    # q(z | x, y) exact: every weight p(x, y, z) / q(z | x, y) equals p(x, y), so the sum over y is p(x)
    assert torch.allclose(estimate(PAIR.guide_fn(), x, k=3), PAIR.log_px(x), atol=1e-4, rtol=0)


def test_enumerated_estimate_does_not_depend_on_q_y_where_sampling_y_is_biased_low():
    x = PAIR.sample(300)
    exact = PAIR.log_px(x)
    overconfident = confidently_wrong(0.98)
    # q(y | x) cancels from the enumerated weight: still exact
    assert torch.allclose(estimate(PAIR.guide_fn(q_y=overconfident), x, k=100), exact, atol=1e-4, rtol=0)
    # the same guide without @config_enumerate samples y: log of a mean of weights, biased low (Jensen)
    error = estimate(PAIR.guide_fn(q_y=overconfident, enumerate=False), x, k=100) - exact
    se = error.std() / len(error) ** 0.5  # standard error of the mean over independent datapoints
    assert error.mean() < -4 * se and error.mean() < -0.05, (error.mean(), se)


def test_enumerated_estimate_is_unbiased_for_p_x_with_an_inexact_guide():
    x = PAIR.sample(4000, seed=3)
    guide = PAIR.guide_fn(q_y=sharpened(3.0), z_scale=1.5, z_shift=0.3)  # q(z | x, y) wider and off-centre
    ratio = (estimate(guide, x, k=1, seed=4) - PAIR.log_px(x)).exp()  # p_hat(x) / p(x): expectation 1
    se = ratio.std() / len(ratio) ** 0.5  # independent draws per datapoint; finite variance (q wider than p)
    assert abs(ratio.mean() - 1) < 4 * se, (ratio.mean(), se)


def test_test_elbo_takes_the_exact_expectation_over_an_enumerated_site():
    x = PAIR.sample(200)
    log_post = PAIR.log_joint_y(x).log_softmax(-1)
    log_q = (4.0 * log_post).log_softmax(-1)  # sharpened(4.0), in logs (q underflows to 0 somewhere)
    kl = (log_q.exp() * (log_q - log_post)).sum(-1)
    mean, _ = evaluate_elbo(PAIR.model, PAIR.guide_fn(q_y=sharpened(4.0)), x, 100)
    # with q(z | x, y) exact the ELBO is log p(x) - KL(q(y | x) || p(y | x)), with no noise
    assert abs(mean - float((PAIR.log_px(x) - kl).mean())) < 1e-4


def test_enum_objective_is_the_exact_elbo_and_pyros_loss():
    x = PAIR.sample(50)
    guide = PAIR.guide_fn()
    ours = get_elbo("enum", max_plate_nesting=1)
    assert isinstance(ours, TraceEnum_ELBO)
    params_guide = _with_param(guide)
    loss = ours.differentiable_loss(PAIR.model, params_guide, x).detach()
    # exact guide: every draw gives the ELBO sum_n log p(x_n), exactly; Pyro's class the same number
    assert abs(float(loss) + float(PAIR.log_px(x).sum())) < 1e-6
    theirs = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(PAIR.model, params_guide, x)
    assert abs(float(loss) - float(theirs.detach())) < 1e-8


def _with_param(guide):
    """The guide with a parameter it multiplies by 1 (so that the ELBO has something to differentiate)."""

    def wrapped(x):
        one = pyro.param("one", torch.ones((), dtype=torch.float64))
        return guide(x * one)

    return config_enumerate(wrapped)


def test_checker_knows_enumeration():
    x = PAIR.sample(20)
    guide = PAIR.guide_fn()
    for elbo in ("enum", None, pyro.infer.TraceEnum_ELBO(max_plate_nesting=1), get_elbo("enum")):
        check_model_guide(PAIR.model, guide, x, elbo=elbo)
    check_model_guide(PAIR.model, PAIR.guide_fn(enumerate=False), x, elbo="enum")  # sampled y: fine too
    with pytest.raises(ModelGuideError, match=r"site 'y' is marked for enumeration .* elbo 'trace' would sample"):
        check_model_guide(PAIR.model, guide, x, elbo="trace")
    with pytest.raises(ModelGuideError, match=r"max_plate_nesting=0, but the pair's plates use 1"):
        check_model_guide(PAIR.model, guide, x, elbo=pyro.infer.TraceEnum_ELBO(max_plate_nesting=0))


def test_enumerated_site_in_a_nested_plate_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]), pyro.plate("pixels", x.shape[1]):
            y = pyro.sample("y", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(y.double(), 1.0), obs=x)

    @config_enumerate
    def guide(x):
        with pyro.plate("data", x.shape[0]), pyro.plate("pixels", x.shape[1]):
            pyro.sample("y", dist.Bernoulli(0.5))

    with pytest.raises(ModelGuideError, match=r"enumerated guide site 'y' lies in plate\(s\) \['pixels'\]"):
        check_model_guide(model, guide, PAIR.sample(10), elbo="enum")


def _learnable_guide():
    """q(y | x) a softmax of quadratic features, q(z | x, y) affine in x per component."""
    C, D, L = PAIR.C, PAIR.D, PAIR.L

    @config_enumerate
    def guide(x):
        quad = pyro.param("Q", torch.zeros(C, D, D, dtype=torch.float64))
        lin = pyro.param("r", torch.zeros(C, D, dtype=torch.float64))
        A = pyro.param("A", torch.zeros(C, L, D, dtype=torch.float64))
        a = pyro.param("a", torch.zeros(C, L, dtype=torch.float64))
        tril = pyro.param("T", torch.eye(L, dtype=torch.float64).expand(C, L, L).clone(),
                          constraint=constraints.lower_cholesky)
        logits = torch.einsum("nd,yde,ne->ny", x, quad, x) + x @ lin.T
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=logits))
            pyro.sample("z", dist.MultivariateNormal((A[y] @ x.unsqueeze(-1)).squeeze(-1) + a[y], scale_tril=tril[y]))

    return guide


def test_train_with_enum_raises_the_test_elbo_towards_log_p_x():
    x, x_test = PAIR.sample(500), PAIR.sample(500, seed=2)
    guide = _learnable_guide()
    pyro.clear_param_store()
    before, _ = evaluate_elbo(PAIR.model, guide, x_test, 500)
    result = train(PAIR.model, guide, x, elbo="enum", epochs=15, batch_size=50, lr=0.01, progress=False, seed=0)
    after, se = evaluate_elbo(PAIR.model, guide, x_test, 500)
    log_px = float(PAIR.log_px(x_test).mean())
    curve = [h["train_elbo"] for h in result.history]
    assert curve[-1] > curve[0]
    # the ELBO is a lower bound (3 standard errors of the datapoint mean for the sampled z) ...
    assert after < log_px + 3 * se
    # ... that training raised by more than 20 standard errors (a local optimum may keep it short of
    # log p(x): the closed-form target is the next test's, with a guide family that contains it)
    assert after > before + 20 * se, (before, after, se, log_px)


def test_train_with_enum_drives_the_elbo_to_the_closed_form_log_p_x():
    """q(z | x, y) exact and q(y | x) = softmax(log p(x, y) + c) with learnable offsets c, started at
    (8, -8, 0): the ELBO is then log p(x) - KL(q(y | x) || p(y | x)) with no Monte Carlo noise at all
    (every weight of a given y is p(x, y)), and it equals log p(x) exactly when the offsets are equal.
    Training with the enumerated (exact) gradient must close the gap: it starts at 0.36 nats here,
    100 Adam steps leave about 1e-6 (measured); the tolerance 1e-3 nats is 1000 times that and 300
    times below the start. The ELBO stays a bound: never above log p(x) (rounding only)."""
    x, x_test = PAIR.sample(500), PAIR.sample(500, seed=2)
    pyro.clear_param_store()

    @config_enumerate
    def guide(x):
        offsets = pyro.param("offsets", torch.tensor([8.0, -8.0, 0.0], dtype=torch.float64))
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=PAIR.log_joint_y(x) + offsets))
            loc = (PAIR.A[y] @ (x - PAIR.b[y]).unsqueeze(-1)).squeeze(-1)
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=PAIR.S_tril[y]))

    log_px = float(PAIR.log_px(x_test).mean())
    before, _ = evaluate_elbo(PAIR.model, guide, x_test, 500)
    train(PAIR.model, guide, x, elbo="enum", epochs=20, batch_size=100, lr=0.5, progress=False, seed=0)
    after, _ = evaluate_elbo(PAIR.model, guide, x_test, 500)
    assert before < log_px - 0.3
    assert log_px - 1e-3 < after <= log_px + 1e-9, (before, after, log_px)
