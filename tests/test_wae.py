"""The WAE-MMD (pyro_vae.models.wae, pyro_vae.objectives.wae): the MMD U-statistic against a plain loop,
its unbiasedness (0 in expectation for equal distributions, positive for shifted ones), the loss's value
against a hand computation from the same draws, training on MNIST (reconstruction and MMD fall), bitwise
resume, the compiled step, the refusals (the ELBOs, the estimator, pairs the loss is not defined for), the
ELBO of a point mass (-inf), and a pair written as a Pyro user would write it."""

import json
import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_resume_is_bitwise

from pyro_vae import ModelGuideError, check_model_guide, estimate_log_likelihood, evaluate_elbo, train
from pyro_vae.check.objective_rules import rules_of
from pyro_vae.data import Dataset
from pyro_vae.models.wae import WAE
from pyro_vae.objectives import elbo_label, get_elbo
from pyro_vae.objectives.wae import IMQ_SCALES, WAELoss, imq_kernel, mmd_squared, wae_metrics
from pyro_vae.training import KLSchedule


def small_wae(**options) -> WAE:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return WAE(784, **{"hidden_dim": 32, **options})


def binary(n: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, 784, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


def loop_mmd2(a, b, sigma2: float = 1.0) -> float:
    """The authors' MMD^2 (IMQ kernel over 7 scales, within-sample diagonals excluded), by plain loops in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n, m, d = len(a), len(b), a.shape[1]

    def k(u, v):
        dist2 = sum((ui - vi) ** 2 for ui, vi in zip(u, v))
        return sum(2 * d * sigma2 * s / (2 * d * sigma2 * s + dist2) for s in (0.1, 0.2, 0.5, 1, 2, 5, 10))

    aa = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    bb = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    ab = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return aa + bb - 2 * ab


def test_mmd_is_the_u_statistic_of_a_plain_loop():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(7, 3, generator=g) * 1.5 + 0.3, torch.randn(5, 3, generator=g)
    for dtype in (torch.float64, torch.float32):
        got = mmd_squared(a.to(dtype), b.to(dtype)).item()
        assert got == pytest.approx(loop_mmd2(a, b), abs=1e-5), dtype
    assert mmd_squared(a, b, sigma2=4.0).item() == pytest.approx(loop_mmd2(a, b, sigma2=4.0), abs=1e-5)
    assert torch.allclose(imq_kernel(a, a).diagonal(), torch.full((7,), float(len(IMQ_SCALES))))  # k(z, z) = 7
    assert mmd_squared(a[:1], b).item() == 0.0  # one point: no pair to estimate the within term from


def test_mmd_is_unbiased_for_equal_distributions_and_positive_for_shifted_ones():
    draws, n, d = 200, 40, 8
    same, shifted = [], []
    for seed in range(draws):
        g = torch.Generator().manual_seed(1000 + seed)
        a, b, c = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
        same.append(mmd_squared(a, b).item())
        shifted.append(mmd_squared(c + 0.5, b).item())
    same, shifted = np.array(same), np.array(shifted)
    se = same.std(ddof=1) / math.sqrt(draws)
    assert abs(same.mean()) < 4 * se, (same.mean(), se)  # a biased (V-statistic) estimate is ~0.3 above 0 here
    assert (same < 0).any()  # an unbiased estimate of 0 takes both signs
    shifted_se = shifted.std(ddof=1) / math.sqrt(draws)
    assert shifted.mean() > 20 * shifted_se and shifted.mean() > 20 * se, (shifted.mean(), shifted_se)


def test_the_loss_is_reconstruction_plus_lambda_batch_mmd_of_the_same_draws():
    x = binary(12)
    for stochastic in (False, True):
        wae = small_wae(stochastic=stochastic)
        objective = WAELoss(lam=3.0)
        pyro.set_rng_seed(7)
        loss = objective.differentiable_loss(wae.model, wae.guide, x)
        # by hand, from the same draws: the guide's z (Normal: loc + eps scale), then B prior draws
        pyro.set_rng_seed(7)
        with torch.no_grad():
            if stochastic:
                loc, scale = wae.encoder(x)
                z = loc + torch.empty(12, 8).normal_() * scale
            else:
                z = wae.encoder(x)
            prior = torch.empty(12, 8).normal_()
            logits = wae.decoder(z)
            reconstruction = -(x * logits - torch.nn.functional.softplus(logits)).sum().double()
        mmd2 = loop_mmd2(z, prior)
        expected = reconstruction.item() + 3.0 * 12 * mmd2
        assert loss.item() == pytest.approx(expected, rel=1e-5), stochastic
        assert objective.reconstruction_cost.item() == pytest.approx(reconstruction.item() / 12, rel=1e-5)
        assert objective.mmd2.item() == pytest.approx(mmd2, abs=1e-5)
        pyro.set_rng_seed(7)
        assert objective.loss(wae.model, wae.guide, x) == pytest.approx(loss.item(), rel=1e-6)  # Pyro's SVI number


def test_training_on_mnist_lowers_reconstruction_and_mmd(mnist):
    data = mnist.subset(num_train=1000, num_test=200)
    wae = small_wae()
    before, cost_before = wae_metrics(wae, data.test, batch_size=100), _cost(wae, data.test)
    with pytest.warns(UserWarning, match="point mass .* the ELBO is -inf"):
        result = train(wae.model, wae.guide, data, elbo=wae.default_elbo, epochs=3, batch_size=100, lr=1e-2,
                       progress=False, step="eager")  # 30 steps, lambda = 10: MMD^2 about 1.7 -> 0.3
    after = wae_metrics(wae, data.test, batch_size=100)
    gain = cost_before - _cost(wae, data.test)  # paired, per test point
    assert gain.mean() > 20 * gain.std() / math.sqrt(len(gain)) and gain.mean() > 200, (before.format(), after.format())
    assert after.mmd2 < before.mmd2 - 4 * math.hypot(after.mmd2_se, before.mmd2_se), (before.format(), after.format())
    assert result.final["test_elbo"] == -math.inf  # a point mass over a continuous z: KL(q || p) = inf


def _cost(wae, x):
    with torch.no_grad():
        return -dist.Bernoulli(logits=wae.decoder(wae.embed(x))).to_event(1).log_prob(x).double()


def test_an_interrupted_and_resumed_run_is_bitwise_equal(mnist, tmp_path):
    data = mnist.subset(num_train=200, num_test=20)
    settings = {"epochs": 2, "batch_size": 50, "progress": False, "step": "eager", "lr": 3e-3}
    with pytest.warns(UserWarning, match="point mass .* the ELBO is -inf"):  # each epoch's test ELBO: said, not hidden
        assert_resume_is_bitwise(lambda: small_wae(stochastic=False), data, tmp_path, settings)
    assert (tmp_path / "full" / "samples.png").is_file() and (tmp_path / "full" / "reconstructions.png").is_file()
    # metrics.jsonl is strict JSON: the -inf test ELBO as null, named in non_finite
    lines = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
             for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["test_elbo"], m["non_finite"]) for m in lines] == [(None, {"test_elbo": "-inf"})] * len(lines) != []


def test_compiled_step_is_bitwise_eager():
    data = Dataset("tensor", binary(64), None, (28, 28), "bernoulli")

    def run(step, **options):
        wae = small_wae(hidden_dim=16, **options)
        train(wae.model, wae.guide, data, elbo=wae.default_elbo, batch_size=32, epochs=1, progress=False, step=step)
        return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}

    for options in ({}, {"stochastic": True}):
        eager, compiled = run("eager", **options), run("compiled:replay", **options)
        assert all(torch.equal(eager[k], compiled[k]) for k in eager), options


def test_the_elbos_refuse_the_point_mass_by_name_and_wae_takes_it(tmp_path):
    x = binary(8)
    wae = small_wae()
    objective = get_elbo(wae.default_elbo)
    assert isinstance(objective, WAELoss) and objective.lam == 10.0 and rules_of(objective).name == "wae"
    assert elbo_label(WAELoss(lam=3.0)).endswith("WAELoss(num_particles=1, vectorize_particles=False, lam=3.0)")
    check_model_guide(wae.model, wae.guide, x, elbo="wae")
    check_model_guide(wae.model, wae.guide, x, elbo=WAELoss(lam=1.0))
    for name in ("trace", "meanfield", "iwae", "dreg", "baseline", pyro.infer.Trace_ELBO()):
        label = name if isinstance(name, str) else "Trace_ELBO"
        with pytest.raises(ModelGuideError, match=rf"guide site 'z' is a point mass \(Delta\): .*elbo '{label}' would "
                                                  r"train on it.*trains with elbo=\"wae\""):
            check_model_guide(wae.model, wae.guide, x, elbo=name)
    with pytest.raises(ModelGuideError, match=r"guide site 'z' is a point mass \(Delta\)"):
        train(wae.model, wae.guide, x, elbo="trace", batch_size=8, progress=False, out=tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # refused before any step
    stochastic = small_wae(stochastic=True)  # a Normal encoder: a VAE's guide, every objective takes it
    for name in ("trace", "iwae", "wae"):
        check_model_guide(stochastic.model, stochastic.guide, x, elbo=name)


def test_the_estimator_refuses_the_point_mass_and_estimates_the_stochastic_encoder():
    x = binary(6)
    wae = small_wae()
    with pytest.raises(ModelGuideError, match=r"guide site 'z' is a point mass \(Delta\).*importance sampling needs "
                                              r"a proposal with a density.*wae_metrics"):
        estimate_log_likelihood(wae.model, wae.guide, x, 10, 6)
    with pytest.warns(UserWarning, match=r"guide site 'z' is a point mass \(Delta\) over a continuous latent"):
        assert evaluate_elbo(wae.model, wae.guide, x, 6) == (-math.inf, 0.0)
    stochastic = small_wae(stochastic=True)
    result = estimate_log_likelihood(stochastic.model, stochastic.guide, x, 50, 6, seed=0)
    elbo, _ = evaluate_elbo(stochastic.model, stochastic.guide, x, 6)
    assert torch.isfinite(result.log_likelihood).all() and math.isfinite(elbo)
    assert result.mean > elbo  # log p(x) above the ELBO by the gap (hundreds of nats at initialization)


def test_pairs_the_loss_is_not_defined_for_are_refused():
    from pyro_vae import VAE, HierarchicalVAE

    x = binary(8)
    with pytest.raises(ModelGuideError, match=r"the guide's latent site 'z' is scaled .*no KL term"):
        check_model_guide(*_methods(VAE(784, latent_dim=2, hidden_dim=8, beta=2.0)), x, elbo="wae")
    with pytest.raises(ModelGuideError, match="matches the aggregate posterior of one latent site.*samples 2"):
        check_model_guide(*_methods(HierarchicalVAE(784, latent_dim=2, hidden_dim=8)), x, elbo="wae")
    plain = VAE(784, latent_dim=2, hidden_dim=8)
    with pytest.raises(ValueError, match="no KL term to warm up"):  # KL warm-up: refused before any step
        train(plain.model, plain.guide, x, elbo="wae", schedule=KLSchedule(warmup_steps=10), progress=False,
              step="eager", batch_size=8)
    with pytest.raises(ValueError, match="lambda must be >= 0"):
        WAELoss(lam=-1.0)


def _methods(pair):
    return pair.model, pair.guide


# A pair as a Pyro user writes it: plain functions, nets registered with pyro.module, a Delta guide.
ENCODER = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
DECODER = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 784))


def user_model(x):
    pyro.module("decoder", DECODER)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=DECODER(z)).to_event(1), obs=x)


def user_guide(x):
    pyro.module("encoder", ENCODER)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Delta(ENCODER(x)).to_event(1))


def test_a_pair_written_by_hand_trains_with_the_wae_objective(mnist):
    x = mnist.subset(num_train=500, num_test=10).train.round()  # fixed 0/1 pixels
    with pytest.raises(ModelGuideError, match=r"guide site 'z' is a point mass"):
        check_model_guide(user_model, user_guide, x, elbo="trace")
    reports = {}
    for elbo in ("wae", WAELoss(lam=0.0)):  # the WAE, and a plain autoencoder from the same start
        pyro.set_rng_seed(0)
        for net in (ENCODER, DECODER):
            for layer in net:
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        before = wae_metrics((user_model, user_guide), x, batch_size=100)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no test set: no ELBO to evaluate, nothing to warn about
            result = train(user_model, user_guide, x, elbo=elbo, epochs=2, batch_size=50, lr=3e-3, progress=False,
                           step="eager")
        reports[elbo if isinstance(elbo, str) else "lam=0"] = after = wae_metrics((user_model, user_guide), x,
                                                                                   batch_size=100)
        assert after.reconstruction_cost < before.reconstruction_cost - 200, (before.format(), after.format())
        assert result.history[-1]["train_elbo"] > result.history[0]["train_elbo"]
    wae, plain = reports["wae"], reports["lam=0"]
    assert wae.mmd2 < plain.mmd2 - 4 * math.hypot(wae.mmd2_se, plain.mmd2_se), (wae.format(), plain.format())
