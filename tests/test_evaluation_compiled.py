"""The estimator's compiled chunk (estimate_log_likelihood(..., compiled=...), pyro_vae.evaluation.compiled).

The pairs are written here as Pyro users write them (nets registered with ``pyro.module``,
``F.one_hot`` labels, a branch on the data). ``compiled="replay"`` replays the recorded graph op
by op: with the same seed it must give the eager estimate bit for bit; inductor (``True``) the
same up to float rounding.
"""

import warnings
from unittest import mock

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from linear_gaussian import LinearGaussian
from pyro_vae import estimate_log_likelihood
from pyro_vae.evaluation.compiled import AUTO_MIN_WORK, CompiledChunk, CompiledChunkWarning, use_compiled

D, Z, H, N = 12, 3, 16, 40


class Encoder(nn.Module):
    def __init__(self, extra=0):
        super().__init__()
        self.hidden = nn.Linear(D + extra, H)
        self.loc, self.scale = nn.Linear(H, Z), nn.Linear(H, Z)

    def forward(self, x):
        h = torch.tanh(self.hidden(x))
        return self.loc(h), F.softplus(self.scale(h)) + 1e-3


class Pair(nn.Module):
    """A VAE as in Pyro's tutorial; ``classes > 0``: conditioned on one-hot labels (Pyro's CVAE)."""

    def __init__(self, classes=0, branch=False):
        super().__init__()
        torch.manual_seed(0)
        self.classes, self.branch = classes, branch
        self.encoder = Encoder(classes)
        self.decoder = nn.Sequential(nn.Linear(Z + classes, H), nn.Tanh(), nn.Linear(H, D))

    def _with(self, t, y):
        if not self.classes:
            return t
        c = F.one_hot(y, self.classes).to(t.dtype)
        return torch.cat([t, c.expand(*t.shape[:-1], self.classes)], -1)

    def model(self, x, y=None):
        pyro.module("pair", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            logits = self.decoder(self._with(z, y))
            if self.branch and x.mean() > 0.3:
                logits = logits - 1.0
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.module("pair", self)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(self._with(x, y))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def binary(n=N, seed=0):
    return (torch.rand(n, D, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def estimate(pair, x, compiled, *args, **kwargs):
    return estimate_log_likelihood(pair.model, pair.guide, x, 50, 16, *args, seed=3, compiled=compiled,
                                   particle_chunk_size=25, **kwargs)


def counting():
    calls, call = [0], CompiledChunk.__call__

    def spy(self, *args):
        out = call(self, *args)
        calls[0] += out is not None
        return out

    return mock.patch.object(CompiledChunk, "__call__", spy), calls


def test_the_replayed_chunk_gives_the_eager_estimate_bit_for_bit_and_inductor_up_to_rounding():
    pyro.clear_param_store()
    pair, x = Pair(), binary()
    eager = estimate(pair, x, False)
    patch, calls = counting()
    with patch, warnings.catch_warnings():
        warnings.simplefilter("error", CompiledChunkWarning)
        replayed = estimate(pair, x, "replay")
        compiled = estimate(pair, x, True)
    # 40 points in minibatches of 16: two full minibatches x 2 chunks of 25 particles replay, in each run
    assert calls[0] == 2 * 4
    assert torch.equal(replayed.log_likelihood, eager.log_likelihood)
    assert all(torch.equal(replayed.iwae_bounds[k], eager.iwae_bounds[k]) for k in eager.iwae_bounds)
    assert torch.equal(replayed.ess, eager.ess)  # (k-hat needs K >= 100)
    torch.testing.assert_close(compiled.log_likelihood, eager.log_likelihood, rtol=0, atol=1e-4)


def test_compiled_estimate_of_a_model_with_known_log_likelihood():
    model = LinearGaussian(data_dim=5, latent_dim=2, sigma=0.5)
    x = model.sample(64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompiledChunkWarning)
        result = estimate_log_likelihood(model.model, model.exact_guide, x, 200, 32, seed=0, compiled=True)
    exact = model.exact_log_likelihood(x)
    # the guide is the exact posterior: every weight equals p(x), so the estimate is exact up to rounding
    torch.testing.assert_close(result.log_likelihood, exact, rtol=0, atol=1e-8)


def test_the_global_rng_advances_as_in_the_eager_estimate():
    pyro.clear_param_store()
    pair, x = Pair(), binary()
    states = []
    for compiled in (False, "replay"):
        torch.manual_seed(11)
        result = estimate_log_likelihood(pair.model, pair.guide, x, 50, 16, compiled=compiled, particle_chunk_size=25)
        states.append((torch.get_rng_state(), result.log_likelihood))
    assert torch.equal(states[0][0], states[1][0]) and torch.equal(states[0][1], states[1][1])


def test_one_hot_labels_are_recorded_and_a_label_out_of_range_is_refused():
    pyro.clear_param_store()
    pair, x = Pair(classes=4), binary(48)
    y = torch.randint(0, 4, (48,), generator=torch.Generator().manual_seed(2))
    patch, calls = counting()
    with patch:
        eager, replayed = estimate(pair, x, False, y), estimate(pair, x, "replay", y)
    assert calls[0] == 6 and torch.equal(replayed.log_likelihood, eager.log_likelihood)
    bad = y.clone()
    bad[40] = 4  # in the third minibatch: past the rows that check_model_guide and the recording check run on
    with pytest.raises(ValueError, match=r"F.one_hot lies outside \[0, num_classes\)"):
        estimate(pair, x, "replay", bad)
    with pytest.raises(RuntimeError, match="Class values must be smaller than num_classes"):
        estimate(pair, x, False, bad)  # the eager chunk refuses it too


def test_a_pair_that_cannot_be_recorded_runs_eager_with_one_line_saying_why():
    pyro.clear_param_store()
    pair, x = Pair(branch=True), binary()
    eager = estimate(pair, x, False)
    patch, calls = counting()
    with patch, pytest.warns(CompiledChunkWarning) as caught:
        fallback = estimate(pair, x, "replay")
    lines = [str(w.message) for w in caught if issubclass(w.category, CompiledChunkWarning)]
    assert len(lines) == 1 and "runs eager" in lines[0] and "\n" not in lines[0]
    assert "reads a tensor's value in Python at test_evaluation_compiled.py" in lines[0], lines[0]
    assert calls[0] == 0 and torch.equal(fallback.log_likelihood, eager.log_likelihood)


def test_auto_compiles_large_estimates_only_and_bad_values_are_refused():
    assert use_compiled("auto", AUTO_MIN_WORK) and not use_compiled("auto", AUTO_MIN_WORK - 1)
    assert use_compiled(True, 1) is True and use_compiled(False, 10 ** 9) is False
    assert use_compiled("replay", 1) == "replay"
    with pytest.raises(ValueError, match="compiled must be True, False, 'auto' or 'replay', got 'yes'"):
        use_compiled("yes", 1)


# the shipped pairs under the compiled chunk: recorded, bit for bit; or run eager, naming why; or refused by both
CHUNK_FALLBACKS = {"bernoulli": r"random ops other than parameter-free normal/uniform fills \(aten\.bernoulli\.default\)"}
REFUSED = {"vq", "wae", "wae-gan"}  # point-mass guides: no importance-sampling proposal, eager or compiled


@pytest.mark.parametrize("name", sorted(__import__("pyro_vae").MODELS))
def test_each_shipped_pair_is_recorded_or_named(name):
    from pyro_vae import ModelGuideError
    from pyro_vae.models import build_model, model_options

    options = {"image_shape": (28, 28)} if "image_shape" in model_options(name) else {}
    options.update({k: v for k, v in (("hidden_dim", 16), ("latent_dim", 4), ("groups", 2)) if k in model_options(name)})
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = build_model(name, 784, **options)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 784, generator=g) < 0.3).float()
    named = {"y": torch.randint(0, 10, (64,), generator=g)} if vae.needs_labels else {}

    def run(compiled):
        return estimate_log_likelihood(vae.model, vae.guide, x, 20, 32, seed=0, compiled=compiled,
                                       diagnostics=False, **named).log_likelihood

    if name in REFUSED:
        for compiled in (False, "replay"):
            with pytest.raises(ModelGuideError, match="point mass"):
                run(compiled)
        return
    eager = run(False)
    patch, calls = counting()
    with patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompiledChunkWarning)
        replayed = run("replay")
    lines = [str(w.message) for w in caught if issubclass(w.category, CompiledChunkWarning)]
    assert torch.equal(replayed, eager)
    if name in CHUNK_FALLBACKS:
        assert calls[0] == 0 and len(lines) == 1 and __import__("re").search(CHUNK_FALLBACKS[name], lines[0]), lines
    else:
        assert calls[0] == 2 and lines == []  # two minibatches of 32, one chunk of 20 particles each


# Pyro's validation is off inside the estimator's loop (eager and compiled): what it caught there is
# caught up front (every row of an observed per-datapoint input) or refused at the minibatch, naming the rows

def observes_a(x, a):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("a", dist.Bernoulli(logits=z[..., 0]), obs=a)
        pyro.sample("x", dist.Normal(z.expand(*z.shape[:-1], 3), 1.0).to_event(1), obs=x)


def guide_of_a(x, a):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.mean(-1, keepdim=True), 1.0).to_event(1))


def shrinking_guide(x):
    """The guide's scale is exp(x[:, 0]): 0 in float32 where x[:, 0] = -200."""
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.mean(-1, keepdim=True) / 10, torch.exp(x[:, :1])).to_event(1))


def wide_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(z.expand(*z.shape[:-1], 3), 10.0).to_event(1), obs=x)


@pytest.mark.parametrize("compiled", [False, "replay"])
def test_an_observed_input_outside_its_support_on_a_late_row_is_refused_up_front(compiled):
    from pyro_vae import ModelGuideError

    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    a = (torch.rand(40, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    a[30] = 5.0  # past the 8 rows the pair runs on in check_model_guide
    with pytest.raises(ModelGuideError, match=r"observed site 'a': 1 of 40 datapoints lie outside the support"):
        estimate_log_likelihood(observes_a, guide_of_a, x, 10, 20, a=a, seed=0, compiled=compiled)


@pytest.mark.parametrize("compiled", [False, "replay"])
def test_weights_that_are_nan_on_a_late_row_are_refused_naming_the_row(compiled):
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
    x[50, 0] = -200.0  # in the third minibatch: past check_model_guide's rows and the recording's two minibatches
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompiledChunkWarning)  # the replayed chunk meets the row, not a fallback
        with pytest.raises(ValueError, match=r"weights of 1 datapoint\(s\) are NaN or \+inf \(rows \[50\]\)"):
            estimate_log_likelihood(wide_model, shrinking_guide, x, 10, 20, seed=0, compiled=compiled)
