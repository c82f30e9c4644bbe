"""The Ladder VAE (pyro_vae.models.ladder): precision weighting, a top-down guide that shares the
prior's nets, an ELBO whose analytic-KL and sampled forms agree, KL warm-up, bitwise resume."""

import math
import os
import signal

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae import KLSchedule, check_model_guide, evaluate_elbo, train
from pyro_vae.check.structure import pair_structure
from pyro_vae.models import LadderVAE
from pyro_vae.models.ladder import precision_weighted
from pyro_vae.objectives import get_elbo
from pyro_vae.training import RunFolder, TrainingInterrupted


def small_ladder(layers: int = 3) -> LadderVAE:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return LadderVAE(784, latent_dim=2, hidden_dim=32, stochastic_layers=layers)


def test_the_paper_sizes_are_the_defaults():
    vae = LadderVAE(784)
    assert vae.widths == [512, 256, 128, 64, 32] and vae.latent_dims == [64, 32, 16, 8, 4]
    assert vae.sites == ["z1", "z2", "z3", "z4", "z5"]
    with pytest.raises(ValueError, match="stochastic_layers must be >= 1, got 0"):
        LadderVAE(784, stochastic_layers=0)


def test_precision_weighting_is_the_normalised_product_of_the_two_normals():
    g = torch.Generator().manual_seed(0)
    loc_q, loc_p = torch.randn(2, 6, generator=g, dtype=torch.float64)
    scale_q, scale_p = torch.rand(2, 6, generator=g, dtype=torch.float64) + 0.1
    loc, scale = precision_weighted(loc_q, scale_q, loc_p, scale_p)
    z = torch.randn(1000, 6, generator=g, dtype=torch.float64) * 3
    normal = torch.distributions.Normal
    # log N(z; loc, scale) - log N(z; q) - log N(z; p) does not depend on z: the product, normalised
    gap = normal(loc, scale).log_prob(z) - normal(loc_q, scale_q).log_prob(z) - normal(loc_p, scale_p).log_prob(z)
    assert float((gap - gap[0]).abs().max()) < 1e-10
    # and its constant is minus the log of the product's integral, N(loc_q; loc_p, sqrt(sq^2 + sp^2))
    expected = -normal(loc_p, (scale_q ** 2 + scale_p ** 2).sqrt()).log_prob(loc_q)
    assert torch.allclose(gap[0], expected, atol=1e-10)


def test_the_guide_is_top_down_and_uses_the_models_prior_nets(mnist):
    vae, x = small_ladder(), mnist.test[:5]
    guide = poutine.trace(vae.guide).get_trace(x)
    assert [n for n in guide.stochastic_nodes if n != "data"] == ["z3", "z2", "z1"]  # top first (after the plate)
    assert any(name.startswith("top_down$$$") for name in guide.param_nodes)  # the shared nets are the guide's too
    with torch.no_grad():  # the same distribution, computed here from the nets
        h1, loc1, scale1 = vae.encoder[0](x)
        _, loc_p, scale_p = vae.top_down[0](guide.nodes["z2"]["value"])
        loc, scale = precision_weighted(loc1, scale1, loc_p, scale_p)
    fn = guide.nodes["z1"]["fn"].base_dist
    assert torch.allclose(fn.loc, loc) and torch.allclose(fn.scale, scale)


def test_every_layer_takes_its_kl_in_closed_form():
    vae, x = small_ladder(), torch.zeros(4, 784)
    assert pair_structure(vae.model, vae.guide, x).analytic_kl_sites == {"z1", "z2", "z3"}
    for elbo in ("trace", "meanfield", "iwae"):
        check_model_guide(vae.model, vae.guide, x, elbo=elbo)


def test_the_analytic_kl_elbo_and_the_sampled_elbo_agree(mnist):
    """Two estimators of the same ELBO of the untrained 3-layer pair: TraceMeanField_ELBO (analytic
    KL at every layer, given the guide's draw above) and Trace_ELBO (sampled log-ratio). 60
    independent repeats of each on 100 test images; the tolerance is 4 standard errors of the
    difference of their means."""
    vae, x = small_ladder(), mnist.test[:100]
    draws = {}
    with torch.no_grad():
        for name in ("trace", "meanfield"):
            elbo = get_elbo(name, 1, 0.0, 1)
            draws[name] = torch.tensor([-elbo.loss(vae.model, vae.guide, x) / len(x) for _ in range(60)],
                                       dtype=torch.float64)
    diff = draws["trace"].mean() - draws["meanfield"].mean()
    se = math.sqrt(draws["trace"].var() / 60 + draws["meanfield"].var() / 60)
    assert abs(diff) < 4 * se, (float(diff), se)
    assert draws["meanfield"].std() < draws["trace"].std()  # the closed form removes the KL's sampling noise


def test_kl_warmup_trains_the_ladder_on_mnist(mnist):
    data = mnist.subset(num_train=2000, num_test=200)
    vae = small_ladder(layers=3)
    before, _ = evaluate_elbo(vae.model, vae.guide, data.test, 200)
    result = train(vae.model, vae.guide, data, elbo="meanfield", epochs=2, batch_size=50, progress=False,
                   schedule=KLSchedule(warmup_steps=40))
    after, se = evaluate_elbo(vae.model, vae.guide, data.test, 200)
    assert after > before + 100, (before, after)  # about -545 nats at initialisation
    assert result.history[-1]["test_elbo"] == pytest.approx(after, abs=5 * se + 1)


def test_an_interrupted_and_resumed_ladder_run_is_bitwise_equal(mnist, tmp_path):
    data = mnist.subset(num_train=300, num_test=50)
    settings = {"epochs": 2, "batch_size": 50, "progress": False, "elbo": "meanfield",
                "schedule": KLSchedule(warmup_steps=8)}

    def params():
        return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}

    vae = small_ladder()
    train(vae.model, vae.guide, data, out=RunFolder(tmp_path / "full"), **settings)
    expected = params()
    vae, calls = small_ladder(), [0]

    def model(x):  # sends this process a real SIGTERM at its 8th call (epoch 2)
        calls[0] += 1
        if calls[0] == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        return vae.model(x)

    with pytest.raises(TrainingInterrupted):
        train(model, vae.guide, data, out=RunFolder(tmp_path / "cut"), **settings)
    vae = small_ladder()
    torch.manual_seed(1234)
    train(vae.model, vae.guide, data, out=RunFolder(tmp_path / "cut", resume=True), **settings)
    got = params()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
