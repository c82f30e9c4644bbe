"""The VQ-VAE (pyro_vae.models.vq) and its loss (pyro_vae.objectives.vq): nearest codes against brute
force, the straight-through gradient, the loss's value as the uniform-prior ELBO computed by hand,
perplexity, the EMA update and dead-code restarts against their formulas, state updated once per
training step (never by evaluating the loss), training on MNIST, bitwise resume with EMA and restarts,
the checker, and the log-likelihood estimator's refusal of a point-mass proposal."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_resume_is_bitwise

from pyro_vae import ModelGuideError, check_model_guide, estimate_log_likelihood, evaluate_elbo, train
from pyro_vae.check.objective_rules import rules_of
from pyro_vae.data import Dataset
from pyro_vae.models.quantizer import NearestCode, VectorQuantizer
from pyro_vae.models.vq import VQVAE
from pyro_vae.objectives import get_elbo
from pyro_vae.objectives.vq import VQVAELoss, codebook_perplexity, codebook_usage, evaluate_vq
from pyro_vae.training.compiled import CompiledStepWarning

SMALL = {"num_codes": 16, "latent_dim": 4, "hidden_dim": 8}


def small_vq(**options) -> VQVAE:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return VQVAE(784, **{**SMALL, **options})


def binary(n: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, 784, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


def spread(vq: VQVAE, x: torch.Tensor) -> VQVAE:
    """Codebook set to encoder outputs of ``x``, so that the nearest codes vary between positions."""
    with torch.no_grad():
        z = vq.encoder(x).reshape(-1, vq.latent_dim)
        rows = torch.randperm(len(z), generator=torch.Generator().manual_seed(1))[: vq.num_codes]
        vq.quantizer.codebook.copy_(z[rows])
    return vq


def hand_elbo(vq: VQVAE, x: torch.Tensor) -> torch.Tensor:
    """Per datapoint: log p(x | e[k*]) - L log K, with k* by brute-force distances (float64)."""
    with torch.no_grad():
        z = vq.encoder(x)
        d = ((z.double().unsqueeze(-2) - vq.quantizer.codebook.double()) ** 2).sum(-1)
        codes = d.argmin(-1)
        logits = vq.decoder(vq.quantizer.codebook[codes])
        recon = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    return recon.double() - vq.num_positions * math.log(vq.num_codes)


def test_quantization_picks_the_nearest_code():
    q = VectorQuantizer(32, 5)
    inputs = torch.randn(4000, 5)
    codes = q.nearest(inputs)
    brute = ((inputs.unsqueeze(1) - q.codebook.detach().unsqueeze(0)) ** 2).sum(-1)  # (4000, 32), no expansion
    chosen = brute.gather(1, codes.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(chosen, brute.min(1).values, rtol=1e-5, atol=1e-6)  # the nearest, up to ties
    agree = (codes == brute.argmin(1)).double().mean()
    assert agree > 0.999, agree  # differs only at near-ties, within float rounding of the expanded distance
    assert q.nearest(inputs.reshape(40, 100, 5)).shape == (40, 100)


def test_nearest_code_is_a_point_mass_with_log_q_zero():
    q = VectorQuantizer(8, 3)
    inputs = torch.randn(6, 2, 2, 3)
    fn = NearestCode(inputs, q)
    assert torch.equal(fn.sample(), q.nearest(inputs)) and fn.sample((5,)).shape == (5, 6, 2, 2)
    assert torch.equal(fn.log_prob(fn.codes), torch.zeros(6, 2, 2))  # exactly: log 1
    assert torch.equal(fn.probs.sum(-1), torch.ones(6, 2, 2)) and set(fn.probs.unique().tolist()) == {0.0, 1.0}
    wide = fn.expand((7, 6, 2, 2))
    assert isinstance(wide, NearestCode) and wide.inputs.shape == (7, 6, 2, 2, 3)
    assert torch.equal(wide.sample()[3], fn.codes)
    # KL(q || uniform) = log K per position, exactly the paper's constant
    kl = torch.distributions.kl_divergence(fn, dist.Categorical(logits=torch.zeros(8)))
    torch.testing.assert_close(kl, torch.full((6, 2, 2), math.log(8)))


def test_perplexity_and_usage_of_a_known_assignment():
    codes = torch.tensor([[0, 0, 0, 0], [1, 1, 2, 3]])  # p = (4, 2, 1, 1) / 8 over K = 6 codes
    p = [4 / 8, 2 / 8, 1 / 8, 1 / 8]
    entropy = -sum(pi * math.log(pi) for pi in p)
    assert codebook_perplexity(codes, 6).item() == pytest.approx(math.exp(entropy), rel=1e-12)
    assert codebook_usage(codes, 6).item() == pytest.approx(4 / 6)
    assert codebook_perplexity(torch.arange(6), 6).item() == pytest.approx(6.0)
    assert codebook_perplexity(torch.zeros(9, dtype=torch.long), 6).item() == pytest.approx(1.0)


def test_the_value_is_the_uniform_prior_elbo():
    x = binary(12)
    vq = spread(small_vq(), x)
    expected = hand_elbo(vq, x)
    loss = VQVAELoss(beta=0.7).differentiable_loss(vq.model, vq.guide, x)  # gradient on: the extra terms ride along
    torch.testing.assert_close(-loss.double(), expected.sum(), rtol=1e-6, atol=1e-3)
    with torch.no_grad():
        assert torch.equal(VQVAELoss(beta=0.7).differentiable_loss(vq.model, vq.guide, x), loss.detach())
        trace_elbo = pyro.infer.Trace_ELBO().loss(vq.model, vq.guide, x)  # Pyro's ELBO of the pair, plain lookup
    assert -trace_elbo == pytest.approx(expected.sum().item(), rel=1e-6)
    mean, se = evaluate_elbo(vq.model, vq.guide, x, 5)  # the test ELBO a run reports: the same bound
    assert mean == pytest.approx(expected.mean().item(), rel=1e-6) and se > 0
    report = evaluate_vq(vq.model, vq.guide, x, 5)
    assert report.elbo == pytest.approx(mean, rel=1e-6)
    assert report.reconstruction - report.elbo == pytest.approx(49 * math.log(16), rel=1e-6) == report.log_k["codes"]
    assert report.perplexity["codes"] > 2 and 0 < report.usage["codes"] <= 1
    assert "ELBO under the prior over codes" in report.format()


def test_straight_through_gradient_codebook_and_commitment_terms():
    x = binary(10)
    vq = spread(small_vq(), x)
    beta = 0.3
    # by hand: the decoder's input gradient at e[k*], copied to z_e; the codebook by its own loss only
    z = vq.encoder(x)
    codes = vq.quantizer.nearest(z)
    e = vq.quantizer.codebook[codes].detach().requires_grad_(True)
    recon = dist.Bernoulli(logits=vq.decoder(e)).to_event(1).log_prob(x).sum()
    (decoder_input_grad,) = torch.autograd.grad(-recon, e)
    encoder_params = list(vq.encoder.parameters())
    st = torch.autograd.grad(z, encoder_params, grad_outputs=decoder_input_grad, retain_graph=True)
    commit = torch.autograd.grad(z, encoder_params, grad_outputs=2 * beta * (z - e).detach())
    codebook_grad = torch.zeros_like(vq.quantizer.codebook).index_add_(
        0, codes.reshape(-1), (2 * (e - z)).detach().reshape(-1, vq.latent_dim))

    VQVAELoss(beta=beta).differentiable_loss(vq.model, vq.guide, x).backward()
    for p, a, b in zip(encoder_params, st, commit):
        torch.testing.assert_close(p.grad, a + b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vq.quantizer.codebook.grad, codebook_grad, rtol=1e-5, atol=1e-6)
    assert st[0].abs().sum() > 0  # the reconstruction does reach the encoder

    ema = spread(small_vq(ema=True), x)  # with EMA, beta = 0: the encoder's gradient is the straight-through one alone
    VQVAELoss(beta=0.0).differentiable_loss(ema.model, ema.guide, x).backward()
    torch.testing.assert_close(ema.encoder.net[0].weight.grad, st[0], rtol=1e-4, atol=1e-5)
    assert ema.quantizer.codebook.grad is None


def test_ema_update_is_the_formula():
    q = VectorQuantizer(3, 2, ema=True, decay=0.9)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
        q.ema_count.copy_(torch.tensor([2.0, 1.0, 0.5]))
        q.ema_sum.copy_(torch.tensor([[0.2, 0.0], [1.0, 2.0], [2.5, 2.5]]))
    inputs = torch.tensor([[0.1, 0.2], [0.3, -0.1], [0.9, 1.2], [0.2, 0.0]])
    codes = torch.tensor([0, 0, 1, 0])
    q.update(inputs, codes)
    g, eps, n = 0.9, 1e-5, [3, 1, 0]
    sums = [[0.6, 0.1], [0.9, 1.2], [0.0, 0.0]]  # per code: the sum of its inputs
    count = [g * c + (1 - g) * ni for c, ni in zip([2.0, 1.0, 0.5], n)]
    old_sums = [[0.2, 0.0], [1.0, 2.0], [2.5, 2.5]]
    ema_sum = [[g * s + (1 - g) * t for s, t in zip(old, new)] for old, new in zip(old_sums, sums)]
    total = sum(count)
    smoothed = [(c + eps) / (total + 3 * eps) * total for c in count]
    codebook = [[s / m for s in row] for row, m in zip(ema_sum, smoothed)]
    torch.testing.assert_close(q.ema_count, torch.tensor(count))
    torch.testing.assert_close(q.ema_sum, torch.tensor(ema_sum))
    torch.testing.assert_close(q.codebook, torch.tensor(codebook))
    before = [p.detach().clone() for p in (q.codebook, q.ema_count, q.ema_sum)]
    q.update(torch.full((4, 2), float("nan")), codes)  # a non-finite step changes nothing
    assert all(torch.equal(a, b) for a, b in zip(before, (q.codebook, q.ema_count, q.ema_sum)))


def test_a_dead_code_is_restarted_from_an_encoder_output():
    for ema in (False, True):
        q = VectorQuantizer(4, 2, ema=ema, restart_after=2)
        with torch.no_grad():
            q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [9.0, 9.0], [-9.0, 9.0]]))
            if ema:
                q.ema_sum.copy_(q.codebook)
        inputs = torch.tensor([[0.1, 0.0], [0.9, 0.1], [0.0, 0.2], [1.1, -0.1]])
        q.update(inputs, q.nearest(inputs))  # codes 2 and 3 unused once: kept (EMA: shrunk by its smoothing only)
        assert q.unused_steps.tolist() == [0, 0, 1, 1]
        torch.testing.assert_close(q.codebook[2:], torch.tensor([[9.0, 9.0], [-9.0, 9.0]]), rtol=1e-5, atol=0)
        q.update(inputs, q.nearest(inputs))  # twice: restarted at encoder outputs of the batch
        assert q.unused_steps.tolist() == [0, 0, 0, 0]
        for row in q.codebook[2:]:
            assert any(torch.equal(row, x) for x in inputs), row
        if ema:
            assert q.ema_count[2:].tolist() == [1.0, 1.0] and torch.equal(q.ema_sum[2:], q.codebook[2:])
        else:
            assert q.codebook[:2].tolist() == [[0.0, 0.0], [1.0, 0.0]]  # the used ones untouched


def test_state_is_updated_once_per_training_step_never_by_evaluating_the_loss():
    x = binary(10)
    vq = spread(small_vq(ema=True, restart_after=3), x)
    state = lambda: [p.detach().clone() for p in (vq.quantizer.codebook, vq.quantizer.ema_count,  # noqa: E731
                                                   vq.quantizer.ema_sum, vq.quantizer.unused_steps)]
    before = state()
    objective = VQVAELoss()
    objective.differentiable_loss(vq.model, vq.guide, x)  # evaluated with autograd on, never differentiated
    with torch.no_grad():
        objective.differentiable_loss(vq.model, vq.guide, x)
    check_model_guide(vq.model, vq.guide, x, elbo=objective)
    assert all(torch.equal(a, b) for a, b in zip(before, state()))
    z = vq.encoder(x).detach()
    expected = VectorQuantizer(16, 4, ema=True, restart_after=3)
    expected.load_state_dict(vq.quantizer.state_dict())
    expected.update(z, expected.nearest(z))
    objective.differentiable_loss(vq.model, vq.guide, x).backward()  # one step: one update, on its outputs
    assert all(torch.equal(a, b) for a, b in zip(state(), [p.detach() for p in expected.parameters()]))


def test_checker_rules_and_refusals():
    x = binary(8)
    vq = small_vq()
    objective = get_elbo(vq.default_elbo)
    assert isinstance(objective, VQVAELoss) and objective.beta == 0.25 and rules_of(objective).name == "vq"
    check_model_guide(vq.model, vq.guide, x, elbo=objective)
    check_model_guide(vq.model, vq.guide, x, elbo="vq")
    for name in ("trace", "meanfield", "iwae", "dreg"):  # refused up front: the encoder would get no gradient
        with pytest.raises(ModelGuideError, match=f"straight-through estimator: the {'iwae' if name == 'dreg' else name} "
                                                  "objective would give the encoder no gradient"):
            check_model_guide(vq.model, vq.guide, x, elbo=name)
    for name in ("trace", "meanfield"):  # the same ELBO, but the encoder gets no gradient: hence the refusal
        vq.zero_grad(set_to_none=True)
        get_elbo(name, max_plate_nesting=1).differentiable_loss(vq.model, vq.guide, x).backward()
        assert all(p.grad is None for p in vq.encoder.parameters()) and vq.decoder.net[0].weight.grad is not None
    plain = pyro_vae_mlp()
    with pytest.raises(TypeError, match="VQVAELoss trains pairs whose guide draws codes from .*NearestCode"):
        VQVAELoss().differentiable_loss(plain.model, plain.guide, x)
    with pytest.raises(ValueError, match="the commitment cost beta must be >= 0"):
        VQVAELoss(beta=-1)
    with pytest.raises(ValueError, match=r"image_shape \(28, 28\) does not match data_dim 100"):
        VQVAE(100)


def pyro_vae_mlp():
    from pyro_vae import VAE

    return VAE(784, latent_dim=2, hidden_dim=8)


def test_state_under_torchrun_is_refused(monkeypatch):
    from pyro_vae import distributed

    x = binary(4)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    vq = small_vq(restart_after=5)
    with pytest.raises(ValueError, match="EMA updates or dead-code restarts under torchrun"):
        VQVAELoss().differentiable_loss(vq.model, vq.guide, x)
    plain = small_vq()  # no state: gradients only, fine under DDP
    VQVAELoss().differentiable_loss(plain.model, plain.guide, x)


def test_the_estimator_refuses_a_point_mass_proposal_and_the_elbo_stays():
    x = binary(6)
    vq = spread(small_vq(), x)
    with pytest.raises(ModelGuideError, match=r"guide site 'codes' \(NearestCode\) gives probability 0 to values "
                                              r"that the model's prior gives positive probability.*the ELBO itself"):
        estimate_log_likelihood(vq.model, vq.guide, x, 10, 6)
    mean, _ = evaluate_elbo(vq.model, vq.guide, x, 6)
    assert mean == pytest.approx(hand_elbo(vq, x).mean().item(), rel=1e-6)


def _bernoulli_pair(probs_of):
    """z (3 binary latents) ~ Bernoulli(0.5), x ~ Bernoulli(logits = W z); q(z | x) = Bernoulli(probs_of(x))."""
    weight = torch.randn(3, 784)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(3)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z @ weight).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(probs_of(x)).to_event(1))

    return model, guide


def test_the_estimator_refuses_any_discrete_proposal_that_misses_the_prior_support():
    x = binary(4)
    model, guide = _bernoulli_pair(lambda x: (x[:, :3] > 0.5).float())  # deterministic: probabilities 0 and 1
    with pytest.raises(ModelGuideError, match="guide site 'z' \\(Bernoulli\\) gives probability 0"):
        estimate_log_likelihood(model, guide, x, 20, 4)
    evaluate_elbo(model, guide, x, 4)  # the ELBO is still valid
    model, guide = _bernoulli_pair(lambda x: 0.1 + 0.8 * x[:, :3])  # covers {0, 1}: estimated
    result = estimate_log_likelihood(model, guide, x, 20, 4)
    assert torch.isfinite(result.log_likelihood).all()


def test_training_on_mnist_improves_the_reconstruction(mnist):
    data = mnist.subset(num_train=1000, num_test=200)
    vq = small_vq(num_codes=32, latent_dim=8, hidden_dim=16, restart_after=5)
    before = evaluate_vq(vq.model, vq.guide, data.test)
    recon_before = _per_datapoint_reconstruction(vq, data.test)
    result = train(vq.model, vq.guide, data, elbo=vq.default_elbo, epochs=2, batch_size=50, lr=3e-3,
                   progress=False, step="eager")  # 40 steps
    after = evaluate_vq(vq.model, vq.guide, data.test)
    gain = _per_datapoint_reconstruction(vq, data.test) - recon_before  # paired, per test point
    se = gain.std() / math.sqrt(len(gain))
    assert gain.mean() > 20 * se and gain.mean() > 100, (before.format(), after.format())  # ~ -600 -> ~ -200 nats
    # the run's test ELBO is the uniform-prior ELBO of the trained pair (deterministic: no sampling)
    assert result.final["test_elbo"] == pytest.approx(after.elbo, rel=1e-5)
    assert after.usage["codes"] > 0.5 and after.perplexity["codes"] > 4  # restarts keep the codebook in use


def _per_datapoint_reconstruction(vq, x):
    with torch.no_grad():
        logits = vq.decoder(vq.quantizer.lookup(vq.codes(x)))
        return dist.Bernoulli(logits=logits).to_event(1).log_prob(x).double()


def test_an_interrupted_and_resumed_run_with_ema_and_restarts_is_bitwise_equal(mnist, tmp_path):
    data = mnist.subset(num_train=200, num_test=20)
    settings = {"epochs": 2, "batch_size": 50, "progress": False, "step": "eager", "lr": 3e-3}
    expected = assert_resume_is_bitwise(lambda: small_vq(ema=True, restart_after=2), data, tmp_path, settings)
    assert {"quantizer$$$ema_count", "quantizer$$$ema_sum", "quantizer$$$unused_steps"} <= set(expected)
    assert (tmp_path / "full" / "samples.png").is_file() and (tmp_path / "full" / "reconstructions.png").is_file()


def test_compiled_step_is_bitwise_eager_and_state_runs_eager():
    data = Dataset("tensor", binary(64), None, (28, 28), "bernoulli")

    def run(step, **options):
        vq = small_vq(**options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CompiledStepWarning)
            train(vq.model, vq.guide, data, elbo=vq.default_elbo, batch_size=32, epochs=1, progress=False, step=step)
        lines = [str(w.message) for w in caught if issubclass(w.category, CompiledStepWarning)]
        return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}, lines

    for options in ({}, {"ema": True, "restart_after": 1}):
        (eager, _), (compiled, lines) = run("eager", **options), run("compiled:replay", **options)
        assert all(torch.equal(eager[k], compiled[k]) for k in eager), options
        assert lines == [] if not options else ("runs eager" in lines[0] and "get no gradient" in lines[0])
