"""PSIS k-hat (pyro_vae.diagnostics.psislw) on either line of arviz, against known answers.

The same tests hold for arviz 0.x (``arviz.psislw``, Python <= 3.11) and arviz >= 1
(``arviz_stats``, Python >= 3.12); ``.ci/smoke.py`` repeats the key checks in a fresh install on
the newest Python.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from pyro_vae import estimate_log_likelihood
from pyro_vae.diagnostics import (
    StreamingLogWeights,
    pareto_k_from_tail,
    psis_backend,
    psis_tail_length,
    psislw,
)


def test_backend_follows_the_installed_arviz():
    import importlib.metadata

    major = int(importlib.metadata.version("arviz").split(".")[0])
    assert psis_backend() == ("arviz" if major < 1 else "arviz_stats")


@pytest.mark.parametrize("xi", [0.2, 0.5, 0.9])
def test_khat_recovers_the_shape_of_generalized_pareto_weights(xi):
    """Weights drawn from a generalized Pareto with shape xi have tail shape xi.

    K = 10000 gives a tail of 300 weights; the per-row standard deviation of k-hat is about
    (1 + xi) / sqrt(300) <= 0.11, so the mean of 64 rows is within about 0.015 of xi (plus the
    fit's small prior pull towards 0.5). Tolerance 0.06 on the mean: about 4 standard deviations.
    A k-hat fitted to the wrong tail fails (un-negated input on arviz >= 1 gives 0.97 at xi = 0.5).
    """
    w = stats.genpareto.rvs(xi, size=(64, 10000), random_state=np.random.default_rng(123))
    smoothed, khat = psislw(np.log(w))
    assert khat.shape == (64,) and smoothed.shape == (64, 10000)
    assert np.isfinite(khat).all()
    assert abs(khat.mean() - xi) < 0.06, (xi, khat.mean())
    assert np.mean(np.abs(khat - xi) < 0.3) >= 0.95, khat


def test_smoothing_only_touches_the_tail_and_normalizes():
    rng = np.random.default_rng(7)
    lw = rng.standard_t(3.0, size=(3, 1000)) * 2.0 - 40.0
    smoothed, khat = psislw(lw)
    np.testing.assert_allclose(logsumexp(smoothed, axis=-1), 0.0, atol=1e-12)
    m = psis_tail_length(1000)  # arviz >= 1 smooths floor(...) <= m weights, arviz 0.x exactly m
    order = np.argsort(lw, axis=-1)
    body = np.take_along_axis(lw, order[:, : -m - 1], axis=-1)
    body_smoothed = np.take_along_axis(smoothed, order[:, : -m - 1], axis=-1)
    shift = body_smoothed - body  # the body is only shifted, by the same constant per row
    np.testing.assert_allclose(shift, shift[:, :1].repeat(shift.shape[1], axis=1), atol=1e-9)
    assert not np.allclose(smoothed - lw, (smoothed - lw)[:, :1])  # and the tail was smoothed
    assert np.isfinite(khat).all()


def test_streamed_tail_gives_the_full_array_khat():
    """The (M + 1) largest log-weights suffice: equal to PSIS on all K weights (K = 5000 has a
    non-integer 3 sqrt(K), where the two arviz lines' tail lengths differ by one)."""
    torch.manual_seed(1)
    log_w = torch.distributions.StudentT(2.5).sample((5000, 4)).double() - 30.0
    acc = StreamingLogWeights(tail_size=psis_tail_length(5000) + 1)
    for piece in torch.split(log_w, 700):
        acc.update(piece)
    ours = pareto_k_from_tail(acc.tail, 5000)
    _, full = psislw(log_w.T.numpy())
    np.testing.assert_allclose(ours, full, rtol=1e-10)
    assert np.isfinite(ours).all()


def test_psislw_does_not_modify_its_input():
    lw = np.random.default_rng(0).normal(size=(2, 300))
    before = lw.copy()
    psislw(lw)
    np.testing.assert_array_equal(lw, before)


def test_fewer_than_100_samples_give_nan():
    tail = torch.randn(psis_tail_length(99) + 1, 3, dtype=torch.float64).sort(0, descending=True).values
    assert np.isnan(pareto_k_from_tail(tail, 99)).all()


# Exact ties. psislw itself keeps arviz 0.x's answer: when fewer than 5 weights lie strictly above
# PSIS's cut-off (all weights equal, say), there is no tail to fit, k-hat is inf and the weights are
# left equal (arviz >= 1 raises on such a tail, and psislw maps that to the same inf). The estimator
# reads such a tail as tied weights: k-hat NaN (JSON null, with a note), ESS = K.


def test_all_equal_weights_give_inf_and_uniform_weights():
    lw = np.full((3, 200), -12.5)
    smoothed, khat = psislw(lw)
    assert np.all(khat == np.inf)
    np.testing.assert_allclose(smoothed, -math.log(200), atol=1e-12)
    _, single = psislw(lw[0])  # a single row works the same
    assert single.shape == () and single == np.inf


def test_tied_rows_do_not_affect_the_other_rows():
    rng = np.random.default_rng(3)
    lw = rng.normal(size=(3, 400))
    lw[1] = 0.0
    _, khat = psislw(lw)
    _, alone = psislw(lw[[0, 2]])
    assert khat[1] == np.inf
    np.testing.assert_array_equal(khat[[0, 2]], alone)
    assert np.isfinite(alone).all()


def _tail(columns, k=200):
    """The (M + 1, B) largest log-weights of K = k samples, from per-column lists (padded with the
    last value, which is then the cut-off)."""
    m = psis_tail_length(k)
    tail = torch.empty(m + 1, len(columns), dtype=torch.float64)
    for j, top in enumerate(columns):
        tail[:, j] = torch.tensor(list(top) + [top[-1]] * (m + 1 - len(top)), dtype=torch.float64)
    return tail


def test_tied_tails_are_nan_and_a_dominated_tail_is_inf():
    """Column by column: 3 weights above a tied cut-off (arviz: tail too short) -> tied, NaN; all
    equal -> tied, NaN; equal up to float64 rounding -> tied, NaN; 3 weights above a cut-off more
    than exp(708) below them (the rest are negligible: the estimate rests on 3 samples) -> inf;
    every weight zero -> NaN."""
    from pyro_vae.diagnostics import tied_tails

    k = 200
    rounding = [-7.0 + 1e-15 * i for i in range(10, 0, -1)]
    tail = _tail([[0.0, -1.0, -2.0, -3.0], [-3.0], rounding, [0.0, -1.0, -2.0, -800.0], [-math.inf]], k)
    tied = tied_tails(tail.numpy().T, float(np.finfo(np.float64).eps))
    assert tied.tolist() == [True, True, True, False, False]
    khat = pareto_k_from_tail(tail, k)
    assert np.isnan(khat[[0, 1, 2, 4]]).all() and khat[3] == np.inf
    # float32 log-weights: a spread of 1e-6 nats at |log w| = 50 is rounding (tied); in float64 it is not
    wide = _tail([[-50.0 + 2e-7 * i for i in range(8, 0, -1)]], k)
    assert tied_tails(wide.numpy().T, float(np.finfo(np.float32).eps)).tolist() == [True]
    assert tied_tails(wide.numpy().T, float(np.finfo(np.float64).eps)).tolist() == [False]


def test_estimate_with_identical_weights_reports_tied_weights():
    """A deterministic (Delta) latent: every importance weight equals p(x) exactly. k-hat is NaN
    (no tail: tied weights), counted and explained as such, ESS = K, and the result saves."""
    x = torch.randn(3, 4, dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Delta(torch.zeros(x.shape[0], dtype=x.dtype)))
            pyro.sample("x", dist.Normal(z[..., None] + torch.zeros_like(x), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(torch.zeros(x.shape[0], dtype=x.dtype)))

    result = estimate_log_likelihood(model, guide, x, num_samples=200, batch_size=2)
    assert torch.isnan(result.pareto_k).all()
    assert torch.equal(result.ess, torch.full((3,), 200.0, dtype=torch.float64))
    torch.testing.assert_close(result.log_likelihood, dist.Normal(0.0, 1.0).log_prob(x).sum(-1))
    assert result.pareto_k_counts() == {"k<=0.5": 0, "0.5<k<=0.7": 0, "k>0.7": 0, "tied": 3}
    assert any("weights tie" in note for note in result.notes())


# The streaming log-sum-exp with zero weights (log w = -inf) in any pattern of chunks.


def _patterns(rng, num_chunks, chunk, columns):
    """Log-weights in ``num_chunks`` chunks; per chunk and column: all -inf, some -inf, or finite,
    at offsets from -2000 to +500 nats (beyond exp's float64 range, so shifts must be exact)."""
    blocks = []
    for _ in range(num_chunks):
        block = rng.normal(size=(chunk, columns)) * 3.0 + rng.choice([-2000.0, -800.0, -10.0, 0.0, 500.0], size=columns)
        kind = rng.integers(0, 3, size=columns)  # 0: all -inf, 1: some -inf, 2: finite
        block[:, kind == 0] = -np.inf
        some = (rng.random(size=(chunk, columns)) < 0.5) & (kind == 1)
        block[some] = -np.inf
        blocks.append(block)
    return torch.from_numpy(np.concatenate(blocks))


@pytest.mark.parametrize("seed", range(20))
def test_streaming_logsumexp_is_exact_for_any_pattern_of_zero_weights(seed):
    """Equal to torch.logsumexp of the concatenation to float64 rounding (1e-12 relative), -inf
    exactly where every weight is zero; the ESS equals the direct one, NaN where undefined."""
    rng = np.random.default_rng(seed)
    num_chunks, chunk, columns = int(rng.integers(2, 8)), int(rng.integers(1, 30)), 12
    log_w = _patterns(rng, num_chunks, chunk, columns)
    log_w[:chunk, 0] = -np.inf  # column 0: the first chunk is all -inf, a later one finite
    log_w[-1, 0] = -900.0
    log_w[:, 1] = -np.inf  # column 1: every weight zero
    log_w[:, 2] = torch.linspace(-1003.0, -997.0, log_w.shape[0], dtype=torch.float64)
    log_w[:chunk, 2] = -np.inf  # column 2: the first chunk all -inf, then only weights below exp's range
    acc = StreamingLogWeights(group_sizes=(1,), tail_size=5)
    for piece in torch.split(log_w, chunk):
        acc.update(piece)
    expected = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
    torch.testing.assert_close(acc.log_mean_exp(), expected, rtol=1e-12, atol=0)
    assert acc.log_mean_exp()[1] == -math.inf and torch.isfinite(acc.log_mean_exp()[[0, 2]]).all()
    w = torch.exp(log_w - log_w.max(0).values)
    direct_ess = (w.sum(0) ** 2 / (w**2).sum(0)).clamp(max=log_w.shape[0])
    torch.testing.assert_close(acc.ess(), direct_ess, rtol=1e-9, atol=0, equal_nan=True)
    torch.testing.assert_close(acc.group_bound(1), log_w.mean(0), rtol=1e-12, atol=0)
