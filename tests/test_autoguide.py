"""AutoAmortizedNormal: an amortized guide built from a trace of the model, for pairs written here as
Pyro users write them (model functions with ``pyro.module`` and ``pyro.plate("data", ...)``).

Exactness is checked on a linear Gaussian model whose posterior lies in the guide's family, where
the ELBO gap KL(q(z | x) || p(z | x)) and log p(x) are known in closed form.
"""

import inspect
import math
import os
import random
import subprocess
import sys

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

import pyro_vae
from pyro_vae import AutoAmortizedNormal, RunFolder, check_model_guide, estimate_log_likelihood, load_run, train
from pyro_vae.autoguide import trace_model
from pyro_vae.check.structure import pair_structure
from pyro_vae.training.checkpoint import read_checkpoint

# ---------------------------------------------------------------- a linear Gaussian model, posterior known
# z ~ N(0, I_2), x | z ~ N(W z + mu, sigma^2 I_5) with orthogonal columns of W: the posterior
# N(M^-1 W^T (x - mu), sigma^2 M^-1), M = W^T W + sigma^2 I, has a *diagonal* covariance and a mean
# linear in x, so a linear AutoAmortizedNormal (hidden_dims=()) can represent it exactly.
SIGMA = 0.5
_g = torch.Generator().manual_seed(0)
W = torch.linalg.qr(torch.randn(5, 2, generator=_g, dtype=torch.float64))[0] * torch.tensor([2.0, 1.0]).double()
MU = torch.randn(5, generator=_g, dtype=torch.float64)
M = W.T @ W + SIGMA**2 * torch.eye(2, dtype=torch.float64)


def linear_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + MU, SIGMA).to_event(1), obs=x)


def sample_linear(n, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return z @ W.T + MU + SIGMA * torch.randn(n, 5, generator=g, dtype=torch.float64)


def exact_posterior(x):
    """Mean ``(N, 2)`` and standard deviations ``(2,)`` of p(z | x)."""
    return torch.linalg.solve(M, W.T @ (x - MU).T).T, (SIGMA**2 * torch.linalg.inv(M)).diagonal().sqrt()


def exact_log_likelihood(x):
    return dist.MultivariateNormal(MU, W @ W.T + SIGMA**2 * torch.eye(5, dtype=torch.float64)).log_prob(x)


def guide_normal(guide, x, site="z", **conditioned):
    """``(loc, scale)`` of the guide's Normal at ``site`` (given ``conditioned`` earlier values)."""
    trace = poutine.trace(poutine.condition(guide, data=conditioned)).get_trace(x)
    base = trace.nodes[site]["fn"].base_dist
    return base.loc.detach(), base.scale.detach()


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here hold hundreds of values: one intra-op thread. (With two, torch 2.14 wakes its
    OpenMP pool for each elementwise op, about 10 ms each on a 2-core machine whose other core is busy.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_linear():
    """A linear AutoAmortizedNormal trained on 256 points with Pyro's own SVI (meanfield, 16 vectorized
    particles, Adam with a learning rate decaying 0.05 -> 0.0002 over 600 full-batch steps)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = sample_linear(256, seed=1)
    guide = AutoAmortizedNormal(linear_model, x[:4], hidden_dims=())
    elbo = pyro.infer.TraceMeanField_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1)
    svi = pyro.infer.SVI(linear_model, guide, pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.004 ** (1 / 600)}), elbo)
    initial_gap = mean_gap(guide, x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the module fixture runs before the function fixture one_thread
    for _ in range(600):
        svi.step(x)
    torch.set_num_threads(threads)
    pyro.clear_param_store()
    return guide, initial_gap


def mean_gap(guide, x):
    """log p(x) - ELBO = KL(q(z | x) || p(z | x)), exactly (two diagonal Gaussians), mean over x."""
    loc, scale = guide_normal(guide, x)
    mean, std = exact_posterior(x)
    q, p = dist.Normal(loc, scale).to_event(1), dist.Normal(mean, std).to_event(1)
    return float(torch.distributions.kl_divergence(q, p).mean())


def test_linear_gaussian_guide_reaches_the_exact_posterior(trained_linear):
    guide, initial_gap = trained_linear
    x = sample_linear(500, seed=2)  # new data: the guide is amortized, not fitted per point
    loc, scale = guide_normal(guide, x)
    mean, std = exact_posterior(x)
    # The posterior lies in the family, so the optimum is exact; what is left is the optimizer's noise
    # around it (measured: at most 0.02 posterior standard deviations in the mean, 0.7% in the scale, an
    # ELBO gap of 4e-5 nats). The bounds leave a margin of 2.5x and more; an error of 5% of a standard
    # deviation in each mean and scale would cost about 0.5 * 3 * 0.05^2 * 2 dims = 0.008 nats. The
    # untrained guide (near N(0, I)) is several nats off.
    assert float(((loc - mean) / std).abs().max()) < 0.05
    assert float((scale / std - 1).abs().max()) < 0.05
    assert initial_gap > 2.0 and mean_gap(guide, x) < 0.005


def test_linear_gaussian_log_likelihood_estimate_matches_the_exact_one(trained_linear):
    guide, _ = trained_linear
    x = sample_linear(200, seed=3)
    result = estimate_log_likelihood(linear_model, guide, x, num_samples=200, batch_size=100, seed=0)
    exact = exact_log_likelihood(x)
    assert abs(result.mean - float(exact.mean())) < 3 * result.stderr
    # paired, per datapoint: with q close to p(z | x) every importance weight is close to p(x), so
    # log p̂(x_n) is within a few hundredths of a nat of log p(x_n) (the ELBO gap is < 0.01, above)
    assert float((result.log_likelihood - exact).abs().max()) < 0.05
    assert abs(result.bound(1)[0] - float(exact.mean())) < 0.02  # the ELBO (k = 1) from the same samples


# ---------------------------------------------------------------- a top-down hierarchy z2 -> z1 -> x
def make_hierarchy(data_dim=6, seed=0):
    torch.manual_seed(seed)
    decoder = nn.ModuleDict({"z1": nn.Linear(2, 3), "x": nn.Linear(3, data_dim)})

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(decoder["z1"](z2), 0.5).to_event(1))
            pyro.sample("x", dist.Normal(decoder["x"](z1), 1.0).to_event(1), obs=x)

    return model, decoder


def test_hierarchical_guide_is_top_down_and_passes_the_checker():
    model, _ = make_hierarchy()
    x = torch.randn(16, 6)
    guide = AutoAmortizedNormal(model, x, hidden_dims=(8,))
    assert inspect.signature(guide) == inspect.signature(model)
    trace = poutine.trace(guide).get_trace(x)
    assert [n for n, s in trace.nodes.items() if s["type"] == "sample" and n in ("z1", "z2")] == ["z2", "z1"]
    # q(z1 | x, z2): moving z2 moves q(z1)'s parameters, and leaves q(z2 | x) alone
    z2 = torch.randn(16, 2)
    loc_a, scale_a = guide_normal(guide, x, "z1", z2=z2)
    loc_b, scale_b = guide_normal(guide, x, "z1", z2=z2 + 1.0)
    assert not torch.allclose(loc_a, loc_b) and not torch.allclose(scale_a, scale_b)
    assert torch.equal(guide_normal(guide, x, "z2", z2=z2)[0], guide_normal(guide, x, "z2", z2=z2 + 1.0)[0])
    # the dependency analysis agrees: z1 reads z2, and both analytic KLs are terms of the ELBO (meanfield)
    structure = pair_structure(model, guide, x)
    assert structure.guide_parents == {"z2": frozenset(), "z1": frozenset({"z2"})}
    assert structure.analytic_kl_sites == {"z1", "z2"}
    for elbo in ("trace", "meanfield", "iwae"):
        check_model_guide(model, guide, x, elbo=elbo)


def test_building_leaves_the_param_store_and_the_rng_streams_alone():
    model, _ = make_hierarchy()
    x = torch.randn(4, 6)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    trace_model(model, x)
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    AutoAmortizedNormal(model, x, hidden_dims=(8,))
    assert list(pyro.get_param_store().keys()) == []  # the model's pyro.module entries were removed
    pyro.param("kept", torch.ones(1))
    trace_model(model, x)
    assert list(pyro.get_param_store().keys()) == ["kept"]


# ---------------------------------------------------------------- constrained supports
def constrained_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        rate = pyro.sample("rate", dist.Gamma(2.0, 2.0))
        scales = pyro.sample("scales", dist.LogNormal(x.new_zeros(2), 1.0).to_event(1))
        mix = pyro.sample("mix", dist.Dirichlet(x.new_ones(3)))
        loc = torch.cat([z, mix], -1) * rate.unsqueeze(-1)
        scale = torch.cat([scales, scales.new_ones(scales.shape[:-1] + (3,))], -1)
        pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)


def test_constrained_sites_are_drawn_inside_their_support():
    x = torch.randn(32, 5)
    guide = AutoAmortizedNormal(constrained_model, x, hidden_dims=(16,))
    assert {s.name: tuple(s.unconstrained_shape) for s in guide.sites} == {
        "z": (2,), "rate": (), "scales": (2,), "mix": (2,)}  # a 3-simplex has 2 free coordinates
    with pyro.plate("particles", 200, dim=-2):  # 200 draws per datapoint, vectorized
        trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(constrained_model, trace=trace)).get_trace(x)
    for name in ("rate", "scales", "mix"):
        value, support = trace.nodes[name]["value"], model_trace.nodes[name]["fn"].support
        assert bool(support.check(value).all()) and torch.isfinite(trace.nodes[name]["fn"].log_prob(value)).all()
    assert torch.allclose(trace.nodes["mix"]["value"].sum(-1), torch.ones(()))
    assert type(trace.nodes["z"]["fn"]).__name__ == "Independent"  # a plain Normal on the reals: analytic KL
    assert type(trace.nodes["rate"]["fn"]).__name__ == "TransformedDistribution"
    check_model_guide(constrained_model, guide, x, elbo="iwae")
    result = estimate_log_likelihood(constrained_model, guide, x, num_samples=50, seed=0)
    assert math.isfinite(result.mean) and result.mean >= result.bound(1)[0] - 1e-9  # log p̂_50 >= ELBO, same draws


def test_an_interval_with_constant_bounds_follows_any_batch_size():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample("u", dist.Uniform(x.new_zeros(2), 3.0 * x.new_ones(2)).to_event(1))
            pyro.sample("x", dist.Normal(u, 1.0).to_event(1), obs=x)

    guide = AutoAmortizedNormal(model, torch.randn(8, 2), hidden_dims=(4,))
    u = guide(torch.randn(5, 2))["u"]
    assert u.shape == (5, 2) and bool(((u > 0) & (u < 3)).all())
    check_model_guide(model, guide, torch.randn(5, 2), elbo="iwae")


def test_a_scaled_latent_is_scaled_alike_in_the_guide():
    def model(x):  # a beta-VAE's KL weight, written into the model
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=0.25):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    x = torch.randn(8, 2)
    guide = AutoAmortizedNormal(model, x, hidden_dims=(4,))
    assert poutine.trace(guide).get_trace(x).nodes["z"]["scale"] == 0.25
    check_model_guide(model, guide, x, elbo="meanfield", free_bits=0.1)


# ---------------------------------------------------------------- per-datapoint inputs
def conditional_model(x, y, mask=None):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        loc = z.sum(-1, keepdim=True) + nn.functional.one_hot(y, 3).to(x.dtype) @ x.new_ones(3, 4)
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def test_integer_labels_are_one_hot_encoded_when_given_a_class_count():
    x, y = torch.randn(12, 4), torch.arange(12) % 3
    with pytest.raises(ValueError, match=r"input 'y' holds integers.*num_classes=\{'y': K\}"):
        AutoAmortizedNormal(conditional_model, x, y, hidden_dims=(8,))
    with pytest.raises(ValueError, match=r"num_classes names \['label'\]"):
        AutoAmortizedNormal(conditional_model, x, y, num_classes={"y": 3, "label": 3})
    guide = AutoAmortizedNormal(conditional_model, x, y, mask=torch.ones(12, 2), hidden_dims=(8,), num_classes={"y": 3})
    assert guide.inputs == ("y", "mask") and guide.trunk[0].in_features == 4 + 3 + 2
    trace = poutine.trace(guide).get_trace(x, y=(y + 1) % 3, mask=torch.ones(12, 2))
    other = poutine.trace(guide).get_trace(x, (y + 2) % 3, torch.ones(12, 2))  # positionally: bound by name
    assert not torch.allclose(trace.nodes["z"]["fn"].base_dist.loc, other.nodes["z"]["fn"].base_dist.loc)
    check_model_guide(conditional_model, guide, x, y, elbo="meanfield", mask=torch.ones(12, 2))
    with pytest.raises(ValueError, match="built with the per-datapoint input 'mask'"):
        guide(x, y)


# ---------------------------------------------------------------- refusals
def test_sites_it_cannot_serve_are_refused_by_name():
    x = torch.randn(6, 3)

    def global_latent(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0).expand([3]).to_event(1), obs=x)

    def discrete(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=x.new_zeros(3)))
            pyro.sample("x", dist.Normal(c.to(x.dtype).unsqueeze(-1).expand(x.shape), 1.0).to_event(1), obs=x)

    def nested(x):
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("pixels", 3, dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def data_bounds(x):  # a support that moves with the datapoint: the map onto it cannot be built once
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample("u", dist.Uniform(x.new_zeros(x.shape[0]), x.abs().sum(-1) + 1.0))
            pyro.sample("x", dist.Normal(u.unsqueeze(-1), 1.0).to_event(1), obs=x)

    def no_plate(x):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0]), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x[:, 0])

    with pytest.raises(ValueError, match=r"latent site 'w' lies outside pyro.plate\('data', \.\.\.\): a global latent"):
        AutoAmortizedNormal(global_latent, x)
    with pytest.raises(ValueError, match=r"latent site 'c' is discrete \(Categorical.*enumeration"):
        AutoAmortizedNormal(discrete, x)
    with pytest.raises(ValueError, match=r"latent site 'z' lies in plate\(s\) \['pixels'\] besides 'data'"):
        AutoAmortizedNormal(nested, x)
    with pytest.raises(ValueError, match=r"latent site 'u' has a support whose bounds vary over the batch"):
        AutoAmortizedNormal(data_bounds, x)
    with pytest.raises(ValueError, match=r"declares no pyro.plate\('data', \.\.\.\); pass .* data_plate="):
        AutoAmortizedNormal(no_plate, x)
    assert list(pyro.get_param_store().keys()) == []


# ---------------------------------------------------------------- training, checkpoints, resume
def test_train_checkpoints_and_resumes_bitwise(tmp_path):
    data = torch.randn(120, 6, generator=torch.Generator().manual_seed(4))
    settings = dict(elbo="trace", batch_size=40, progress=False)

    def fresh(seed):
        model, decoder = make_hierarchy(seed=seed)
        return model, AutoAmortizedNormal(model, data[:2], hidden_dims=(8,))

    def params():
        return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}

    model, guide = fresh(0)
    train(model, guide, data, epochs=2, out=tmp_path / "full", **settings)
    expected = params()  # the guide's nets and the model's, under their pyro.module names
    assert any(k.startswith("autoguide$$$heads.1.") for k in expected)
    assert any(k.startswith("decoder$$$") for k in expected)

    model, guide = fresh(0)
    train(model, guide, data, epochs=1, out=tmp_path / "cut", **settings)
    saved = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert saved["epoch"] == 1 and set(saved["params"]) == set(expected)
    pyro.clear_param_store()
    model, guide = fresh(7)  # as in a new process: new objects with other initial weights
    torch.manual_seed(1234)
    train(model, guide, data, epochs=2, out=RunFolder(tmp_path / "cut", resume=True), **settings)
    got = params()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)



def test_the_compiled_step_records_the_autoguide_and_equals_eager():
    """``step="auto"`` compiles long runs: the autoguide must record (shapes only, no Python reads of
    values); ``compiled:replay`` replays the recorded graph op by op, bitwise equal to eager."""
    data = torch.randn(120, 6, generator=torch.Generator().manual_seed(4))
    results = {}
    for step in ("eager", "compiled:replay"):
        model, _ = make_hierarchy(seed=0)
        guide = AutoAmortizedNormal(model, data[:2], hidden_dims=(8,))
        result = train(model, guide, data, elbo="iwae", num_particles=3, epochs=2, batch_size=40, progress=False,
                       step=step)
        results[step] = result, {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    (eager, expected), (compiled, got) = results["eager"], results["compiled:replay"]
    assert compiled.final["compiled_steps"] > 0 and eager.final["compiled_steps"] == 0
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)

FACTORY = '''
import torch
from torch import nn

from pyro_vae import VAE, AutoAmortizedNormal


def make_pair(data_dim, latent_dim=3):
    """The shipped VAE's model, with an autoguide in place of its hand-written encoder."""
    vae = VAE(data_dim, latent_dim=latent_dim, hidden_dim=20)
    guide = AutoAmortizedNormal(vae.model, torch.zeros(2, data_dim), hidden_dims=(20,))
    return vae.model, guide, nn.ModuleList([vae, guide])
'''


def test_the_cli_trains_a_pair_with_an_autoguide_and_its_run_is_rebuilt(data_root, tmp_path, monkeypatch):
    (tmp_path / "autopair.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--pair", "autopair:make_pair", "--num-train",
                           "300", "--num-test", "50", "--epochs", "1", "--out", str(run), "--no-progress", "--device",
                           "cpu", "--data-dir", str(data_root)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    saved = read_checkpoint(run / "checkpoint.pt")["params"]
    assert any(k.startswith("autoguide$$$heads.0.") for k in saved) and not any(k.startswith("encoder") for k in saved)
    pair, data, config = load_run(run, data_dir=data_root)  # the factory builds it again, the checkpoint fills it
    assert config["pair"] == "autopair:make_pair" and isinstance(pair.guide, AutoAmortizedNormal)
    assert all(torch.equal(pyro.get_param_store()[k].detach(), v) for k, v in saved.items())
    result = estimate_log_likelihood(pair.model, pair.guide, data.test[:50], num_samples=20, seed=0)
    assert -544 < result.mean < 0  # better than a decoder that knows nothing (784 log 2 = 543.4 nats)


def test_a_guide_module_beside_a_model_is_no_shipped_pair_and_compile_asks_for_the_module():
    """``owner_module``: neither the model's module nor the autoguide holds both nets, so no module
    is assumed (a run folder does not claim to be the shipped pair; compile asks for module=)."""
    from pyro_vae.training.step import owner_module

    vae = pyro_vae.VAE(784, 2, 8)
    x = torch.zeros(4, 784)
    guide = AutoAmortizedNormal(vae.model, x, hidden_dims=(8,))

    def model(x):
        return vae.model(x)

    assert owner_module(vae.model, vae.guide) is vae
    assert owner_module(vae.model, guide) is None and owner_module(model, guide) is None
    with pytest.raises(ValueError, match="compile=True needs the nn.Module"):
        pyro_vae.train(vae.model, guide, x, epochs=1, batch_size=2, progress=False, compile=True)
