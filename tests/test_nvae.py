"""The NVAE-style pair (pyro_vae.models.nvae) and spectral regularization
(pyro_vae.objectives.spectral): residual normal posteriors relative to the model's own prior, cells
that start as the identity, an ELBO whose analytic-KL and sampled forms agree, training on MNIST,
the penalty against an independent computation, bitwise resume."""

import json
import math
import os
import signal

import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pyro_vae import NVAE, check_model_guide, evaluate_elbo, train
from pyro_vae.models.nvae import ResidualCell
from pyro_vae.objectives import SpectralRegularizedELBO, get_elbo
from pyro_vae.objectives.spectral import largest_singular_values
from pyro_vae.training import RunFolder, TrainingInterrupted


def small_nvae(groups: int = 3) -> NVAE:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return NVAE(784, latent_dim=2, hidden_dim=8, groups=groups)


def perturbed(vae: NVAE) -> NVAE:
    """The pair with every weight moved off its initial value (the zero-initialised last convolution
    of each cell included), so that priors and posteriors differ from group to group."""
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vae


def test_a_new_residual_cell_is_the_identity():
    h = torch.randn(3, 5, 7, 7)
    assert torch.equal(ResidualCell(5)(h), h)


def test_the_posterior_of_each_group_is_the_prior_shifted_and_scaled():
    """NVAE's residual normal: q(z_g | x, z_<g) = N(mu_p + dmu, sigma_p * dsigma) with (mu_p, sigma_p)
    the *model's* prior at the guide's z_<g. Replaying the model on a guide trace gives p; the KL
    computed by torch from the two Normals equals the closed form in (dmu / sigma_p, dsigma)
    alone, NVAE's eq. 2, and q's parameters differ from p's (the guide adds a residual)."""
    vae, x = perturbed(small_nvae()), (torch.rand(4, 784) < 0.5).float()
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    for g, site in enumerate(vae.sites):
        q, p = guide_trace.nodes[site]["fn"].base_dist, model_trace.nodes[site]["fn"].base_dist
        d_loc, d_scale = (q.loc - p.loc) / p.scale, q.scale / p.scale
        closed_form = 0.5 * (d_loc**2 + d_scale**2 - 1) - torch.log(d_scale)
        assert torch.allclose(kl_divergence(q, p), closed_form, atol=1e-5)
        assert q.loc.shape == (4, 2, 7, 7) and not torch.allclose(q.loc, p.loc.expand_as(q.loc))
        if g == 0:
            assert bool((p.loc == 0).all() and (p.scale == 1).all())  # the top group's prior is N(0, I)


def test_the_pair_passes_the_checker_with_every_objective():
    vae, x = small_nvae(), (torch.rand(4, 784) < 0.5).float()
    for elbo in ("trace", "meanfield", "iwae", "dreg"):
        check_model_guide(vae.model, vae.guide, x, elbo=elbo)


def test_the_analytic_kl_elbo_and_the_sampled_elbo_agree(mnist):
    """TraceMeanField_ELBO (analytic KL per group, given the guide's draws above) and Trace_ELBO on
    the same weights: 30 independent repeats each on 20 test images; tolerance 4 standard errors
    of the difference of the means."""
    vae, x = perturbed(small_nvae()), mnist.test[:20]
    draws = {}
    with torch.no_grad():
        for name in ("trace", "meanfield"):
            elbo = get_elbo(name, 1, 0.0, 1)
            draws[name] = torch.tensor([-elbo.loss(vae.model, vae.guide, x) / len(x) for _ in range(30)],
                                       dtype=torch.float64)
    diff = draws["trace"].mean() - draws["meanfield"].mean()
    se = math.sqrt(draws["trace"].var() / 30 + draws["meanfield"].var() / 30)
    assert abs(diff) < 4 * se, (float(diff), se)


def test_nvae_trains_on_mnist(mnist):
    data = mnist.subset(num_train=500, num_test=100)
    vae = small_nvae(groups=2)
    before, before_se = evaluate_elbo(vae.model, vae.guide, data.test, 100)
    train(vae.model, vae.guide, data, elbo="meanfield", epochs=1, batch_size=50, progress=False, step="eager")
    after, se = evaluate_elbo(vae.model, vae.guide, data.test, 100)
    # about -570 nats at initialisation, -500 after these 10 steps; standard errors about 1 nat
    assert after - before > 10 * math.hypot(se, before_se), (before, after)


def power_iteration(matrix: torch.Tensor, steps: int = 500) -> float:
    """The largest singular value by power iteration on matrix^T matrix (NVAE's estimator); 0 for a
    zero matrix (each cell's last convolution starts at zero)."""
    m = matrix.double()
    if not m.any():
        return 0.0
    v = torch.randn(matrix.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        v = m.T @ (m @ v)
        v = v / v.norm()
    return float((m @ v).norm())


def test_the_penalty_is_the_sum_of_each_layers_largest_singular_value():
    vae = small_nvae(groups=1)
    layers = [m for m in vae.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(layers) == len(largest_singular_values(vae)) > 5
    expected = sum(power_iteration(m.weight.detach().flatten(1)) for m in layers)
    objective = SpectralRegularizedELBO(get_elbo("trace"), vae, coefficient=0.3)
    assert float(objective.penalty().detach()) == pytest.approx(0.3 * expected, rel=1e-4)


def test_the_value_is_the_elbo_and_the_gradient_carries_the_penalty():
    vae, x = small_nvae(groups=1), (torch.rand(6, 784) < 0.5).float()
    params = list(vae.parameters())
    inner = get_elbo("trace", 1, 0.0, 1)
    objective = SpectralRegularizedELBO(inner, vae, coefficient=0.5)
    pyro.set_rng_seed(3)
    loss = objective.differentiable_loss(vae.model, vae.guide, x)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    pyro.set_rng_seed(3)
    plain = inner.differentiable_loss(vae.model, vae.guide, x)
    plain_grads = torch.autograd.grad(plain, params, allow_unused=True)
    penalty_grads = torch.autograd.grad(6 * objective.penalty(), params, allow_unused=True)
    assert float(loss.detach()) == float(plain.detach())
    for g, a, b in zip(grads, plain_grads, penalty_grads):
        expected = (0 if a is None else a) + (0 if b is None else b)
        assert torch.allclose(g if g is not None else torch.zeros(()), torch.as_tensor(expected), atol=1e-5)


def test_training_with_the_penalty_shrinks_the_spectral_norms(mnist):
    data = mnist.subset(num_train=400, num_test=50)
    norms = {}
    for coefficient in (None, 1.0):
        vae = small_nvae(groups=1)
        elbo = get_elbo("meanfield") if coefficient is None else \
            SpectralRegularizedELBO(get_elbo("meanfield"), vae, coefficient)
        train(vae.model, vae.guide, data, elbo=elbo, epochs=1, batch_size=50, progress=False, step="eager")
        with torch.no_grad():
            norms[coefficient] = float(sum(largest_singular_values(vae)))
    assert norms[1.0] < 0.95 * norms[None], norms


def test_bad_settings_are_refused():
    vae = small_nvae(groups=1)
    with pytest.raises(ValueError, match="coefficient must be > 0, got 0"):
        SpectralRegularizedELBO(get_elbo("trace"), vae, 0)
    with pytest.raises(ValueError, match="ParameterList has no Linear or convolution layer"):
        SpectralRegularizedELBO(get_elbo("trace"), vae.top_down["h0"], 0.1)
    with pytest.raises(ValueError, match=r"image_shape \(28, 28\) does not match data_dim 100"):
        NVAE(100)
    with pytest.raises(ValueError, match="groups must be >= 1, got 0"):
        NVAE(784, groups=0)


def test_an_interrupted_and_resumed_nvae_run_is_bitwise_equal(mnist, tmp_path):
    data = mnist.subset(num_train=200, num_test=20)

    def settings(vae):
        return {"epochs": 2, "batch_size": 50, "progress": False, "step": "eager",
                "elbo": SpectralRegularizedELBO(get_elbo("meanfield"), vae, 0.1)}

    def params():
        return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}

    vae = small_nvae(groups=2)
    train(vae.model, vae.guide, data, out=RunFolder(tmp_path / "full"), **settings(vae))
    expected = params()
    vae, calls = small_nvae(groups=2), [0]

    def model(x):  # sends this process a real SIGTERM at its 6th training step (epoch 2 of 4 steps each);
        calls[0] += len(x) == 50  # the checker's, the evaluation's and the pictures' calls take other sizes
        if calls[0] == 6 and len(x) == 50:
            os.kill(os.getpid(), signal.SIGTERM)
        return vae.model(x)

    with pytest.raises(TrainingInterrupted):
        train(model, vae.guide, data, out=RunFolder(tmp_path / "cut"), **settings(vae))
    vae = small_nvae(groups=2)
    torch.manual_seed(1234)
    train(vae.model, vae.guide, data, out=RunFolder(tmp_path / "cut", resume=True), **settings(vae))
    got = params()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def test_the_cli_trains_nvae_with_spectral_regularization_and_resumes_it(data_root, tmp_path):
    from pyro_vae.cli import main

    run = tmp_path / "run"
    common = ["--no-progress", "--device", "cpu", "--data-dir", str(data_root), "--eager"]
    main(["train", "--model", "nvae", "--latent-groups", "2", "--hidden-dim", "8", "--latent-dim", "2", "--elbo", "meanfield",
          "--spectral-regularization", "0.1", "--free-bits", "0.05", "--num-train", "100", "--num-test", "20", "--epochs", "1",
          "--batch-size", "50", "--out", str(run), *common])
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["groups"] == 2 and config["cli"]["spectral_regularization"] == 0.1
    assert config["free_bits"] == 0.05 and "FreeBitsELBO" in config["elbo"]  # the wrapped objective carries them
    assert config["elbo"].startswith("pyro_vae.objectives.spectral.SpectralRegularizedELBO(") and \
        "coefficient=0.1" in config["elbo"]
    main(["train", "--resume", str(run), "--epochs", "2", *common])
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((run / "config.json").read_text())["elbo"] == config["elbo"]
