"""Right or refused, the checker: it repeats what training with Pyro's validation off would miss
(torch's argument checks, Pyro's trace checks and warnings, draws at the edge of a support), so a
pair that only validation would stop is refused before the first step, by name, whatever the
caller's validation setting.

Every pair is written here, as a user would write it.
"""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyro_vae import ModelGuideError, check_model_guide, estimate_log_likelihood, train
from pyro_vae.importance import log_importance_weights

D, Z, CATEGORIES = 6, 2, 4


@pytest.fixture
def validation_off():
    """``pyro.enable_validation(False)`` for the whole test, as a user who switched it off for speed."""
    pyro.enable_validation(False)
    yield
    pyro.enable_validation(True)


def _gamma_prior_pair():
    """A Gamma prior whose concentration is a learned parameter declared without its constraint and
    initialized negative: the log-density is finite (lgamma of a negative non-integer is), so only
    torch's argument validation, off in training, sees it."""
    def model(x):
        shape = pyro.param("shape", torch.tensor(-0.5))  # forgot constraint=constraints.positive
        with pyro.plate("data", x.shape[0]):
            w = pyro.sample("w", dist.Gamma(shape, 1.0).expand([Z]).to_event(1))
            pyro.sample("x", dist.Normal(w.sum(-1, keepdim=True).expand(*w.shape[:-1], D), 1.0).to_event(1), obs=x)

    def guide(x):
        rate = pyro.param("rate", torch.ones(Z), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("w", dist.LogNormal(x[..., :Z] * 0.1, rate).to_event(1))

    return model, guide


def test_a_parameter_outside_its_constraint_is_refused_by_train_before_any_step(tmp_path, validation_off):
    model, guide = _gamma_prior_pair()
    x = torch.randn(40, D)
    message = r"model site 'w': parameter 'concentration' of Gamma lies outside its constraint GreaterThan"
    with pytest.raises(ModelGuideError, match=message):
        check_model_guide(model, guide, x, elbo="trace")
    with pytest.raises(ModelGuideError, match=message):
        train(model, guide, x, batch_size=10, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    assert pyro.param("shape").item() == -0.5  # no step was taken


def _plain_pair(note: str | None = None, extra_plate: bool = False):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand(*z.shape[:-1], D), 1.0).to_event(1), obs=x)

    def guide(x):
        if note:
            warnings.warn(note, UserWarning)
        if extra_plate:
            with pyro.plate("components", 3):  # left over from an earlier version: no site inside
                pass
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x[..., :Z] * 0.1, 1.0).to_event(1))

    return model, guide


def test_pyros_warnings_become_errors_and_the_users_are_passed_on(validation_off):
    x = torch.randn(20, D)
    with pytest.raises(ModelGuideError, match=r"Pyro warns: Found plate statements in guide but not model"):
        check_model_guide(*_plain_pair(extra_plate=True), x)
    with pytest.warns(UserWarning, match="a note from the user's guide"):
        check_model_guide(*_plain_pair(note="a note from the user's guide"), x)


def _relaxed_pair(temperature: float):
    """A relaxed one-hot categorical latent (Gumbel-softmax) with ``CATEGORIES`` categories."""
    t = torch.tensor(temperature)

    def model(x):
        w = pyro.param("w", torch.linspace(-1.0, 1.0, CATEGORIES * D).reshape(CATEGORIES, D))
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.RelaxedOneHotCategorical(t, logits=x.new_zeros(CATEGORIES)).expand([x.shape[0]]))
            pyro.sample("x", dist.Bernoulli(logits=y @ w).to_event(1), obs=x)

    def guide(x):
        a = pyro.param("a", torch.linspace(-2.0, 2.0, D * CATEGORIES).reshape(D, CATEGORIES))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.RelaxedOneHotCategorical(t, logits=x @ a))

    return model, guide


def test_a_relaxed_latent_at_a_low_temperature_is_refused_by_name():
    """At temperature 0.1 about 3e-4 of float32 draws have a component that underflows to 0, where
    the log-density is not finite (and more fail torch's simplex check by rounding); the estimator
    used to stop with torch's raw support error."""
    model, guide = _relaxed_pair(0.1)
    x = torch.bernoulli(torch.full((20, D), 0.5))
    message = r"site 'y': .* RelaxedOneHotCategorical .* at temperature 0.1 .* raise the temperature"
    with pytest.raises(ModelGuideError, match=message):
        check_model_guide(model, guide, x, elbo="trace")
    with pytest.raises(ModelGuideError, match=message):
        estimate_log_likelihood(model, guide, x, num_samples=1000, batch_size=10, seed=0)
    # the estimators' own path, without the checker: a draw that fails torch's support check is named
    with pytest.raises(ModelGuideError, match=r"site 'y': a guide draw fails the support check .* temperature 0.1"):
        for seed in range(5):
            pyro.set_rng_seed(seed)
            log_importance_weights(model, guide, x, num_particles=2000, max_plate_nesting=1)


def test_a_relaxed_latent_at_a_moderate_temperature_passes_and_is_estimated():
    model, guide = _relaxed_pair(0.5)
    x = torch.bernoulli(torch.full((20, D), 0.5))
    check_model_guide(model, guide, x, elbo="trace")
    result = estimate_log_likelihood(model, guide, x, num_samples=200, batch_size=10, seed=0)
    assert torch.isfinite(result.log_likelihood).all()
