"""The result of a log-likelihood estimate: per-datapoint values in nats, their summaries, files and
paired comparisons."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .comparison import PairedComparison, check_same_datapoints, paired_comparison
from .files import decode_columns, encode_columns, read_json, write_json
from .khat import pareto_k_counts, pareto_k_notes

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
        ess: ``(N,)`` effective sample size of the normalized weights (1 to ``K``; ``K`` when they
            tie; NaN when every weight is zero).
        pareto_k: ``(N,)`` PSIS k-hat of the weights: a number, or NaN when undefined (``K < 100``,
            tied weights, every weight zero), ``inf`` when there is no fittable tail
            (:meth:`notes` says which).
        seconds: wall-clock of the estimation.
        data_fingerprint: :func:`~pyro_vae.evaluation.comparison.data_fingerprint` of the
            datapoints (``None`` for a result made by hand); :meth:`compare` pairs only results
            with equal fingerprints.
        quantity: what was estimated, as the model states it
            (:func:`~pyro_vae.evaluation.quantity.estimated_quantity`): ``"log p(x)"``, or
            ``"log p(x | y)"`` for a pair given per-datapoint inputs it does not observe,
            ``"log p(x, y)"`` for one that observes ``y`` too. Reports written before it was
            recorded load as ``"log p(x)"``.
    """

    log_likelihood: torch.Tensor
    num_samples: int
    iwae_bounds: dict[int, torch.Tensor] = field(default_factory=dict)
    ess: torch.Tensor | None = None
    pareto_k: torch.Tensor | None = None
    seconds: float = 0.0
    data_fingerprint: str | None = None
    quantity: str = "log p(x)"

    @property
    def num_datapoints(self) -> int:
        """``N``, the number of datapoints estimated."""
        return self.log_likelihood.shape[0]

    @property
    def estimate_label(self) -> str:
        """:attr:`quantity` with a hat, as an estimate: ``"log p̂(x | y)"``."""
        return self.quantity.replace("log p(", "log p̂(", 1)

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

    def values(self, k: int | None = None) -> torch.Tensor:
        """``(N,)`` per-datapoint values in nats: ``log p̂(x_n)`` (``k`` ``None`` or ``K``), or the
        IWAE_k bound (``k = 1``: the ELBO)."""
        if k is None or k == self.num_samples:
            return self.log_likelihood
        if k not in self.iwae_bounds:
            have = ", ".join(str(j) for j in sorted(self.iwae_bounds) + [self.num_samples])
            raise ValueError(f"this result has no IWAE_{k} bound per datapoint; it has k = {have}")
        return self.iwae_bounds[k]

    def compare(self, other: LogLikelihoodResult, k: int | None = None,
                names=("A", "B")) -> PairedComparison:
        """``self - other`` on the same datapoints: mean difference and its paired standard error.

        Args:
            other: a result on the same datapoints, in the same order.
            k: compare the IWAE_k bounds (``k = 1``: the ELBOs); ``None``: the log p̂(x) estimates
                (each with its own ``K``).
            names: how errors name ``self`` and ``other``.

        Returns:
            :class:`~pyro_vae.evaluation.comparison.PairedComparison`, nats per datapoint.

        Raises:
            ValueError: the results are not on the same datapoints (count or fingerprint differ, or
                one has no fingerprint), a result lacks IWAE_k, or a value is not finite.

        Example:
            >>> x = torch.tensor([-90.0, -80.0, -70.0], dtype=torch.float64)
            >>> a = LogLikelihoodResult(x, 5000, data_fingerprint="sha256:0")
            >>> b = LogLikelihoodResult(x - torch.tensor([1.0, 0.5, 1.5]), 5000, data_fingerprint="sha256:0")
            >>> print(a.compare(b).format())
            log_likelihood: +1.000 ± 0.289 nats per datapoint (paired SE; unpaired SE 8.067), N = 3
        """
        check_same_datapoints(self, other, names)
        quantity = "log_likelihood" if k is None else f"iwae_{k}"
        return paired_comparison(self.values(k), other.values(k), quantity, names)

    def pareto_k_counts(self) -> dict[str, int]:
        """How many datapoints have k-hat <= 0.5 (good), in (0.5, 0.7] (ok), > 0.7 (bad), tied
        weights (no tail) and every weight zero (see :func:`~pyro_vae.evaluation.khat.pareto_k_counts`)."""
        return pareto_k_counts(self.pareto_k, self.log_likelihood, self.num_samples)

    def notes(self) -> list[str]:
        """Sentences explaining the values that are not plain numbers (k-hat null or inf, zero weights)."""
        return pareto_k_notes(self.pareto_k, self.log_likelihood, self.num_samples)

    def summary(self) -> dict:
        """Scalars for printing and JSON: means and standard errors (nats per datapoint),
        diagnostics, seconds, the data's count and fingerprint, notes."""
        bounds = {str(k): dict(zip(("mean", "stderr"), self.bound(k))) for k in sorted(self.iwae_bounds)}
        bounds[str(self.num_samples)] = {"mean": self.mean, "stderr": self.stderr}
        out = {
            "units": "nats per datapoint (log-likelihood; higher is better)",
            "quantity": self.quantity,
            "num_datapoints": self.num_datapoints,
            "data_fingerprint": self.data_fingerprint,
            "num_samples": self.num_samples,
            "log_likelihood": {"mean": self.mean, "stderr": self.stderr},
            "iwae_bounds": bounds,
            "seconds": self.seconds,
        }
        if self.ess is not None:
            ess = self.ess[~torch.isnan(self.ess)]
            out["ess"] = {name: float(fn(ess)) if len(ess) else None
                          for name, fn in (("mean", torch.mean), ("median", torch.median), ("min", torch.min))}
        out["pareto_k_counts"] = self.pareto_k_counts()
        out["notes"] = self.notes()
        return out

    def per_datapoint(self) -> dict[str, list]:
        """Columns of ``N`` per-datapoint values (index, log p̂ and IWAE_k in nats, ESS, k-hat)."""
        cols = {"index": list(range(self.num_datapoints)), "log_likelihood": self.log_likelihood.tolist()}
        for k in sorted(self.iwae_bounds):
            cols[f"iwae_{k}"] = self.iwae_bounds[k].tolist()
        if self.ess is not None:
            cols["ess"] = self.ess.tolist()
        if self.pareto_k is not None:
            cols["pareto_k"] = self.pareto_k.tolist()
        return cols

    def save(self, path: str | Path) -> None:
        """Write the summary and every per-datapoint value as one standard-JSON file (atomically).

        Non-finite numbers are written as ``null``; ``summary["non_finite"]`` records, per column,
        the indices of ``inf`` and ``-inf`` values (other ``null`` values are NaN), so :meth:`load`
        restores them. See
        :mod:`pyro_vae.evaluation.files` (never fails on a value; an unwritable ``path`` leaves the
        file in the temporary folder and says where).
        """
        columns, non_finite = encode_columns(self.per_datapoint())
        write_json(path, {"summary": {**self.summary(), "non_finite": non_finite}, "per_datapoint": columns})

    @classmethod
    def load(cls, path: str | Path) -> LogLikelihoodResult:
        """The result that :meth:`save` wrote to ``path`` (``pyro-vae evaluate``'s report).

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not standard JSON, or not a pyro-vae evaluation report.
        """
        report = read_json(path)
        try:
            summary, columns = report["summary"], report["per_datapoint"]
            values = decode_columns(columns, summary.get("non_finite"))
            num_samples = int(summary["num_samples"])
            bounds = {int(name[5:]): values[name] for name in values if name.startswith("iwae_")}
            result = cls(torch.tensor(values["log_likelihood"], dtype=torch.float64), num_samples,
                         {k: torch.tensor(v, dtype=torch.float64) for k, v in bounds.items()},
                         *(torch.tensor(values[c], dtype=torch.float64) if c in values else None
                           for c in ("ess", "pareto_k")),
                         float(summary.get("seconds") or 0.0), summary.get("data_fingerprint"),
                         str(summary.get("quantity", "log p(x)")))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a pyro-vae evaluation report (from LogLikelihoodResult.save or "
                             f"pyro-vae evaluate): {type(e).__name__}: {e}") from None
        return result

    def format(self) -> str:
        """A human-readable summary table (nats per datapoint)."""
        lines = [
            f"{self.estimate_label}, K = {self.num_samples}, {self.num_datapoints} datapoints: "
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
        lines.extend(f"  note: {note}" for note in self.notes())
        lines.append(f"  seconds: {self.seconds:.1f}")
        return "\n".join(lines)
