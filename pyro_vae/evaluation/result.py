"""The result of a log-likelihood estimate: per-datapoint values in nats, their summaries and files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..diagnostics import KHAT_THRESHOLDS

__all__ = ["LogLikelihoodResult", "standard_error"]


def standard_error(values: torch.Tensor) -> float:
    """Standard error of the mean of ``values`` ``(N,)`` over its ``N`` entries (NaN when ``N < 2``);
    in the units of ``values`` (nats for log-likelihoods)."""
    n = values.shape[0]
    return float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


@dataclass
class LogLikelihoodResult:
    """Per-datapoint importance-sampling estimates, in nats (higher is better).

    Attributes:
        log_likelihood: ``(N,)`` float64, ``log p̂(x_n)`` with ``num_samples`` samples.
        num_samples: ``K``.
        iwae_bounds: ``{k: (N,) float64}``, the IWAE_k bound per datapoint for smaller ``k``
            (from the same samples; ``k = 1`` is the ELBO).
        ess: ``(N,)`` effective sample size of the normalized weights (1 to ``K``).
        pareto_k: ``(N,)`` PSIS k-hat of the weights (NaN when ``K < 100``).
        seconds: wall-clock of the estimation.
    """

    log_likelihood: torch.Tensor
    num_samples: int
    iwae_bounds: dict[int, torch.Tensor] = field(default_factory=dict)
    ess: torch.Tensor | None = None
    pareto_k: torch.Tensor | None = None
    seconds: float = 0.0

    @property
    def num_datapoints(self) -> int:
        """``N``, the number of datapoints estimated."""
        return self.log_likelihood.shape[0]

    @property
    def mean(self) -> float:
        """Mean of ``log p̂(x_n)`` over datapoints (nats per datapoint)."""
        return float(self.log_likelihood.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over datapoints (nats)."""
        return standard_error(self.log_likelihood)

    def bound(self, k: int) -> tuple[float, float]:
        """Mean and standard error of the IWAE_k bound over datapoints, in nats per datapoint
        (``k = K`` included)."""
        values = self.log_likelihood if k == self.num_samples else self.iwae_bounds[k]
        return float(values.mean()), standard_error(values)

    def pareto_k_counts(self) -> dict[str, int]:
        """How many datapoints have k-hat <= 0.5 (good), in (0.5, 0.7] (ok), > 0.7 (bad)."""
        k = self.pareto_k
        if k is None or torch.isnan(k).all():
            return {}
        lo, hi = KHAT_THRESHOLDS
        return {
            f"k<={lo}": int((k <= lo).sum()),
            f"{lo}<k<={hi}": int(((k > lo) & (k <= hi)).sum()),
            f"k>{hi}": int((k > hi).sum()),
        }

    def summary(self) -> dict:
        """Scalars for printing and JSON: means and standard errors (nats per datapoint),
        diagnostics, seconds."""
        bounds = {str(k): dict(zip(("mean", "stderr"), self.bound(k))) for k in sorted(self.iwae_bounds)}
        bounds[str(self.num_samples)] = {"mean": self.mean, "stderr": self.stderr}
        out = {
            "units": "nats per datapoint (log-likelihood; higher is better)",
            "num_datapoints": self.num_datapoints,
            "num_samples": self.num_samples,
            "log_likelihood": {"mean": self.mean, "stderr": self.stderr},
            "iwae_bounds": bounds,
            "seconds": self.seconds,
        }
        if self.ess is not None:
            out["ess"] = {
                "mean": float(self.ess.mean()),
                "median": float(self.ess.median()),
                "min": float(self.ess.min()),
            }
        out["pareto_k_counts"] = self.pareto_k_counts()
        return out

    def per_datapoint(self) -> dict[str, list]:
        """Columns of ``N`` per-datapoint values (index, log p̂ and IWAE_k in nats, ESS, k-hat)."""
        cols = {"index": list(range(self.num_datapoints)), "log_likelihood": self.log_likelihood.tolist()}
        for k in sorted(self.iwae_bounds):
            cols[f"iwae_{k}"] = self.iwae_bounds[k].tolist()
        if self.ess is not None:
            cols["ess"] = self.ess.tolist()
        if self.pareto_k is not None:
            cols["pareto_k"] = [None if math.isnan(v) else v for v in self.pareto_k.tolist()]
        return cols

    def save(self, path: str | Path) -> None:
        """Write the summary and every per-datapoint value as one JSON file (atomically)."""
        path = Path(path)
        report = {"summary": self.summary(), "per_datapoint": self.per_datapoint()}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1, allow_nan=False))
        tmp.replace(path)

    def format(self) -> str:
        """A human-readable summary table (nats per datapoint)."""
        lines = [
            f"log p̂(x), K = {self.num_samples}, {self.num_datapoints} datapoints: "
            f"{self.mean:.3f} ± {self.stderr:.3f} nats per datapoint (mean ± SE)",
            "  IWAE bounds:   " + "   ".join(
                f"k={k}: {m:.3f} ± {se:.3f}"
                for k, (m, se) in ((k, self.bound(k)) for k in sorted(self.iwae_bounds))
            ),
        ]
        if self.ess is not None:
            lines.append(
                f"  ESS: median {float(self.ess.median()):.1f}, min {float(self.ess.min()):.1f} "
                f"of {self.num_samples}"
            )
        counts = self.pareto_k_counts()
        if counts:
            lines.append("  Pareto k-hat: " + ", ".join(f"{name}: {n}" for name, n in counts.items()))
        lines.append(f"  seconds: {self.seconds:.1f}")
        return "\n".join(lines)
