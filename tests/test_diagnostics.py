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


# Exact ties. Behaviour pinned as arviz 0.x has always given it: when fewer than 5 weights lie
# strictly above PSIS's cut-off (all weights equal, say), there is no tail to fit: k-hat is inf
# (counted as k > 0.7) and the weights are left equal. arviz >= 1 raises on such a tail, and
# psislw maps that to the same inf.


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


def test_fewer_than_five_distinct_tail_weights_give_inf():
    k, m = 200, psis_tail_length(200)
    tail = torch.full((m + 1, 2), -3.0, dtype=torch.float64)
    tail[:3, 0] = torch.tensor([0.0, -1.0, -2.0], dtype=torch.float64)  # 3 above the cut-off
    assert np.all(pareto_k_from_tail(tail, k) == np.inf)  # column 1: all tied


def test_estimate_with_identical_weights_reports_inf_khat():
    """A deterministic (Delta) latent: every importance weight equals p(x) exactly."""
    x = torch.randn(3, 4, dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Delta(torch.zeros(x.shape[0], dtype=x.dtype)))
            pyro.sample("x", dist.Normal(z[..., None] + torch.zeros_like(x), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(torch.zeros(x.shape[0], dtype=x.dtype)))

    result = estimate_log_likelihood(model, guide, x, num_samples=200, batch_size=2)
    assert torch.all(result.pareto_k == math.inf)
    assert torch.equal(result.ess, torch.full((3,), 200.0, dtype=torch.float64))
    torch.testing.assert_close(result.log_likelihood, dist.Normal(0.0, 1.0).log_prob(x).sum(-1))
    assert result.pareto_k_counts()["k>0.7"] == 3
