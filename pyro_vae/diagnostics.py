"""Importance-sampling diagnostics per datapoint: effective sample size and Pareto k-hat.

Both are computed in bounded memory from a stream of log-weight chunks (see
:class:`StreamingLogWeights`): the ESS needs two running sums, and the PSIS k-hat of
Vehtari et al. (2024) depends only on the ``M + 1`` largest weights, ``M = ceil(min(K / 5,
3 sqrt(K)))``, which are kept with a running top-k. k-hat itself is computed by :func:`psislw`
(arviz's PSIS, see there for which arviz function) on an array that has those largest
log-weights and, in place of the others, the cut-off value (which PSIS ignores), so it equals
arviz's value on the full array. Where the largest weights tie (an exact guide, whose weights
are all equal) there is no tail to fit: k-hat is NaN (``null`` in JSON) rather than arviz's
``inf``, and the ESS is ``K`` (see :func:`tied_tails`).

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
    "tied_tails",
]

KHAT_THRESHOLDS = (0.5, 0.7)
MIN_SAMPLES_FOR_KHAT = 100
TIE_ULPS = 1024
"""Log-weights within ``TIE_ULPS`` machine epsilons (relative) of each other count as tied."""
_EPS64 = float(np.finfo(np.float64).eps)
LOG_TINY = float(np.log(np.finfo(np.float64).tiny))
"""PSIS's floor on the cut-off: weights below ``exp(-708)`` times the largest are not its tail."""


def psis_tail_length(num_samples: int) -> int:
    """``M``, the number of largest weights PSIS fits a generalized Pareto to (``reff = 1``)."""
    return math.ceil(min(num_samples / 5.0, 3 * math.sqrt(num_samples)))


class StreamingLogWeights:
    """Accumulate ``(chunk, B)`` log-weights over particle chunks, in float64, per datapoint.

    Tracks the running maximum ``m`` of each datapoint's log-weights and the sums of ``w`` and
    ``w^2`` relative to it (for the log-mean-exp and the ESS), the sums of IWAE bounds over groups
    of ``k`` consecutive samples for each ``k`` in ``group_sizes``, and the largest log-weights
    needed for k-hat. Exact for any pattern of ``-inf`` log-weights (zero weights), whole chunks
    included: it equals ``torch.logsumexp`` of all the log-weights to float64 rounding. The
    result does not depend on how the particles are split into chunks, provided every chunk but
    the last holds a multiple of every group size (:func:`pyro_vae.estimate_log_likelihood`
    ensures it).
    """

    def __init__(self, group_sizes=(), tail_size: int = 0):
        self.group_sizes = tuple(group_sizes)
        self.tail_size = tail_size
        self.count = 0
        self.max = self.min = self.sum = self.sum_sq = None  # sums are relative to _finite(self.max)
        self.eps = 0.0  # machine epsilon of the coarsest dtype the log-weights came in
        self.group_sums = {k: 0.0 for k in self.group_sizes}
        self.group_counts = {k: 0 for k in self.group_sizes}
        self.tail = None

    def update(self, log_w: torch.Tensor) -> None:
        """Add a ``(chunk, B)`` block of log-weights (nats; ``-inf`` for a zero weight)."""
        lw = log_w.detach().to(torch.float64)
        if log_w.is_floating_point():
            self.eps = max(self.eps, torch.finfo(log_w.dtype).eps)
        chunk_max, chunk_min = lw.max(dim=0).values, lw.min(dim=0).values
        new_max = chunk_max if self.max is None else torch.maximum(self.max, chunk_max)
        self.min = chunk_min if self.min is None else torch.minimum(self.min, chunk_min)
        shift = _finite(new_max)
        s = torch.exp(lw - shift).sum(dim=0)
        s2 = torch.exp(2.0 * (lw - shift)).sum(dim=0)
        if self.max is not None:  # rescale the old sums; exp(-inf) = 0 where all were zero weights
            factor = torch.exp(self.max - shift)
            s = s + self.sum * factor
            s2 = s2 + self.sum_sq * factor**2
        self.max, self.sum, self.sum_sq = new_max, s, s2
        self.count += lw.shape[0]
        self._update_groups(lw)
        if self.tail_size:
            pool = lw if self.tail is None else torch.cat([self.tail, lw], dim=0)
            self.tail = pool.topk(min(self.tail_size, pool.shape[0]), dim=0).values

    def _update_groups(self, lw: torch.Tensor) -> None:
        for k in self.group_sizes:
            groups = lw.shape[0] // k
            if groups:
                grouped = lw[: groups * k].reshape(groups, k, -1)
                bounds = torch.logsumexp(grouped, dim=1) - math.log(k)
                self.group_sums[k] = self.group_sums[k] + bounds.sum(dim=0)
                self.group_counts[k] += groups

    def log_mean_exp(self) -> torch.Tensor:
        """``(B,)``: ``log (1/K) sum_k w_k``, the estimate of ``log p(x)`` in nats (``-inf`` when
        every weight is zero)."""
        return torch.log(self.sum) + _finite(self.max) - math.log(self.count)

    def ess(self) -> torch.Tensor:
        """``(B,)``: effective sample size ``(sum w)^2 / sum w^2`` of the normalized weights, in
        ``[1, K]``: exactly ``K`` when all weights tie (an exact guide: all log-weights within
        rounding, as in :func:`tied_tails`), NaN when every weight is zero (undefined)."""
        ess = (self.sum**2 / self.sum_sq).clamp(max=float(self.count))
        tolerance = TIE_ULPS * (self.eps or _EPS64) * torch.clamp(self.max.abs(), min=1.0)
        ess = torch.where(self.max - self.min <= tolerance, torch.full_like(ess, float(self.count)), ess)
        return torch.where(self.sum > 0, ess, torch.full_like(ess, math.nan))

    def pareto_k(self) -> np.ndarray:
        """``(B,)`` PSIS k-hat of the weights seen so far (see :func:`pareto_k_from_tail`)."""
        return pareto_k_from_tail(self.tail, self.count, eps=self.eps or _EPS64)

    def group_bound(self, k: int) -> torch.Tensor:
        """``(B,)``: mean over groups of ``k`` samples of ``log (1/k) sum w`` (the IWAE_k bound)."""
        if not self.group_counts[k]:
            raise ValueError(f"fewer than k = {k} samples were drawn")
        return self.group_sums[k] / self.group_counts[k]


def _finite(t: torch.Tensor) -> torch.Tensor:
    """``t`` with non-finite entries replaced by 0 (a safe shift for exp)."""
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))


def tied_tails(top: np.ndarray, eps: float) -> np.ndarray:
    """``(B,)`` bool: whose ``(B, M + 1)`` largest log-weights (descending) tie, leaving no tail.

    Tied: the ``M + 1`` largest agree to rounding (spread at most ``TIE_ULPS * eps * max(1, |max|)``
    nats, ``eps`` the machine epsilon of the log-weights' dtype), or fewer than 5 lie strictly
    above the cut-off (the ``(M + 1)``-th largest) although it is within PSIS's ``exp(-708)`` of
    the largest (arviz's rule for a tail too short to fit, caused here by ties at the cut-off).
    Rows whose largest log-weight is ``-inf`` (no positive weight) are not tied.
    """
    lead, cut = top[:, 0], top[:, -1]
    finite = np.isfinite(lead)
    with np.errstate(invalid="ignore"):
        rounding = (lead - cut) <= TIE_ULPS * eps * np.maximum(1.0, np.abs(lead))
        near = cut >= lead + LOG_TINY
        few_above = (top[:, :-1] > cut[:, None]).sum(axis=1) < 5
    return finite & (rounding | (near & few_above))


def pareto_k_from_tail(tail: torch.Tensor, num_samples: int, eps: float = _EPS64) -> np.ndarray:
    """PSIS k-hat per datapoint, from the ``(M + 1, B)`` largest log-weights of ``num_samples``.

    A number where a Pareto tail can be fitted (``inf`` where at most 4 weights lie within
    ``exp(708)`` of the largest: an estimate resting on a handful of samples). NaN (undefined, JSON
    ``null``) for every datapoint when ``num_samples`` is below 100 (too few for a tail fit), for
    tied weights (:func:`tied_tails`: no tail to fit, e.g. an exact guide, whose ESS is ``K``),
    and where every weight is zero. ``eps``: machine epsilon of the log-weights' dtype.
    """
    num_points = tail.shape[1]
    khat = np.full(num_points, np.nan)
    if num_samples < MIN_SAMPLES_FOR_KHAT:
        return khat
    top = tail.cpu().numpy().T  # (B, M + 1), descending
    fit = np.isfinite(top[:, 0]) & ~tied_tails(top, eps)
    if fit.any():
        rows = np.empty((int(fit.sum()), num_samples))
        rows[:, : top.shape[1]] = top[fit]
        rows[:, top.shape[1] :] = top[fit, -1:]  # the cut-off value, which PSIS ignores
        khat[fit] = psislw(rows)[1]
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
