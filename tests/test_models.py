"""The MLP VAE pair: sites and shapes, a hand-computed ELBO, Trace vs TraceMeanField, plain SVI."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE


def test_sites_and_shapes():
    vae = VAE(784, latent_dim=20, hidden_dim=50)
    x = torch.bernoulli(torch.full((7, 784), 0.3))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    z = guide_trace.nodes["z"]
    assert z["value"].shape == (7, 20) and z["fn"].event_shape == (20,) and z["fn"].batch_shape == (7,)
    assert model_trace.nodes["x"]["is_observed"] and model_trace.nodes["x"]["fn"].event_shape == (784,)
    for trace, site in ((guide_trace, "z"), (model_trace, "z"), (model_trace, "x")):
        frames = trace.nodes[site]["cond_indep_stack"]
        assert [(f.name, f.size) for f in frames] == [("data", 7)]
    names = set(pyro.get_param_store().keys())
    assert "encoder$$$hidden.0.weight" in names and "decoder$$$out.bias" in names


def test_gaussian_decoder_for_frey_face():
    vae = VAE(560, latent_dim=3, hidden_dim=200, likelihood="gaussian")
    x = torch.rand(4, 560)
    trace = poutine.trace(vae.model).get_trace(x)
    fn = trace.nodes["x"]["fn"].base_dist
    assert isinstance(fn, dist.Normal) and fn.loc.shape == (4, 560)
    assert (fn.scale >= 1e-3).all() and ((fn.loc > 0) & (fn.loc < 1)).all()


def test_elbo_of_tiny_net_equals_hand_computation():
    """Trace_ELBO with one particle = log p(x|z) + log p(z) - log q(z|x), written out by hand."""
    vae = VAE(3, latent_dim=2, hidden_dim=4)
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    pyro.set_rng_seed(123)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]

    enc, dec = vae.encoder, vae.decoder
    h = torch.tanh(x @ enc.hidden[0].weight.T + enc.hidden[0].bias)
    loc = h @ enc.loc.weight.T + enc.loc.bias
    log_var = h @ enc.log_var.weight.T + enc.log_var.bias
    log_2pi = math.log(2 * math.pi)
    log_q = (-0.5 * (z - loc) ** 2 / log_var.exp() - 0.5 * log_var - 0.5 * log_2pi).sum()
    log_prior = (-0.5 * z**2 - 0.5 * log_2pi).sum()
    logits = torch.tanh(z @ dec.hidden[0].weight.T + dec.hidden[0].bias) @ dec.out.weight.T + dec.out.bias
    log_lik = (x * logits - F.softplus(logits)).sum()
    by_hand = (log_lik + log_prior - log_q).item()

    pyro.set_rng_seed(123)
    loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    assert loss == pytest.approx(-by_hand, abs=1e-4)


def test_trace_and_meanfield_agree_in_expectation(mnist):
    """Same fixed parameters: both estimate the same ELBO; the analytic KL has lower variance."""
    vae = VAE(784, latent_dim=5, hidden_dim=100)
    x = mnist.test[:20]
    estimates = {}
    for name, cls in (("trace", Trace_ELBO), ("meanfield", TraceMeanField_ELBO)):
        elbo = cls(num_particles=200, vectorize_particles=True)
        values = torch.tensor([-elbo.loss(vae.model, vae.guide, x) / 20 for _ in range(40)])
        estimates[name] = (values.mean().item(), values.std().item() / math.sqrt(40), values.std().item())
    (m1, se1, sd1), (m2, se2, sd2) = estimates["trace"], estimates["meanfield"]
    assert abs(m1 - m2) < 4 * math.hypot(se1, se2), estimates
    assert sd2 < sd1, estimates


def test_pair_trains_under_plain_svi(mnist):
    """No help from our trainer: pyro.infer.SVI with Trace_ELBO lowers the loss on real data."""
    vae = VAE(784, latent_dim=10, hidden_dim=100)
    x = mnist.train_epoch()[:1000]
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    losses = [svi.step(x[i * 100 : (i + 1) * 100]) / 100 for _ in range(8) for i in range(10)]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 100
