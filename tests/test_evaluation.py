"""Log-likelihood estimation against exact answers (linear Gaussian model) and on the MNIST VAE;
result files in standard JSON; seeds that leave the caller's RNGs alone."""

import json
import math
import random
import tempfile

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import make_vae
from linear_gaussian import LinearGaussian

from pyro_vae import estimate_log_likelihood, evaluate_elbo
from pyro_vae.diagnostics import StreamingLogWeights, pareto_k_from_tail, psis_tail_length


@pytest.fixture
def lg():
    return LinearGaussian()


def test_exact_posterior_gives_log_p_x_for_every_k(lg):
    x = lg.sample(40)
    exact = lg.exact_log_likelihood(x)
    result = estimate_log_likelihood(lg.model, lg.exact_guide, x, num_samples=200, batch_size=16)
    torch.testing.assert_close(result.log_likelihood, exact, atol=1e-9, rtol=0)
    for k in (1, 5, 50):
        torch.testing.assert_close(result.iwae_bounds[k], exact, atol=1e-9, rtol=0)
    assert torch.allclose(result.ess, torch.full_like(result.ess, 200.0))  # equal weights


def test_poor_guide_k5000_matches_exact_and_bounds_increase(lg):
    x = lg.sample(200)
    exact = lg.exact_log_likelihood(x).mean().item()
    result = estimate_log_likelihood(lg.model, lg.poor_guide, x, num_samples=5000, batch_size=100, seed=0)
    diff = result.log_likelihood - lg.exact_log_likelihood(x)
    se = diff.std().item() / math.sqrt(len(diff))
    assert abs(diff.mean().item()) < 4 * se + 1e-3, (diff.mean().item(), se)
    means = [result.bound(k)[0] for k in (1, 5, 50, 5000)]
    assert means == sorted(means) and means[0] < means[-1] - 0.05, means  # IWAE_k grows with k
    assert means[-1] < exact + 4 * se + 1e-3  # and stays below log p(x) in expectation
    # the poor guide is visible in the diagnostics; the exact one would give ESS = K
    assert result.ess.median() < 5000 and torch.isfinite(result.pareto_k).all()


def test_batch_independence(lg):
    """Changing datapoint j never changes datapoint i's estimate (same seed, same batch shape),
    and each datapoint evaluated alone gets its exact value (exact posterior)."""
    x = lg.sample(8)
    a = estimate_log_likelihood(lg.model, lg.poor_guide, x, num_samples=300, batch_size=8, seed=3)
    x2 = x.clone()
    x2[5] += 3.0
    b = estimate_log_likelihood(lg.model, lg.poor_guide, x2, num_samples=300, batch_size=8, seed=3)
    others = [i for i in range(8) if i != 5]
    assert torch.equal(a.log_likelihood[others], b.log_likelihood[others])
    assert not torch.equal(a.log_likelihood[5], b.log_likelihood[5])
    for i in (0, 5):
        alone = estimate_log_likelihood(lg.model, lg.exact_guide, x[i : i + 1], num_samples=10)
        torch.testing.assert_close(alone.log_likelihood, lg.exact_log_likelihood(x[i : i + 1]), atol=1e-9, rtol=0)


def test_streaming_accumulator_does_not_depend_on_chunks():
    torch.manual_seed(0)
    log_w = torch.distributions.StudentT(3.0).sample((1000, 6)).double() * 2 - 50
    direct_lme = torch.logsumexp(log_w, 0) - math.log(1000)
    w = torch.exp(log_w - log_w.max(0).values)
    direct_ess = w.sum(0) ** 2 / (w**2).sum(0)
    tail = psis_tail_length(1000) + 1
    for chunks in ([1000], [50] * 20, [500, 300, 200], [100] * 9 + [100]):
        acc = StreamingLogWeights(group_sizes=(1, 5, 50), tail_size=tail)
        for piece in torch.split(log_w, chunks):
            acc.update(piece)
        torch.testing.assert_close(acc.log_mean_exp(), direct_lme, atol=1e-12, rtol=0)
        torch.testing.assert_close(acc.ess(), direct_ess, atol=1e-9, rtol=1e-12)
        for k in (1, 5, 50):
            expected = (torch.logsumexp(log_w.reshape(-1, k, 6), 1) - math.log(k)).mean(0)
            torch.testing.assert_close(acc.group_bound(k), expected, atol=1e-12, rtol=0)
        torch.testing.assert_close(acc.tail, log_w.sort(0, descending=True).values[:tail])


def test_pareto_k_known_answer():
    """Weights drawn from a Pareto(alpha) distribution have tail shape k = 1 / alpha."""
    torch.manual_seed(2)
    for alpha in (2.0, 1.0 / 0.8):
        log_w = -torch.rand(5000, 8, dtype=torch.float64).log() / alpha  # w = U^(-1/alpha)
        acc = StreamingLogWeights(tail_size=psis_tail_length(5000) + 1)
        acc.update(log_w)
        khat = pareto_k_from_tail(acc.tail, 5000)
        assert abs(khat.mean() - 1.0 / alpha) < 0.1, (alpha, khat)


def test_chunked_equals_unchunked_within_standard_errors(lg):
    x = lg.sample(100)
    small = estimate_log_likelihood(lg.model, lg.poor_guide, x, 2000, 100, particle_chunk_size=50, seed=0)
    large = estimate_log_likelihood(lg.model, lg.poor_guide, x, 2000, 100, particle_chunk_size=2000, seed=1)
    diff = small.log_likelihood - large.log_likelihood
    assert abs(diff.mean().item()) < 4 * diff.std().item() / 10 + 1e-4
    with pytest.raises(ValueError, match="multiple of every IWAE k"):
        estimate_log_likelihood(lg.model, lg.poor_guide, x, 2000, 100, particle_chunk_size=7)


def test_scale_inside_the_pair_does_not_change_log_p_x(lg):
    x = lg.sample(10)
    plain = estimate_log_likelihood(lg.model, lg.poor_guide, x, 100, seed=5)
    scaled = estimate_log_likelihood(lg.scaled_model, lg.poor_guide, x, 100, seed=5)
    torch.testing.assert_close(plain.log_likelihood, scaled.log_likelihood)


def test_refuses_subsampled_plate_and_mismatched_sites(lg):
    x = lg.sample(10)

    def subsampled_model(x):
        with pyro.plate("data", 100, subsample=torch.arange(x.shape[0])):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.mu, lg.sigma).to_event(1), obs=x)

    def subsampled_guide(x):
        with pyro.plate("data", 100, subsample=torch.arange(x.shape[0])):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2, dtype=x.dtype), 1.0).to_event(1))

    with pytest.raises(ValueError, match="subsampled"):
        estimate_log_likelihood(subsampled_model, subsampled_guide, x, 10)

    def guide_without_z(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("w", dist.Normal(torch.zeros(x.shape[0], 2, dtype=x.dtype), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"latent site 'z' of the model has no site in the guide"):
        estimate_log_likelihood(lg.model, guide_without_z, x, 10)

    def model_with_global(x):
        s = pyro.sample("s", dist.LogNormal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(lg.mu, s).to_event(1), obs=x)

    def guide_global(x):
        pyro.sample("s", dist.LogNormal(torch.tensor(0.0, dtype=x.dtype), 0.1))

    with pytest.raises(ValueError, match=r"guide site 's' is not inside pyro.plate\('data'"):
        estimate_log_likelihood(model_with_global, guide_global, x, 10)


@pytest.mark.parametrize("num_samples", [0, -5])
def test_num_samples_must_be_positive(lg, num_samples):
    with pytest.raises(ValueError, match="num_samples must be a positive"):
        estimate_log_likelihood(lg.model, lg.poor_guide, lg.sample(3), num_samples)


def test_mnist_vae_k1_is_the_elbo_and_k5000_lies_above(trained_mnist_vae):
    state, data = trained_mnist_vae
    vae = make_vae(state)
    x = data.test[:20]
    elbo, elbo_se = evaluate_elbo(vae.model, vae.guide, x)
    trace_elbo = -pyro.infer.Trace_ELBO(num_particles=500, vectorize_particles=True).loss(vae.model, vae.guide, x) / 20
    result = estimate_log_likelihood(vae.model, vae.guide, x, num_samples=5000, batch_size=10, seed=0)
    k1, k1_se = result.bound(1)
    assert abs(k1 - trace_elbo) < 0.5, (k1, trace_elbo)  # 5000 draws vs 500x20: MC noise well below 0.5
    assert abs(k1 - elbo) < 4 * elbo_se
    per_point_gain = result.log_likelihood - result.iwae_bounds[1]
    assert (per_point_gain > 0).all() and per_point_gain.mean() > 1.0
    assert result.bound(5)[0] < result.bound(50)[0] < result.mean


def test_extra_arguments_are_sliced_with_the_data(lg):
    """A conditional pair: labels y shift the mean; log p(x | y) is exact with the exact guide."""
    offset = torch.linspace(-1.0, 1.0, lg.W.shape[0], dtype=torch.float64)

    def model(x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(lg.latent_dim, dtype=x.dtype), 1.0).to_event(1))
            mean = z @ lg.W.T + lg.mu + y.unsqueeze(-1) * offset
            pyro.sample("x", dist.Normal(mean, lg.sigma).to_event(1), obs=x)

    def guide(x, y):
        lg.exact_guide(x - y.unsqueeze(-1) * offset)

    y = torch.arange(30, dtype=torch.float64) % 3
    x = lg.sample(30) + y.unsqueeze(-1) * offset
    result = estimate_log_likelihood(model, guide, x, 20, 7, y)  # batches of 7: y must follow x
    exact = lg.exact_log_likelihood(x - y.unsqueeze(-1) * offset)
    torch.testing.assert_close(result.log_likelihood, exact, atol=1e-9, rtol=0)
    by_keyword = estimate_log_likelihood(model, guide, x, 20, 7, y=y)
    torch.testing.assert_close(by_keyword.log_likelihood, exact, atol=1e-9, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_equals_gpu(trained_mnist_vae):
    state, data = trained_mnist_vae
    x = data.test[:50]
    vae = make_vae(state)
    cpu = estimate_log_likelihood(vae.model, vae.guide, x, 2000, 25, seed=0)
    pyro.clear_param_store()
    vae = make_vae(state).cuda()
    gpu = estimate_log_likelihood(vae.model, vae.guide, x.cuda(), 2000, 25, seed=0)
    diff = cpu.log_likelihood - gpu.log_likelihood  # different random streams: agree within MC error
    assert abs(diff.mean().item()) < 4 * diff.std().item() / math.sqrt(50) + 1e-3


def _refuse_constant(token):
    raise AssertionError(f"non-standard JSON token {token}")


def _same(a, b):
    """Two results hold the same per-datapoint values (NaN equal to NaN) and the same fingerprint."""
    torch.testing.assert_close(a.log_likelihood, b.log_likelihood, rtol=0, atol=0, equal_nan=True)
    assert a.iwae_bounds.keys() == b.iwae_bounds.keys() and a.num_samples == b.num_samples
    for k in a.iwae_bounds:
        torch.testing.assert_close(a.iwae_bounds[k], b.iwae_bounds[k], rtol=0, atol=0, equal_nan=True)
    for name in ("ess", "pareto_k"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, equal_nan=True)
    assert a.data_fingerprint == b.data_fingerprint


def test_exact_guide_is_exact_and_its_diagnostics_and_file_are_valid(lg, tmp_path):
    """Issue 17, item 5: with the exact posterior as guide every weight equals p(x) (to float64
    rounding): log p̂(x) is exact per datapoint, ESS = K, k-hat is null with a note (tied weights,
    no tail; arviz says inf), and the report is standard JSON that loads back to the same result."""
    from pyro_vae import LogLikelihoodResult

    x = lg.sample(40)
    exact = lg.exact_log_likelihood(x)
    result = estimate_log_likelihood(lg.model, lg.exact_guide, x, num_samples=1000, batch_size=16, seed=0)
    torch.testing.assert_close(result.log_likelihood, exact, atol=1e-9, rtol=0)
    path = tmp_path / "evaluation.json"
    result.save(path)
    report = json.loads(path.read_text(), parse_constant=_refuse_constant)  # strict: no NaN / Infinity
    torch.testing.assert_close(torch.tensor(report["per_datapoint"]["log_likelihood"], dtype=torch.float64), exact,
                               atol=1e-9, rtol=0)
    assert torch.equal(result.ess, torch.full((40,), 1000.0, dtype=torch.float64))
    assert torch.isnan(result.pareto_k).all()
    assert result.pareto_k_counts() == {"k<=0.5": 0, "0.5<k<=0.7": 0, "k>0.7": 0, "tied": 40}
    assert report["per_datapoint"]["pareto_k"] == [None] * 40 and report["per_datapoint"]["ess"] == [1000.0] * 40
    assert report["summary"]["notes"] == result.notes() and "weights tie" in result.notes()[0]
    _same(LogLikelihoodResult.load(path), result)


def test_non_finite_values_are_saved_as_standard_json_and_restored(tmp_path):
    """-inf estimates (every weight zero), inf and NaN k-hat, NaN ESS and the NaN standard error of
    a single datapoint: written as null (the infinities recorded by index), read back exactly."""
    from pyro_vae import LogLikelihoodResult

    inf, nan = math.inf, math.nan

    def t(*values):
        return torch.tensor(values, dtype=torch.float64)

    result = LogLikelihoodResult(t(-inf, -3.0, -2.0), 200, {1: t(-inf, -4.0, -2.5)}, t(nan, 12.0, 200.0),
                                 t(nan, inf, 0.3), 1.5)
    single = LogLikelihoodResult(t(-2.0), 200, {}, t(3.0), t(0.2))  # stderr over one datapoint: NaN
    for name, r in (("three", result), ("single", single)):
        r.save(tmp_path / f"{name}.json")
        report = json.loads((tmp_path / f"{name}.json").read_text(), parse_constant=_refuse_constant)
        _same(LogLikelihoodResult.load(tmp_path / f"{name}.json"), r)
    assert report["summary"]["log_likelihood"]["stderr"] is None
    report = json.loads((tmp_path / "three.json").read_text())
    assert report["summary"]["non_finite"] == {"log_likelihood": {"-inf": [0]}, "iwae_1": {"-inf": [0]},
                                               "pareto_k": {"inf": [1]}}
    assert result.pareto_k_counts() == {"k<=0.5": 1, "0.5<k<=0.7": 0, "k>0.7": 1, "tied": 0, "zero weights": 1}
    assert len(result.notes()) == 2  # the inf k-hat, the zero weights


def test_an_unwritable_report_is_rescued(tmp_path, monkeypatch):
    from pyro_vae import LogLikelihoodResult

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = LogLikelihoodResult(torch.tensor([-1.0, -2.0], dtype=torch.float64), 10)
    with pytest.raises(OSError, match=r"could not write .*missing.*the result was written to (\S+) instead") as e:
        result.save(tmp_path / "missing" / "evaluation.json")
    rescued = str(e.value).split("written to ")[1].split(" instead")[0]
    _same(LogLikelihoodResult.load(rescued), result)


def _draws():
    return torch.rand(4).tolist(), np.random.rand(3).tolist(), random.random()


def test_a_seed_leaves_the_callers_random_streams_alone(lg):
    """Issue 17, item 7: after an estimate with seed=..., the caller's next draws from torch, numpy and
    random are those it would have made without the call (also when the estimate raises); the
    estimate itself depends on the seed only."""
    from pyro_vae import anomaly_scores

    x = lg.sample(20)
    pyro.set_rng_seed(123)
    _draws()
    expected = _draws()
    pyro.set_rng_seed(123)
    _draws()
    first = estimate_log_likelihood(lg.model, lg.poor_guide, x, 200, 8, seed=7)
    anomaly_scores(lg.model, lg.poor_guide, x, num_samples=20, seed=3)

    def failing_guide(x):
        lg.poor_guide(x)
        raise RuntimeError("the guide fails after drawing")

    with pytest.raises((RuntimeError, ValueError), match="fails after drawing"):  # the checker names it
        estimate_log_likelihood(lg.model, failing_guide, x, 200, 8, seed=7)
    assert _draws() == expected
    torch.manual_seed(999)
    np.random.seed(5)
    again = estimate_log_likelihood(lg.model, lg.poor_guide, x, 200, 8, seed=7)
    _same(again, first)
    other = estimate_log_likelihood(lg.model, lg.poor_guide, x, 200, 8, seed=8)
    assert not torch.equal(other.log_likelihood, first.log_likelihood)


def test_seeded_minibatches_give_the_same_estimate_on_two_processes(lg, monkeypatch):
    """The distributed path, simulated in one process: rank r evaluates minibatches b = r (mod 2)
    from the per-minibatch seeds, with its own RNG state before the call; gathered on rank 0 they
    equal a one-process estimate with the same seed, bit for bit, and neither rank's RNG moved."""
    from pyro_vae.evaluation import minibatches

    x = lg.sample(50)
    one = estimate_log_likelihood(lg.model, lg.poor_guide, x, 200, 8, seed=11)
    state, parts = {}, {}

    class Sent(Exception):
        pass

    def gather(obj):
        parts[state["rank"]] = obj
        if state["rank"] == 1:
            raise Sent  # rank 1 stops here; rank 0, run next, gathers both parts
        return [parts[0], parts[1]]

    monkeypatch.setattr(minibatches, "world_size", lambda: 2)
    monkeypatch.setattr(minibatches, "rank", lambda: state["rank"])
    monkeypatch.setattr(minibatches, "gather_objects", gather)
    for r in (1, 0):
        state["rank"] = r
        torch.manual_seed(100 + r)
        expected = torch.rand(3)
        torch.manual_seed(100 + r)
        if r == 1:
            with pytest.raises(Sent):
                estimate_log_likelihood(lg.model, lg.poor_guide, x, 200, 8, seed=11, distributed=True)
        else:
            two = estimate_log_likelihood(lg.model, lg.poor_guide, x, 200, 8, seed=11, distributed=True)
        assert torch.equal(torch.rand(3), expected)
    assert parts[1][0] == [1, 3, 5] and parts[0][0] == [0, 2, 4, 6]  # 7 minibatches of 8 over 2 ranks
    _same(two, one)
