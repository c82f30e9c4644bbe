"""Importance-sampling diagnostics per datapoint: effective sample size and Pareto k-hat.

Both are computed in bounded memory from a stream of log-weight chunks (see
:class:`StreamingLogWeights`): the ESS needs two running sums, and the PSIS k-hat of
Vehtari et al. (2024) depends only on the ``M + 1`` largest weights, ``M = ceil(min(K / 5,
3 sqrt(K)))``, which are kept with a running top-k. k-hat itself is computed by :func:`psislw`
(arviz's PSIS, see there for which arviz function) on an array that has those largest
log-weights and, in place of the others, the cut-off value (which PSIS ignores), so it equals
arviz's value on the full array.

Reading k-hat (Vehtari et al.): below 0.5 the importance-sampling estimate is reliable; between
0.5 and 0.7 it is usable but with a slower convergence; above 0.7 the guide is a poor proposal
for that datapoint and the estimate of log p(x) is unreliable (typically biased low).
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import re
import warnings

import numpy as np
import torch

__all__ = [
    "KHAT_THRESHOLDS",
    "StreamingLogWeights",
    "pareto_k_from_tail",
    "psis_backend",
    "psis_tail_length",
    "psislw",
]

KHAT_THRESHOLDS = (0.5, 0.7)
MIN_SAMPLES_FOR_KHAT = 100


def psis_tail_length(num_samples: int) -> int:
    """``M``, the number of largest weights PSIS fits a generalized Pareto to (``reff = 1``)."""
    return int(math.ceil(min(num_samples / 5.0, 3 * math.sqrt(num_samples))))


class StreamingLogWeights:
    """Accumulate ``(chunk, B)`` log-weights over particle chunks, in float64, per datapoint.

    Tracks a running maximum-shifted sum of ``w`` and ``w^2`` (for the log-mean-exp and the
    ESS), the sums of IWAE bounds over groups of ``k`` consecutive samples for each ``k`` in
    ``group_sizes``, and the largest log-weights needed for k-hat. The result does not depend
    on how the particles are split into chunks, provided every chunk but the last holds a
    multiple of every group size (:func:`pyro_vae.estimate_log_likelihood` ensures it).
    """

    def __init__(self, group_sizes=(), tail_size: int = 0):
        self.group_sizes = tuple(group_sizes)
        self.tail_size = tail_size
        self.count = 0
        self.shift = self.sum = self.sum_sq = None
        self.group_sums = {k: 0.0 for k in self.group_sizes}
        self.group_counts = {k: 0 for k in self.group_sizes}
        self.tail = None

    def update(self, log_w: torch.Tensor) -> None:
        """Add a ``(chunk, B)`` block of log-weights."""
        lw = log_w.detach().to(torch.float64)
        chunk_max = lw.max(dim=0).values
        new_shift = chunk_max if self.shift is None else torch.maximum(self.shift, chunk_max)
        new_shift = torch.where(torch.isfinite(new_shift), new_shift, torch.zeros_like(new_shift))
        s = torch.exp(lw - new_shift).sum(dim=0)
        s2 = torch.exp(2.0 * (lw - new_shift)).sum(dim=0)
        if self.shift is None:
            self.sum, self.sum_sq = s, s2
        else:
            factor = torch.exp(self.shift - new_shift)
            self.sum = self.sum * factor + s
            self.sum_sq = self.sum_sq * factor**2 + s2
        self.shift = new_shift
        self.count += lw.shape[0]
        for k in self.group_sizes:
            groups = lw.shape[0] // k
            if groups:
                grouped = lw[: groups * k].reshape(groups, k, -1)
                bounds = torch.logsumexp(grouped, dim=1) - math.log(k)
                self.group_sums[k] = self.group_sums[k] + bounds.sum(dim=0)
                self.group_counts[k] += groups
        if self.tail_size:
            pool = lw if self.tail is None else torch.cat([self.tail, lw], dim=0)
            self.tail = pool.topk(min(self.tail_size, pool.shape[0]), dim=0).values

    def log_mean_exp(self) -> torch.Tensor:
        """``(B,)``: ``log (1/K) sum_k w_k``, the estimate of ``log p(x)`` in nats."""
        return torch.log(self.sum) + self.shift - math.log(self.count)

    def ess(self) -> torch.Tensor:
        """``(B,)``: effective sample size ``(sum w)^2 / sum w^2`` of the normalized weights."""
        return self.sum**2 / self.sum_sq

    def group_bound(self, k: int) -> torch.Tensor:
        """``(B,)``: mean over groups of ``k`` samples of ``log (1/k) sum w`` (the IWAE_k bound)."""
        if not self.group_counts[k]:
            raise ValueError(f"fewer than k = {k} samples were drawn")
        return self.group_sums[k] / self.group_counts[k]


def pareto_k_from_tail(tail: torch.Tensor, num_samples: int) -> np.ndarray:
    """PSIS k-hat per datapoint, from the ``(M + 1, B)`` largest log-weights of ``num_samples``.

    Returns NaN for every datapoint when ``num_samples`` is below 100 (too few for a tail fit).
    """
    num_points = tail.shape[1]
    if num_samples < MIN_SAMPLES_FOR_KHAT:
        return np.full(num_points, np.nan)
    top = tail.cpu().numpy().T  # (B, M + 1), descending
    cutoff = top[:, -1:]
    rows = np.empty((num_points, num_samples))
    rows[:, : top.shape[1]] = top
    rows[:, top.shape[1] :] = cutoff
    _, khat = psislw(rows)
    return khat


@functools.cache
def psis_backend() -> str:
    """Which PSIS implementation :func:`psislw` calls, chosen by the installed arviz's major version.

    ``"arviz"``: arviz 0.x (the newest arviz on Python 3.10 and 3.11), ``arviz.psislw``.
    ``"arviz_stats"``: arviz >= 1.0 (Python >= 3.12), which has no ``arviz.psislw``; PSIS lives in
    the ``arviz-stats`` package (a dependency of arviz 1.x, and of this package on Python >= 3.12)
    as ``arviz_stats.base.array_stats.psislw``. Also used when arviz itself is not installed.
    """
    try:
        version = importlib.metadata.version("arviz")
    except importlib.metadata.PackageNotFoundError:
        return "arviz_stats"
    major = re.match(r"\d+", version)
    return "arviz" if major is not None and int(major.group()) < 1 else "arviz_stats"


def psislw(log_weights) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed importance sampling with ``reff = 1``, on either line of arviz.

    Args:
        log_weights: ``(..., S)`` array of log importance weights, the samples on the last axis.

    Returns:
        ``(smoothed, khat)``: the ``(..., S)`` Pareto-smoothed log-weights, normalized to
        ``logsumexp = 0`` along the last axis, and the ``(...)`` k-hat, float64.

    arviz 0.x (see :func:`psis_backend`): ``arviz.psislw(log_weights, reff=1)``, unchanged. Its
    tail is the ``M = ceil(min(S / 5, 3 sqrt(S)))`` largest weights and, where fewer than 5
    weights lie strictly above the cut-off (ties, e.g. all weights equal), k-hat is ``inf`` and
    the weights are not smoothed.

    arviz >= 1: ``arviz_stats.base.array_stats.psislw(-log_weights, r_eff=1)``. That function takes
    the *negated* log-weights (its input is a log-likelihood, as in PSIS-LOO). Its tail has
    ``floor`` instead of ``ceil`` of the same length, so k-hat may differ from arviz 0.x's in
    the second decimal (Monte Carlo noise of the fit, not a different definition). A tail it
    cannot fit (it raises ``ValueError`` when the tail is all ties or ``S < 25``, and gives NaN
    when many tail weights tie with the cut-off) is reported as arviz 0.x reports a tail too
    short to fit: k-hat ``inf``, weights only normalized. So k-hat is never NaN here.
    """
    lw = np.array(log_weights, dtype=np.float64)  # a copy: neither arviz line may write into it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if psis_backend() == "arviz":
            import arviz as az

            smoothed, khat = az.psislw(lw, reff=1.0)
            return np.asarray(smoothed, dtype=np.float64), np.asarray(khat, dtype=np.float64)
        from arviz_stats.base import array_stats

        try:
            smoothed, khat = array_stats.psislw(-lw, r_eff=1.0)
        except ValueError:  # some row's tail is all ties: fit row by row, those rows get inf
            rows = lw.reshape(-1, lw.shape[-1])
            smoothed, khat = np.empty_like(rows), np.empty(rows.shape[0])
            for i, row in enumerate(rows):
                try:
                    smoothed[i], khat[i] = array_stats.psislw(-row, r_eff=1.0)
                except ValueError:
                    smoothed[i], khat[i] = row - _logsumexp(row), np.inf
            smoothed, khat = smoothed.reshape(lw.shape), khat.reshape(lw.shape[:-1])
    smoothed = np.asarray(smoothed, dtype=np.float64)
    khat = np.asarray(khat, dtype=np.float64)
    return smoothed, np.where(np.isnan(khat), np.inf, khat)


def _logsumexp(x: np.ndarray) -> float:
    top = np.max(x)
    if not np.isfinite(top):
        return float(top)
    return float(top + np.log(np.sum(np.exp(x - top))))
