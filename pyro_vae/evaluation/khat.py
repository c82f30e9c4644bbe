"""How a result's PSIS k-hat values read: counts by threshold, and a note for every value that is
not a plain number (see :mod:`pyro_vae.diagnostics` for how k-hat is computed)."""

from __future__ import annotations

import torch

from ..diagnostics import KHAT_THRESHOLDS, MIN_SAMPLES_FOR_KHAT

__all__ = ["pareto_k_counts", "pareto_k_notes"]


def pareto_k_counts(pareto_k: torch.Tensor | None, log_likelihood: torch.Tensor, num_samples: int) -> dict[str, int]:
    """Datapoints by k-hat ``(N,)``: ``k<=0.5`` (good), ``0.5<k<=0.7`` (ok), ``k>0.7`` (bad; ``inf``
    included), ``tied`` (NaN: the weights tie, no tail to fit) and, when there are any,
    ``zero weights`` (NaN with ``log p̂ = -inf``). ``{}`` when k-hat was not computed (``None``, or
    ``num_samples < 100``)."""
    if pareto_k is None or num_samples < MIN_SAMPLES_FOR_KHAT:
        return {}
    zero = torch.isnan(pareto_k) & (log_likelihood == -float("inf"))
    lo, hi = KHAT_THRESHOLDS
    counts = {
        f"k<={lo}": int((pareto_k <= lo).sum()),
        f"{lo}<k<={hi}": int(((pareto_k > lo) & (pareto_k <= hi)).sum()),
        f"k>{hi}": int((pareto_k > hi).sum()),
        "tied": int((torch.isnan(pareto_k) & ~zero).sum()),
    }
    if zero.any():
        counts["zero weights"] = int(zero.sum())
    return counts


def pareto_k_notes(pareto_k: torch.Tensor | None, log_likelihood: torch.Tensor, num_samples: int) -> list[str]:
    """Sentences that explain the k-hat values that are not plain numbers (NaN and ``inf`` are
    written as ``null`` in JSON), and the datapoints whose every weight is zero."""
    if pareto_k is None:
        return []
    if num_samples < MIN_SAMPLES_FOR_KHAT:
        return [(f"k-hat is null: K = {num_samples} importance samples are too few to fit a Pareto tail "
                 f"(it needs K >= {MIN_SAMPLES_FOR_KHAT})")]
    notes = []
    zero = log_likelihood == -float("inf")
    tied = torch.isnan(pareto_k) & ~zero
    if tied.any():
        notes.append(f"k-hat is null for {int(tied.sum())} datapoint(s) whose largest weights tie (equal to "
                     "float rounding, or fewer than 5 above PSIS's cut-off): there is no tail to fit, so no "
                     "heavy tail threatens the estimate; all weights equal (an exact guide) gives ESS = K "
                     "and an exact log p(x)")
    infinite = torch.isinf(pareto_k)
    if infinite.any():
        notes.append(f"k-hat is inf (null in JSON) for {int(infinite.sum())} datapoint(s): at most 4 weights "
                     "lie within a factor exp(708) of the largest, so the estimate rests on a handful of "
                     "samples and is unreliable (counted as k>0.7)")
    if zero.any():
        notes.append(f"{int(zero.sum())} datapoint(s) have every importance weight zero: log p̂(x) = -inf "
                     "(null in JSON), ESS and k-hat undefined (null)")
    return notes
