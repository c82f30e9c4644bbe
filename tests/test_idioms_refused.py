"""Pyro idioms the package cannot compute correctly are refused up front, by name, with the way out.

Each pair here is written the way Pyro users write one (an MLP encoder and decoder registered with
``pyro.module``, ``pyro.plate("data", ...)``): a subsampled data plate, a global latent, a
``PyroSample`` weight, an autoguide, a point-mass guide site, and code that does not broadcast over
particles. Each refusal is matched against its message; the same pair written right passes; and
``train``/``estimate_log_likelihood`` refuse before any step.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import autoguide
from pyro.nn import PyroModule, PyroSample
from torch import nn

from pyro_vae import ModelGuideError, check_model_guide, estimate_log_likelihood, train

N, D, Z, H = 16, 6, 2, 8


@pytest.fixture
def x():
    return torch.bernoulli(torch.full((N, D), 0.5, dtype=torch.float32))


def _plate(x, plate):
    """``plate`` is ``None`` (``pyro.plate("data", x.shape[0])``) or keywords for a subsampled one."""
    return pyro.plate("data", x.shape[0]) if plate is None else pyro.plate("data", **plate)


def _vae(plate=None, decode=None, q=dist.Normal):
    """``(model, guide)`` of an MLP VAE on 0/1 data (its nets in ``model.nets``); ``decode(dec, z, x)``
    gives the logits (default ``dec(z)``), ``q(loc, scale)`` the guide's distribution of ``z``."""
    enc = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, 2 * Z))
    dec = nn.Sequential(nn.Linear(Z + (decode is _cat_dim_1), H), nn.Tanh(), nn.Linear(H, D))

    def model(x):
        pyro.module("decoder", dec)
        with _plate(x, plate):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            logits = dec(z) if decode is None else decode(dec, z, x)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", enc)
        with _plate(x, plate):
            h = enc(x)
            pyro.sample("z", q(h[..., :Z], nn.functional.softplus(h[..., Z:])).to_event(1))

    model.nets = nn.ModuleList([enc, dec])
    return model, guide


def _view(dec, z, x):
    return dec(z.view(-1, Z)).view(-1, D)


def _reshape_to_batch(dec, z, x):
    return dec(z.reshape(x.shape[0], Z))


def _loop(dec, z, x):
    return torch.stack([dec(z[i]) for i in range(x.shape[0])])


def _cat_dim_1(dec, z, x):
    return dec(torch.cat([z, x[:, :1]], dim=1))


def _first_rows(dec, z, x):
    return dec(z.reshape(-1, Z)[: x.shape[0]])  # runs with particles, but uses the first one's z for all


def _broadcasting(dec, z, x):
    """The same decoder written to broadcast: ``...``-reshapes and ``torch.cat(..., dim=-1)``."""
    h = torch.cat([z, torch.zeros_like(z[..., :0])], dim=-1)
    return dec(h.reshape(h.shape[:-1] + (1, Z))).reshape(z.shape[:-1] + (D,))


def _dropout(dec, z, x):
    """Noise of the pair's own given ``z``: the particles cannot be compared, but it broadcasts."""
    return nn.functional.dropout(dec(z), 0.5, training=True)


@pytest.mark.parametrize("elbo", [None, "trace", "iwae"])
@pytest.mark.parametrize("decode", [None, _broadcasting, _dropout])
def test_the_pair_written_right_passes(x, decode, elbo):
    model, guide = _vae(decode=decode)
    assert check_model_guide(model, guide, x, elbo=elbo) is None


@pytest.mark.parametrize("plate, n, b", [
    ({"size": N, "subsample_size": 4}, N, 4),  # b differs from the checker's batch (8)
    ({"size": N, "subsample_size": 8}, N, 8),  # b equals it: used to pass the checker
    ({"size": 100, "subsample": torch.arange(8)}, 100, 8),
])
def test_a_subsampled_data_plate_is_refused(x, plate, n, b):
    model, guide = _vae(plate=plate)
    message = (rf"plate 'data' is subsampled \(pyro.plate\('data', {n}, subsample_size={b}\) or subsample=\): the "
               rf"trainer and the estimators pass minibatches themselves .* multiply the loss by {n}/{b} .*; write "
               r"pyro.plate\('data', x.shape\[0\]\) without subsample_size or subsample$")
    with pytest.raises(ModelGuideError, match=message):
        check_model_guide(model, guide, x)


def test_a_global_latent_is_refused(x):
    enc, dec = nn.Linear(D, 2 * Z), nn.Linear(Z, D)

    def model(x):
        pyro.module("decoder", dec)
        w = pyro.sample("w", dist.Normal(x.new_zeros(D), 1.0).to_event(1))  # one offset for all datapoints
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z) + w).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", enc)
        pyro.sample("w", dist.Normal(pyro.param("w_loc", x.new_zeros(D)), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            h = enc(x)
            pyro.sample("z", dist.Normal(h[..., :Z], h[..., Z:].exp()).to_event(1))

    message = (r"guide site 'w' is not inside pyro.plate\('data', batch\), so it is a global latent, shared by all "
               r"datapoints: the per-datapoint ELBO and the log-likelihood estimator assume every latent belongs to "
               r"one datapoint .*; make it a parameter \(pyro.param, or a network weight instead of a PyroSample\), "
               r"or move it inside pyro.plate\('data', x.shape\[0\]\) with one value per datapoint$")
    with pytest.raises(ModelGuideError, match=message):
        check_model_guide(model, guide, x)


def test_a_per_datapoint_latent_outside_the_plate_is_named_as_a_forgotten_plate(x):
    model, _ = _vae()
    enc = nn.Linear(D, Z)

    def guide(x):  # the plate forgotten: one row per datapoint, but outside pyro.plate("data")
        pyro.module("encoder", enc)
        pyro.sample("z", dist.Normal(enc(x), 1.0).to_event(2))

    message = (r"guide site 'z' is not inside pyro.plate\('data', batch\), but it has one row per datapoint \(shape "
               r"\(8, 2\)\): declare it inside pyro.plate\('data', x.shape\[0\]\)")
    with pytest.raises(ModelGuideError, match=message):
        check_model_guide(model, guide, x)


class BayesianDecoder(PyroModule):
    """A decoder whose weight is a latent (``PyroSample``), as in Bayesian neural networks."""

    def __init__(self):
        super().__init__()
        self.linear = PyroModule[nn.Linear](Z, D)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([D, Z]).to_event(2))

    def forward(self, z):
        return self.linear(z)


def test_a_pyrosample_weight_is_refused(x):
    decoder = BayesianDecoder()
    _, guide = _vae()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    message = (r"model site 'linear.weight' is a latent that the guide does not sample, and the model failed after "
               r"drawing it \(.*\); if it is a weight of a Bayesian layer \(PyroSample\) it is a global latent: .*"
               r"make it a parameter \(pyro.param, or a network weight instead of a PyroSample\)")
    with pytest.raises(ModelGuideError, match=message):
        check_model_guide(model, guide, x)


@pytest.mark.parametrize("cls", [autoguide.AutoNormal, autoguide.AutoDiagonalNormal, autoguide.AutoDelta,
                                 autoguide.AutoLowRankMultivariateNormal, autoguide.AutoMultivariateNormal])
@pytest.mark.parametrize("how", ["instance", "bound method"])
def test_autoguides_are_refused_before_they_run(x, cls, how):
    model, _ = _vae()
    guide = cls(model)
    guide = guide if how == "instance" else guide.forward
    message = (rf"the guide is a Pyro autoguide \({cls.__name__}\): it is not amortized, .* write an amortized "
               r"guide: an encoder network \(pyro.module\) that maps x to the parameters of q\(z \| x\)")
    with pytest.raises(ModelGuideError, match=message):
        check_model_guide(model, guide, x)
    assert list(pyro.get_param_store().keys()) == []  # the autoguide never ran: no parameters made


@pytest.mark.parametrize("delta", [lambda loc, scale: dist.Delta(loc), lambda loc, scale: dist.Delta(loc).mask(True)])
def test_a_point_mass_guide_site_is_refused(x, delta):
    model, guide = _vae(q=delta)
    message = (r"guide site 'z' is a point mass \(Delta\): log q\(z \| x\) is 0 at its point, so the 'bound' is "
               r"log p\(x, z\*\), a MAP objective, neither an ELBO nor \(for the estimators\) a log-likelihood; give "
               r"the site a distribution with a density")
    with pytest.raises(ModelGuideError, match=message):
        check_model_guide(model, guide, x)


_FAILS = r"with 2 particles in a plate left of its plates the model fails at or after site 'z' \(the last one it reached\): "


@pytest.mark.parametrize("decode, failure", [
    (_view, _FAILS + r"Shape mismatch inside plate\('data'\) at site x dim -1, 8 vs 16"),
    (_reshape_to_batch, _FAILS + r"shape '\[8, 2\]' is invalid for input of size 32"),
    (_loop, _FAILS + r"index 2 is out of bounds for dimension 0 with size 2"),
    (_cat_dim_1, _FAILS + r"Tensors must have same number of dimensions: got 3 and 2"),
    (_first_rows, (r"model site 'x' does not broadcast over particles: with 2 particles in a plate left of its "
                   r"plates its log-density for particle 1 is .* nats, for the same draw alone .*: the code before "
                   r"it mixes particles or datapoints")),
])
def test_a_pair_that_does_not_broadcast_over_particles_is_refused(x, decode, failure):
    model, guide = _vae(decode=decode)
    advice = (r"iwae, num_particles > 1 \(vectorized\) and the estimators \(which run K samples at once\) need a "
              r"pair that broadcasts over extra batch dimensions on the left of its plates: reshape only the "
              r"right-most dims \(z.reshape\(z.shape\[:-1\] \+ \(a, b\)\).*concatenate along dim=-1")
    for elbo in (None, "trace"):  # also for one-particle training: the test ELBO and estimates need it
        with pytest.raises(ModelGuideError, match="^" + failure + ".*" + advice):
            check_model_guide(model, guide, x, elbo=elbo)


@pytest.mark.parametrize("what", ["subsampled (b = batch)", "does not broadcast", "point mass"])
def test_train_and_estimate_refuse_before_any_step(x, tmp_path, what):
    plate = {"size": N, "subsample_size": 8} if what.startswith("subsampled") else None
    decode = _first_rows if what == "does not broadcast" else None
    q = (lambda loc, scale: dist.Delta(loc)) if what == "point mass" else dist.Normal
    model, guide = _vae(plate=plate, decode=decode, q=q)
    before = {k: v.clone() for k, v in model.nets.state_dict().items()}
    with pytest.raises(ModelGuideError):
        train(model, guide, x, batch_size=8, epochs=1, progress=False, out=tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    rng = torch.get_rng_state()
    with pytest.raises(ModelGuideError):
        estimate_log_likelihood(model, guide, x, 10, batch_size=8)
    assert torch.equal(torch.get_rng_state(), rng)  # the checker ran under a fork of the RNG
    after = model.nets.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no step was taken
