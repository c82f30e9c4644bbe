"""Paired comparisons of two estimates on the same datapoints (issue 17, item 12):
LogLikelihoodResult.compare, the data fingerprint, and ``pyro-vae compare``."""

import argparse
import hashlib
import math

import numpy as np
import pytest
import torch
from linear_gaussian import LinearGaussian

from pyro_vae import LogLikelihoodResult, estimate_log_likelihood


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian()


@pytest.fixture(scope="module")
def two_estimates(lg):
    """The same 100 datapoints estimated with the exact and with a poor guide (K = 1000)."""
    x = lg.sample(100)
    exact = estimate_log_likelihood(lg.model, lg.exact_guide, x, 1000, 50, bound_ks=(1, 5), seed=0)
    poor = estimate_log_likelihood(lg.model, lg.poor_guide, x, 1000, 50, bound_ks=(1, 5), seed=1)
    return x, exact, poor


def test_paired_standard_error_equals_an_independent_computation(two_estimates, tmp_path):
    """Mean difference and paired SE against numpy on the per-datapoint values, for log p̂(x) and the
    IWAE_1 (ELBO) and IWAE_5 bounds, from the results and from their saved files alike. The
    constructed example: log p(x) varies over datapoints by about 1.7 nats, the two estimates of a
    datapoint differ by about 0.15, so the unpaired SE is more than ten times the paired one (16 times)."""
    _, exact, poor = two_estimates
    exact.save(tmp_path / "a.json")
    poor.save(tmp_path / "b.json")
    loaded = LogLikelihoodResult.load(tmp_path / "a.json"), LogLikelihoodResult.load(tmp_path / "b.json")
    for k, a, b in ((None, exact.log_likelihood, poor.log_likelihood), (1, exact.iwae_bounds[1], poor.iwae_bounds[1]),
                    (5, exact.iwae_bounds[5], poor.iwae_bounds[5])):
        a, b = a.numpy(), b.numpy()
        d = a - b
        for c in (exact.compare(poor, k=k), loaded[0].compare(loaded[1], k=k)):
            assert c.num_datapoints == 100
            assert c.difference == pytest.approx(d.mean(), rel=1e-12)
            assert c.paired_stderr == pytest.approx(np.std(d, ddof=1) / 10.0, rel=1e-12)
            unpaired = math.hypot(np.std(a, ddof=1) / 10.0, np.std(b, ddof=1) / 10.0)
            assert c.unpaired_stderr == pytest.approx(unpaired, rel=1e-12)
    c = exact.compare(poor)
    assert c.quantity == "log_likelihood" and c.unpaired_stderr > 10 * c.paired_stderr, c


def test_paired_standard_error_is_the_spread_of_the_difference_over_replicates(lg):
    """20 replicate pairs of independent estimates (poor guide, K = 300) on the same 100 datapoints:
    the standard deviation over replicates of the mean difference is what the paired SE estimates.
    With 19 degrees of freedom the sample SD has a relative standard error of 1 / sqrt(2 * 19) = 16 %,
    so its ratio to the mean paired SE lies in [0.35, 1.65] (4 SE); the unpaired SE is many times
    too wide (about 7 times here; asserted: over 5)."""
    x = lg.sample(100)
    differences, paired, unpaired = [], [], []
    for r in range(20):
        a = estimate_log_likelihood(lg.model, lg.poor_guide, x, 300, 100, bound_ks=(), diagnostics=False, seed=2 * r)
        b = estimate_log_likelihood(lg.model, lg.poor_guide, x, 300, 100, bound_ks=(), diagnostics=False,
                                    seed=2 * r + 1)
        c = a.compare(b)
        differences.append(c.difference)
        paired.append(c.paired_stderr)
        unpaired.append(c.unpaired_stderr)
    spread = float(np.std(differences, ddof=1))
    assert 0.35 < spread / np.mean(paired) < 1.65, (spread, np.mean(paired))
    assert np.mean(unpaired) > 5 * spread, (spread, np.mean(unpaired))


def test_refuses_results_on_other_datapoints(lg, two_estimates):
    x, exact, poor = two_estimates
    fewer = estimate_log_likelihood(lg.model, lg.exact_guide, x[:99], 100, 50, seed=0)
    with pytest.raises(ValueError, match="A has 100 datapoints and B has 99"):
        exact.compare(fewer)
    reordered = estimate_log_likelihood(lg.model, lg.exact_guide, x.flip(0), 100, 50, seed=0)
    with pytest.raises(ValueError, match="different datapoints"):
        exact.compare(reordered)
    changed = x.clone()
    changed[17, 2] += 1e-9
    other = estimate_log_likelihood(lg.model, lg.exact_guide, changed, 100, 50, seed=0)
    with pytest.raises(ValueError, match="different datapoints"):
        exact.compare(other, names=("run a", "run b"))
    by_hand = LogLikelihoodResult(poor.log_likelihood, 100)
    with pytest.raises(ValueError, match="B records no data fingerprint"):
        exact.compare(by_hand)
    with pytest.raises(ValueError, match=r"no IWAE_50 bound per datapoint; it has k = 1, 5, 1000"):
        exact.compare(poor, k=50)
    zero = LogLikelihoodResult(torch.cat([torch.tensor([-math.inf], dtype=torch.float64), poor.log_likelihood[1:]]),
                               100, data_fingerprint=poor.data_fingerprint)
    with pytest.raises(ValueError, match=r"B's log_likelihood is not finite at 1 datapoint\(s\) \(indices \[0\]\)"):
        exact.compare(zero)


def test_fingerprint_depends_on_the_values_only():
    """The same values in float32 or float64 (and -0.0 for 0.0) give one fingerprint; it equals
    sha256 of the shape and the float64 bytes (computed here in one piece; the package hashes
    blocks of 4096 rows); another order gives another."""
    from pyro_vae.evaluation import data_fingerprint

    x = torch.bernoulli(torch.full((5000, 7), 0.3, dtype=torch.float64))
    x[0, 0] = 0.0
    expected = "sha256:" + hashlib.sha256(repr((5000, 7)).encode() + x.numpy().tobytes()).hexdigest()
    assert data_fingerprint(x) == expected
    assert data_fingerprint(x.float()) == expected
    negative_zero = x.clone()
    negative_zero[0, 0] = -0.0
    assert data_fingerprint(negative_zero) == expected
    assert data_fingerprint(x.flip(0)) != expected
    if torch.cuda.is_available():
        assert data_fingerprint(x.float().cuda()) == expected


def _compare_parser():
    from pyro_vae.cli import compare

    parser = argparse.ArgumentParser(prog="pyro-vae")
    compare.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_command_prints_paired_and_unpaired_standard_errors(two_estimates, tmp_path, capsys):
    """``pyro-vae compare RUN_A RUN_B`` on two run folders' evaluation.json: every shared quantity with
    the difference, the paired SE and the unpaired SE that compare() gives."""
    _, exact, poor = two_estimates
    for name, result in (("run_a", exact), ("run_b", poor)):
        (tmp_path / name).mkdir()
        result.save(tmp_path / name / "evaluation.json")
    parser = _compare_parser()
    args = parser.parse_args(["compare", str(tmp_path / "run_a"), str(tmp_path / "run_b")])
    assert args.handler(args, parser) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    for label, k in (("log p(x) K=1000", None), ("IWAE_1 (ELBO)", 1), ("IWAE_5", 5)):
        c = exact.compare(poor, k=k)
        assert f"{c.difference:+.3f} ± {c.paired_stderr:.3f}" in rows[label], out
        assert rows[label].rstrip().endswith(f"{c.unpaired_stderr:.3f}"), out
    assert "same 100 datapoints" in out


def test_command_refuses_clearly(lg, two_estimates, tmp_path):
    x, exact, _ = two_estimates
    other = estimate_log_likelihood(lg.model, lg.exact_guide, x + 1.0, 100, 50, seed=0)
    exact.save(tmp_path / "a.json")
    other.save(tmp_path / "b.json")
    (tmp_path / "empty_run").mkdir()
    parser = _compare_parser()
    args = parser.parse_args(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    with pytest.raises(ValueError, match="different datapoints"):
        args.handler(args, parser)
    args = parser.parse_args(["compare", str(tmp_path / "a.json"), str(tmp_path / "empty_run")])
    with pytest.raises(FileNotFoundError, match="empty_run has no evaluation.json: run `pyro-vae evaluate"):
        args.handler(args, parser)
    (tmp_path / "c.json").write_text('{"summary": {"num_samples": NaN}}')
    args = parser.parse_args(["compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")])
    with pytest.raises(ValueError, match="c.json is not standard JSON"):
        args.handler(args, parser)


def test_registered_command_exits_2_with_the_reason(two_estimates, lg, tmp_path, capsys):
    from pyro_vae import cli
    from pyro_vae.cli import compare

    if compare not in cli.COMMANDS:
        pytest.skip("pyro_vae.cli does not register the compare command yet")
    x, exact, _ = two_estimates
    exact.save(tmp_path / "a.json")
    estimate_log_likelihood(lg.model, lg.exact_guide, x[:50], 100, 50, seed=0).save(tmp_path / "b.json")
    assert cli.main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "pyro-vae compare: error: cannot pair A and B: A has 100 datapoints and B has 50" in capsys.readouterr().err
