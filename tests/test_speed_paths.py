"""The fast paths give the eager path's numbers: torch.compile, the fused optimizer; one host read a step.

Real MNIST, real Pyro inference; each fast path is compared with the eager one at the same seeds.
"""

import contextlib

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from torch import nn

from pyro_vae import VAE, train
from pyro_vae.objectives import get_elbo
from pyro_vae.optim import FusedOptim, make_optimizer, scale_learning_rate
from pyro_vae.training import ELBOLoss, svi_step

PARTICLES = {"trace": 1, "meanfield": 1, "iwae": 5}


def params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def run_steps(objective, optim, batches, seed=1):
    """SVI steps of a fresh VAE (seed 0 weights) through train()'s own step; losses and final params."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = VAE(784, latent_dim=5, hidden_dim=64)
    loss_fn = ELBOLoss(vae, objective, vae.model, vae.guide)
    pyro.set_rng_seed(seed)
    with pyro.validation_enabled(False):
        losses = [float(svi_step(loss_fn, optim, x)[0]) for x in batches]
    return losses, params()


@pytest.fixture
def batches(mnist):
    x = torch.bernoulli(mnist.train[:200], generator=torch.Generator().manual_seed(0))
    return [x[:64], x[64:128], x[128:164], x[164:]]  # two shapes, as full and last minibatches


@contextlib.contextmanager
def host_reads():
    """Records every tensor-to-host read made from Python (a host sync on a GPU): ``.item()``,
    ``bool()``/``float()``/``int()`` of a tensor, ``.tolist()``, ``.cpu()``, ``.numpy()``."""
    names = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy")
    saved = {name: getattr(torch.Tensor, name) for name in names}
    reads = []

    def recording(name, method):
        def read(self, *args, **kwargs):
            reads.append(name)
            return method(self, *args, **kwargs)
        return read

    for name, method in saved.items():
        setattr(torch.Tensor, name, recording(name, method))
    try:
        yield reads
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "iwae"])
def test_a_step_reads_one_boolean_to_the_host(elbo, batches):
    """The step loop's only host sync is the finiteness flag: no .item() in the ELBOs (Pyro's
    Trace_ELBO makes six host reads a step for this pair, TraceMeanField_ELBO four)."""
    vae = VAE(784, latent_dim=5, hidden_dim=64)
    objective = get_elbo(elbo, PARTICLES[elbo], max_plate_nesting=1)
    loss_fn = ELBOLoss(vae, objective, vae.model, vae.guide)
    optim = make_optimizer("adam", 1e-3)
    with pyro.validation_enabled(False):
        svi_step(loss_fn, optim, batches[0])  # the optimizer's state is created
        with host_reads() as reads:
            for _ in range(3):
                svi_step(loss_fn, optim, batches[0])
    assert reads == ["__bool__"] * 3


def test_train_reads_one_boolean_per_step(mnist):
    """In train()'s loop the per-step host reads are the finiteness flag alone: the losses are
    summed on the device and read once per log interval (here: at the end of the epoch)."""
    def reads(num_train):
        pyro.clear_param_store()
        vae = VAE(784, latent_dim=5, hidden_dim=32)
        data = mnist.subset(num_train=num_train, num_test=100)
        with host_reads() as recorded:
            train(vae.model, vae.guide, data, batch_size=50, epochs=1, log_interval=10**6, progress=False)
        return len(recorded)

    assert reads(1000) - reads(500) == 10  # ten more steps, ten more reads


def test_train_with_compiled_networks_equals_eager(mnist):
    data = mnist.subset(num_train=1050, num_test=500)  # 11 steps of 100, the last one of 50

    def run(**kw):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = VAE(784, latent_dim=5, hidden_dim=64)
        result = train(vae.model, vae.guide, data, elbo="meanfield", epochs=2, progress=False, **kw)
        return result, params(), vae

    eager, eager_params, _ = run()
    fast, fast_params, vae = run(compile=True)
    for e, f in zip(eager.history, fast.history):
        assert f["train_elbo"] == pytest.approx(e["train_elbo"], abs=1e-3)
        assert f["test_elbo"] == pytest.approx(e["test_elbo"], abs=1e-3)
    for name in eager_params:
        torch.testing.assert_close(fast_params[name], eager_params[name], rtol=1e-4, atol=1e-5)
    assert all(m._compiled_call_impl is None for m in vae.children())  # compile is undone after the run


def test_fused_optim_is_pyro_adam_in_one_optimizer(batches):
    objective = get_elbo("trace", max_plate_nesting=1)
    _, per_param = run_steps(objective, pyro.optim.Adam({"lr": 1e-2}), batches)
    # torch's single-tensor implementation over all parameters: bitwise Pyro's per-parameter Adam
    _, single = run_steps(objective, FusedOptim(torch.optim.Adam, {"lr": 1e-2, "foreach": False}), batches)
    assert all(torch.equal(single[k], per_param[k]) for k in per_param)
    # the default (fused kernel): the same update up to float rounding
    optim = make_optimizer("adam", 1e-2)
    _, fused = run_steps(objective, optim, batches)
    group = optim.optimizer.param_groups[0]  # one optimizer over every parameter of the pair
    assert group["fused"] is True and len(group["params"]) == len(list(pyro.get_param_store().keys())) == 10
    for k in per_param:
        torch.testing.assert_close(fused[k], per_param[k], rtol=1e-5, atol=1e-6)


def test_optimizer_states_load_across_fused_and_per_parameter(batches):
    objective = get_elbo("trace", max_plate_nesting=1)
    single = lambda: FusedOptim(torch.optim.Adam, {"lr": 1e-2, "foreach": False})  # noqa: E731

    def two_halves(first, second):
        optim = first()
        run_steps(objective, optim, batches[:2])
        halfway = params()
        resumed = second()
        resumed.set_state(optim.get_state())
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = VAE(784, latent_dim=5, hidden_dim=64)
        loss_fn = ELBOLoss(vae, objective, vae.model, vae.guide)
        vae.model(batches[0]), vae.guide(batches[0])  # registers the parameters in the param store
        with torch.no_grad():
            for name, p in pyro.get_param_store().named_parameters():
                p.copy_(halfway[name])
        pyro.set_rng_seed(7)
        for x in batches[2:]:
            svi_step(loss_fn, resumed, x)
        return params()

    straight = two_halves(lambda: pyro.optim.Adam({"lr": 1e-2}), lambda: pyro.optim.Adam({"lr": 1e-2}))
    for first, second in ((lambda: pyro.optim.Adam({"lr": 1e-2}), single), (single, lambda: pyro.optim.Adam({"lr": 1e-2}))):
        crossed = two_halves(first, second)
        assert all(torch.equal(straight[k], crossed[k]) for k in straight)


def test_scale_learning_rate_reaches_the_fused_optimizer(batches):
    optim = make_optimizer("adagrad", 0.1)
    run_steps(get_elbo("trace", max_plate_nesting=1), optim, batches[:1])
    scale_learning_rate(optim, 0.5)
    assert optim.optimizer.param_groups[0]["lr"] == 0.05 and optim.pt_optim_args["lr"] == 0.05
    assert isinstance(optim.optimizer, torch.optim.Adagrad)


def test_a_module_registered_twice_is_stepped_once(batches):
    """Pyro's SVI steps each tensor once even when two names share it; so does train()'s step."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(784))

        def model(self, x):
            pyro.module("m", self)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", dist.Bernoulli(logits=self.w).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("g", self)

    pair = Shared()
    optim = pyro.optim.SGD({"lr": 1e-3})
    loss_fn = ELBOLoss(pair, get_elbo("trace", max_plate_nesting=1), pair.model, pair.guide)
    x = batches[0]
    expected = x.sum(0) - x.shape[0] * torch.sigmoid(torch.zeros(784))  # d log p / d w at w = 0
    svi_step(loss_fn, optim, x)
    torch.testing.assert_close(pair.w.detach(), 1e-3 * expected)


@pytest.mark.parametrize("name, options", [("hierarchical", {"latent_dim": 4, "hidden_dim": 16}),
                                           ("iaf", {"latent_dim": 4, "hidden_dim": 16, "num_flows": 1})])
def test_compile_runs_every_network_of_nested_pairs(name, options, mnist):
    """The hierarchical pair keeps its nets in ModuleLists and the IAF guide calls its nets through
    Pyro transforms: compiling the module's children compiled nothing that ran."""
    from torch._dynamo.utils import counters

    from pyro_vae import build_model
    from pyro_vae.training.speed import compile_targets

    pair = build_model(name, 784, **options)
    x = torch.bernoulli(mnist.train[:2])
    targets = compile_targets(pair, pair.model, pair.guide, x)
    held = {id(p) for t in targets for p in t.parameters()}
    assert held == {id(p) for p in pair.parameters()}  # every parameter sits in a compiled net
    torch._dynamo.reset()
    counters.clear()
    train(pair.model, pair.guide, mnist.subset(num_train=40), batch_size=20, progress=False, compile=True)
    # one graph (at least) per compiled net was captured and run
    assert counters["stats"]["unique_graphs"] >= len(targets), dict(counters["stats"])
    assert all(t._compiled_call_impl is None for t in targets)  # compile is undone after the run


class DirectParameterPair(nn.Module):
    """A pair written here whose decoder bias is a parameter used directly, outside any net call."""

    def __init__(self):
        super().__init__()
        self.decoder = nn.Linear(2, 784)
        self.bias = nn.Parameter(torch.zeros(784))
        self.encoder = nn.Linear(784, 4)

    def model(self, x):
        pyro.module("pair", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z) + self.bias).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("pair", self)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_compile_refuses_a_pair_it_cannot_compile_whole(mnist, tmp_path):
    pair = DirectParameterPair()
    with pytest.raises(ValueError, match=r"compile=True would leave parameters \['bias'\] eager"):
        train(pair.model, pair.guide, mnist.subset(num_train=40), batch_size=20, progress=False, compile=True,
              out=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written
