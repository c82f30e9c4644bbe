"""check_model_guide: a conforming pair passes; each broken rule is named, with the site.

Every pair here is written in this file, as a user would write one.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import ModelGuideError, check_model_guide, estimate_log_likelihood, train

D, Z = 6, 2


def _decode(z):
    return dist.Bernoulli(logits=z.sum(-1, keepdim=True).expand(*z.shape[:-1], D)).to_event(1)


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
        pyro.sample("x", _decode(z), obs=x)


def guide(x):
    loc = pyro.param("loc", torch.zeros(Z))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, 1.0).expand([x.shape[0], Z]).to_event(1))


@pytest.fixture
def x():
    return torch.bernoulli(torch.full((20, D), 0.5))


def test_conforming_pair_passes(x):
    assert check_model_guide(model, guide, x, elbo="iwae") is None


def _raises(match, m, g, x, **kw):
    with pytest.raises(ModelGuideError, match=match):
        check_model_guide(m, g, x, **kw)


def test_site_outside_data_plate(x):
    def bad_model(x):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", _decode(z), obs=x)

    def bad_guide(x):
        pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(2))

    _raises(r"site 'z' is not inside pyro.plate\('data'", bad_model, bad_guide, x)


def test_data_plate_of_wrong_size(x):
    def bad_guide(x):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))

    _raises(r"guide site 'z': plate 'data' has size 3 but the batch has 8 datapoints", model, bad_guide, x)


def test_guide_site_missing_from_model(x):
    def bad_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("w", dist.Normal(0.0, 1.0))

    _raises(r"guide site 'w' is not in the model", model, bad_guide, x)


def test_model_latent_missing_from_guide(x):
    def bad_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("extra", dist.Normal(0.0, 1.0))
            pyro.sample("x", _decode(z), obs=x)

    _raises(r"latent site 'extra' of the model has no site in the guide", bad_model, guide, x)


def test_event_shape_mismatch(x):
    def bad_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(Z + 1), 1.0).to_event(1))

    # the model's decoder happens to accept any width, so only the shape check can catch this
    _raises(r"site 'z': the guide's event_shape \(3,\) differs from the model's \(2,\)", model, bad_guide, x)


def test_batch_shape_mismatch(x):
    def bad_guide(x):  # forgot .to_event(1): the latent dimension becomes a batch dimension
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0))

    def bad_model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1, Z), 1.0).to_event(1))
            pyro.sample("x", _decode(z), obs=x.unsqueeze(-2))

    _raises(r"site 'z': the guide's batch_shape \(8, 2\) differs from the model's \(8, 1\)", bad_model, bad_guide, x)


def test_guide_outside_model_support(x):
    def positive_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Gamma(x.new_ones(Z), 1.0).to_event(1))
            pyro.sample("x", _decode(z), obs=x)

    _raises(r"site 'z': the guide draws values outside the support of the model's Gamma", positive_model, guide, x)


def test_non_reparameterizable_site_under_iwae(x):
    def discrete_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(x.new_full((Z,), 0.5)).to_event(1))
            pyro.sample("x", _decode(z), obs=x)

    def discrete_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(x.new_full((Z,), 0.5)).to_event(1))

    check_model_guide(discrete_model, discrete_guide, x, elbo="trace")  # Trace_ELBO copes (score function)
    _raises(r"guide site 'z' \(Bernoulli\) is not reparameterizable", discrete_model, discrete_guide, x, elbo="iwae")


def test_rules_are_checked_site_by_site(x):
    """Every rule of the first guide site is checked before any of the next: here the first site
    is not reparameterizable and the second has the wrong event shape."""
    def two_site_model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Bernoulli(x.new_full((Z,), 0.5)).to_event(1))
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", _decode(z), obs=x)

    def two_site_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Bernoulli(x.new_full((Z,), 0.5)).to_event(1))
            pyro.sample("z", dist.Normal(x.new_zeros(Z + 1), 1.0).to_event(1))

    _raises(r"guide site 'a' \(Bernoulli\) is not reparameterizable", two_site_model, two_site_guide, x, elbo="iwae")
    _raises(r"site 'z': the guide's event_shape \(3,\) differs", two_site_model, two_site_guide, x)


def test_grey_pixels_under_bernoulli(x):
    grey = x.clone()
    grey[15, 0] = 0.5  # beyond the first batch: the support check covers every datapoint
    _raises(r"observed site 'x': 1 of 20 datapoints lie outside the support of Bernoulli", model, guide, grey)


def test_nan_pixels(x):
    def gaussian_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand(*z.shape[:-1], D), 1.0).to_event(1), obs=x)

    bad = x.clone()
    bad[3, 2] = float("nan")
    _raises(r"observed site .x.: 1 of 20 datapoints hold NaN or inf values", gaussian_model, guide, bad)


def test_no_observed_site(x):
    def no_obs(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))

    _raises(r"the model has no observed site", no_obs, guide, x)


def test_failing_model_is_named(x):
    def broken(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z @ torch.ones(3, D)).to_event(1), obs=x)

    _raises(r"the model raised RuntimeError on a batch of 8 datapoints", broken, guide, x)


def test_bad_data_argument():
    with pytest.raises(ModelGuideError, match=r"data is empty"):
        check_model_guide(model, guide, torch.zeros(0, D))
    with pytest.raises(ModelGuideError, match=r"data must be a \(num_datapoints, ...\) tensor"):
        check_model_guide(model, guide, torch.zeros(D))


def test_trainer_and_estimator_run_the_check_first(x, tmp_path):
    grey = torch.rand(40, D)
    with pytest.raises(ModelGuideError, match="outside the support of Bernoulli"):
        train(model, guide, grey, batch_size=10, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing written that looks like a run
    with pytest.raises(ModelGuideError, match="outside the support of Bernoulli"):
        estimate_log_likelihood(model, guide, grey, 10)
