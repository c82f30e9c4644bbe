"""The data plate's name goes everywhere an objective or an estimate needs it (``get_elbo``,
``evaluate_elbo``, ``train``), and a log-likelihood estimate says which quantity it estimated:
``log p(x)``, ``log p(x | y)``, ``log p(x, y)``. Pairs written here as Pyro users write them."""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO
from torch import nn

from pyro_vae import ModelGuideError, build_model, estimate_log_likelihood, evaluate_elbo, train
from pyro_vae.cli import main
from pyro_vae.data import Dataset
from pyro_vae.evaluation import LogLikelihoodResult, estimated_quantity
from pyro_vae.objectives import IWAE_ELBO, get_elbo

D, LATENT = 12, 2


def mlp(n_in, n_out, hidden=16):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


def normal(out):
    loc, raw = out.chunk(2, -1)
    return dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)


def bits(n, seed):
    """``(n, D)`` binary data drawn from fixed pixel probabilities."""
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.linspace(0.1, 0.9, D).expand(n, D), generator=g)


DATA = Dataset(name="bits", train=bits(200, 0), test=bits(60, 1), image_shape=None, likelihood="bernoulli")


class Plated(nn.Module):
    """A VAE whose plate over datapoints is called ``plate``."""

    def __init__(self, plate):
        super().__init__()
        self.plate, self.enc, self.dec = plate, mlp(D, 2 * LATENT), mlp(LATENT, D)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate(self.plate, x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate(self.plate, x.shape[0]):
            pyro.sample("z", normal(self.enc(x)))


def twins():
    """The same pair (same initial weights) with its plate called "batch" and "data"."""
    pairs = []
    for plate in ("batch", "data"):
        pyro.set_rng_seed(0)
        pairs.append(Plated(plate))
    return pairs


def test_iwae_trains_and_evaluates_on_a_renamed_plate_to_the_numbers_of_the_data_plate():
    results = []
    for pair in twins():
        pyro.set_rng_seed(0)
        results.append(train(pair.model, pair.guide, DATA, elbo="iwae", num_particles=3, epochs=2, batch_size=50,
                             lr=1e-2, data_plate=pair.plate, progress=False))
    batch, data = results
    assert [h["test_elbo"] for h in batch.history] == [h["test_elbo"] for h in data.history]
    assert [h["test_elbo_se"] for h in batch.history] == [h["test_elbo_se"] for h in data.history]
    assert batch.history[1]["test_elbo"] != batch.history[0]["test_elbo"]  # it trained


def test_evaluate_elbo_and_get_elbo_take_the_plate_name():
    renamed, plain = twins()
    x = DATA.test
    elbos, losses = [], []
    for pair, plate in ((renamed, {"data_plate": "batch"}), (plain, {})):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        elbos.append(evaluate_elbo(pair.model, pair.guide, x, 25, **plate))
        pyro.set_rng_seed(2)
        losses.append(get_elbo("iwae", 4, max_plate_nesting=1, **plate).differentiable_loss(pair.model, pair.guide, x))
    assert elbos[0] == elbos[1]
    assert torch.equal(losses[0], losses[1])
    with pytest.raises(ModelGuideError, match="'data'"):
        evaluate_elbo(renamed.model, renamed.guide, x)
    with pytest.raises(ValueError, match="outside the plate 'data'"):
        get_elbo("iwae", 4, max_plate_nesting=1).differentiable_loss(renamed.model, renamed.guide, x)


def test_elbo_objects_get_the_plate_name_and_a_second_name_is_refused():
    assert get_elbo("iwae", 2, data_plate="batch", max_plate_nesting=1).data_plate == "batch"
    assert get_elbo(RenyiELBO(alpha=0, num_particles=3), data_plate="batch").data_plate == "batch"
    assert get_elbo(IWAE_ELBO(3, data_plate="batch"), data_plate="batch").data_plate == "batch"
    with pytest.raises(ValueError, match="built with data_plate='batch' but data_plate='data' was asked for"):
        get_elbo(IWAE_ELBO(3, data_plate="batch"))


# -- the quantity estimated ---------------------------------------------------------------------------------


class Observes(nn.Module):
    """``p(y) p(z) p(x | z, y)`` observing ``y`` as well as ``x`` (M2's labelled term); ``y = -1``
    marks an unlabelled row, whose ``y`` site is masked out."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = mlp(D + 3, 2 * LATENT), mlp(LATENT + 3, D)

    def model(self, x, y=None):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            with poutine.mask(mask=y >= 0):
                pyro.sample("y", dist.Categorical(logits=x.new_zeros(3)), obs=y.clamp(min=0))
            c = nn.functional.one_hot(y.clamp(min=0), 3).to(x.dtype)
            z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))
            logits = self.dec(torch.cat([z, c.expand(*z.shape[:-1], 3)], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.module("enc", self.enc)
        c = nn.functional.one_hot(y.clamp(min=0), 3).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", normal(self.enc(torch.cat([x, c], -1))))


class Completion(nn.Module):
    """Pyro's CVAE example: observe the bottom half of a datapoint given its top half ``top``."""

    def __init__(self):
        super().__init__()
        self.prior, self.gen, self.rec = mlp(D, 2 * LATENT), mlp(LATENT + D, D), mlp(2 * D, 2 * LATENT)

    def model(self, bottom, top=None):
        pyro.module("cvae", self)
        with pyro.plate("data", bottom.shape[0]):
            z = pyro.sample("z", normal(self.prior(top)))
            logits = self.gen(torch.cat([z, top.expand(*z.shape[:-1], D)], -1))
            pyro.sample("bottom", dist.Bernoulli(logits=logits).to_event(1), obs=bottom)

    def guide(self, bottom, top=None):
        pyro.module("cvae", self)
        with pyro.plate("data", bottom.shape[0]):
            pyro.sample("z", normal(self.rec(torch.cat([top, bottom], -1))))


def quantity(model, guide, x, *args, **kwargs):
    return estimate_log_likelihood(model, guide, x, 10, 30, *args, bound_ks=(), diagnostics=False, seed=0,
                                   **kwargs).quantity


def test_the_estimate_names_what_it_estimates():
    x = DATA.test
    labels = torch.arange(len(x)) % 3
    pair = Plated("data")
    assert quantity(pair.model, pair.guide, x) == "log p(x)"
    conditional = build_model("conditional", D, latent_dim=LATENT, hidden_dim=8, num_classes=3)
    assert quantity(conditional.model, conditional.guide, x, labels) == "log p(x | y)"  # positional: its name
    assert quantity(conditional.model, conditional.guide, x, y=labels) == "log p(x | y)"
    m2 = Observes()
    assert quantity(m2.model, m2.guide, x, y=labels) == "log p(x, y)"
    assert quantity(m2.model, m2.guide, x, y=torch.full_like(labels, -1)) == "log p(x)"  # y masked out: unlabelled
    cvae = Completion()
    assert quantity(cvae.model, cvae.guide, x, top=DATA.train[:60]) == "log p(bottom | top)"


def test_only_per_datapoint_inputs_condition_and_the_rngs_are_left_alone():
    def model(x, temperature):
        Plated("data").model(x * temperature)

    assert estimated_quantity(model, DATA.test, (torch.tensor(1.0),)) == "log p(x)"
    assert estimated_quantity(lambda x, *a: model(x, 1.0), DATA.test, (DATA.test[:, 0],)) == "log p(x | arg1)"
    pair = Plated("data")
    state = torch.get_rng_state()
    estimated_quantity(pair.model, DATA.test)
    assert torch.equal(torch.get_rng_state(), state)


def test_the_quantity_is_saved_printed_and_old_reports_read_as_log_p_x(tmp_path, capsys):
    values = torch.tensor([-9.0, -8.0, -7.5], dtype=torch.float64)
    result = LogLikelihoodResult(values, 50, {1: values - 1}, data_fingerprint="sha256:0", quantity="log p(x | y)")
    result.save(tmp_path / "a.json")
    assert LogLikelihoodResult.load(tmp_path / "a.json").quantity == "log p(x | y)"
    assert result.format().startswith("log p̂(x | y), K = 50, 3 datapoints: -8.167")
    report = json.loads((tmp_path / "a.json").read_text())
    del report["summary"]["quantity"]
    (tmp_path / "old.json").write_text(json.dumps(report))
    assert LogLikelihoodResult.load(tmp_path / "old.json").quantity == "log p(x)"
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "old.json")]) == 0
    out = capsys.readouterr().out
    assert "A: " in out and "(log p(x | y), K = 50)" in out and "(log p(x), K = 50)" in out
    assert "note: A estimates log p(x | y) and B log p(x)" in out
    row = next(line for line in out.splitlines() if line.startswith("log p(x | y) K=50 "))
    assert "+0.000 ± 0.000" in row
