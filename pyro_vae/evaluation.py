r"""Importance-sampled log-likelihoods of any conforming model/guide pair.

For each datapoint ``x_n`` and ``K`` draws ``z_k ~ q(z | x_n)`` from the guide,

.. math::
    \log \hat p(x_n) = \log \frac{1}{K} \sum_{k=1}^K \frac{p(x_n, z_k)}{q(z_k \mid x_n)}

which is the IWAE bound of Burda et al. (2015) for ``k = K``: a stochastic lower bound that
tightens to ``log p(x_n)`` as ``K`` grows (``K = 5000`` is the literature's standard). From the
same samples, the IWAE bounds for smaller ``k`` are the means over ``K // k`` disjoint groups of
``k`` samples; ``k = 1`` is the ELBO.

Particles are drawn in chunks and accumulated with a streaming logsumexp in float64, so memory
stays bounded whatever ``K`` and the data size.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from . import distributed as dist
from .check import check_model_guide
from .diagnostics import KHAT_THRESHOLDS, StreamingLogWeights, pareto_k_from_tail, psis_tail_length
from .importance import guess_max_plate_nesting, log_importance_weights

__all__ = ["LogLikelihoodResult", "estimate_log_likelihood", "evaluate_elbo"]

DEFAULT_BOUND_KS = (1, 5, 50)
_PAIRS_PER_CHUNK = 1 << 16  # particles x datapoints per vectorized chunk (auto chunk size)


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
        return self.log_likelihood.shape[0]

    @property
    def mean(self) -> float:
        """Mean of ``log p̂(x_n)`` over datapoints (nats per datapoint)."""
        return float(self.log_likelihood.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over datapoints (nats)."""
        return _stderr(self.log_likelihood)

    def bound(self, k: int) -> tuple[float, float]:
        """Mean and standard error of the IWAE_k bound over datapoints (``k = K`` included)."""
        values = self.log_likelihood if k == self.num_samples else self.iwae_bounds[k]
        return float(values.mean()), _stderr(values)

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
        """Scalars for printing and JSON: means, standard errors, diagnostics, seconds."""
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
        """Columns of per-datapoint values (index, log p̂, IWAE_k, ESS, k-hat)."""
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
        """A human-readable summary table."""
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


def _stderr(values: torch.Tensor) -> float:
    n = values.shape[0]
    return float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


def _slice_args(args, kwargs, num_points: int, index: slice):
    """Slice every tensor argument whose first dimension runs over the datapoints."""

    def cut(a):
        return a[index] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == num_points else a

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def _chunk_size(requested: int | None, num_samples: int, batch: int, group_sizes) -> int:
    step = math.lcm(*group_sizes) if group_sizes else 1
    size = requested if requested is not None else max(1, _PAIRS_PER_CHUNK // batch)
    size = min(size, num_samples)
    if size >= step:
        size -= size % step
    elif requested is not None and size < num_samples:
        raise ValueError(
            f"particle_chunk_size={requested} must be a multiple of every IWAE k in {group_sizes} "
            f"(lcm {step})"
        )
    else:
        size = min(step, num_samples)
    return size


def estimate_log_likelihood(
    model,
    guide,
    data: torch.Tensor,
    num_samples: int = 5000,
    batch_size: int = 100,
    *args,
    bound_ks=DEFAULT_BOUND_KS,
    particle_chunk_size: int | None = None,
    diagnostics: bool = True,
    seed: int | None = None,
    data_plate: str = "data",
    progress: bool = False,
    distributed: bool = False,
    **kwargs,
) -> LogLikelihoodResult:
    """Estimate ``log p(x_n)`` for every datapoint by importance sampling with the guide.

    Args:
        model, guide: a conforming pair (see :mod:`pyro_vae.models`), called as
            ``fn(x_batch, *args, **kwargs)``.
        data: ``(N, ...)`` tensor on the device of the pair's parameters.
        num_samples: ``K`` importance samples per datapoint.
        batch_size: datapoints evaluated together.
        *args, **kwargs: extra arguments for model and guide; a tensor whose first dimension
            has length ``N`` (labels, say) is sliced along with ``data``.
        bound_ks: smaller ``k`` for which IWAE_k bounds are reported from the same samples.
        particle_chunk_size: particles vectorized at once (default: about 65536 particle x
            datapoint pairs per chunk); a multiple of every ``k`` in ``bound_ks``. The estimate
            does not depend on it beyond Monte Carlo noise.
        diagnostics: compute ESS and PSIS k-hat (``K >= 100`` for k-hat).
        seed: seeds Pyro's RNGs: each minibatch of ``batch_size`` datapoints draws from its own
            seed, derived from this one, so the estimates do not depend on which process
            evaluates which minibatch (``None``: leave the RNGs as they are).
        data_plate: name of the data plate in the pair.
        progress: show a progress bar over datapoints.
        distributed: under ``torchrun`` (``torch.distributed`` initialized with several
            processes), evaluate minibatch ``b`` on rank ``b mod world_size`` and gather the
            per-datapoint results on every process; with a seed they equal a one-process run's.
            Ignored in a single process.

    Returns:
        :class:`LogLikelihoodResult`, tensors on the CPU, float64, in nats.

    Raises:
        ValueError: ``num_samples <= 0`` or empty data.
        ModelGuideError: (a ``ValueError``) the pair breaks the contract, as found by
            :func:`~pyro_vae.check_model_guide` (sites that do not match, a site outside the data
            plate, data outside the likelihood's support, ...), or a subsampled data plate (pass
            the datapoints to evaluate as ``data`` and declare ``pyro.plate(data_plate, len(x))``).

    Scaling: log-densities are used unscaled, so a ``poutine.scale`` inside the pair (a beta
    or KL-annealing weight) does not change the estimate of the generative model's ``log p(x)``.
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be a positive number of importance samples, got {num_samples}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    num_points = data.shape[0]
    if num_points == 0:
        raise ValueError("data is empty: nothing to evaluate")
    group_sizes = tuple(sorted({int(k) for k in bound_ks if 0 < k < num_samples}))
    tail_size = psis_tail_length(num_samples) + 1 if diagnostics else 0
    starts = list(range(0, num_points, batch_size))
    batch_seeds = None
    if seed is not None:
        batch_seeds = torch.randint(2**32, (len(starts),), generator=torch.Generator().manual_seed(seed)).tolist()
    world, rank = (dist.world_size(), dist.rank()) if distributed else (1, 0)
    mine = list(range(rank, len(starts), world))

    start = time.perf_counter()
    check_model_guide(model, guide, data, *args, data_plate=data_plate, **kwargs)
    first_args, first_kwargs = _slice_args(args, kwargs, num_points, slice(0, min(batch_size, num_points)))
    nesting = guess_max_plate_nesting(model, guide, data[:batch_size], *first_args, **first_kwargs)
    results = {"log_likelihood": [], "ess": [], "pareto_k": []}
    bounds = {k: [] for k in group_sizes}
    bar = tqdm(total=sum(min(batch_size, num_points - starts[b]) for b in mine), desc=f"log p(x), K={num_samples}",
               unit="pt", disable=not progress)
    with torch.no_grad():
        for b in mine:
            lo = starts[b]
            if batch_seeds is not None:
                pyro.set_rng_seed(batch_seeds[b])
            index = slice(lo, min(lo + batch_size, num_points))
            x = data[index]
            batch_args, batch_kwargs = _slice_args(args, kwargs, num_points, index)
            chunk = _chunk_size(particle_chunk_size, num_samples, x.shape[0], group_sizes)
            acc = StreamingLogWeights(group_sizes, tail_size)
            for done in range(0, num_samples, chunk):
                w = log_importance_weights(
                    model, guide, x, *batch_args, num_particles=min(chunk, num_samples - done),
                    max_plate_nesting=nesting, data_plate=data_plate, **batch_kwargs,
                )
                if w.subsampled:
                    raise ValueError(
                        f"the plate {data_plate!r} is subsampled: per-datapoint log-likelihoods "
                        f"need every datapoint of the batch evaluated; declare "
                        f"pyro.plate({data_plate!r}, len(x)) and pass the datapoints as data"
                    )
                acc.update(w.log_weights)
            results["log_likelihood"].append(acc.log_mean_exp())
            for k in group_sizes:
                bounds[k].append(acc.group_bound(k))
            if diagnostics:  # k-hat is fitted on the CPU (arviz): one transfer of the tail per batch
                results["ess"].append(acc.ess())
                results["pareto_k"].append(torch.from_numpy(pareto_k_from_tail(acc.tail, num_samples)))
            bar.update(x.shape[0])
    bar.close()
    # to the CPU once, after the loop (no host sync between minibatches beyond the k-hat tails)
    results = {key: [t.cpu() for t in values] for key, values in results.items()}
    bounds = {k: [t.cpu() for t in values] for k, values in bounds.items()}
    if world > 1:  # every rank's minibatches, back in data order
        parts = dist.gather_objects((mine, results, bounds))
        order = sorted((b, r, i) for r, (batches, _, _) in enumerate(parts) for i, b in enumerate(batches))
        results = {key: [parts[r][1][key][i] for _, r, i in order] if parts[0][1][key] else [] for key in results}
        bounds = {k: [parts[r][2][k][i] for _, r, i in order] for k in group_sizes}
    return LogLikelihoodResult(
        log_likelihood=torch.cat(results["log_likelihood"]),
        num_samples=num_samples,
        iwae_bounds={k: torch.cat(v) for k, v in bounds.items()},
        ess=torch.cat(results["ess"]) if diagnostics else None,
        pareto_k=torch.cat(results["pareto_k"]) if diagnostics else None,
        seconds=time.perf_counter() - start,
    )


def evaluate_elbo(model, guide, data: torch.Tensor, batch_size: int = 1000, *args, distributed: bool = False,
                  **kwargs) -> tuple[float, float]:
    """Mean and standard error over datapoints of a one-sample ELBO estimate (nats per datapoint).

    ``distributed``: shard the minibatches over the ``torchrun`` processes (see
    :func:`estimate_log_likelihood`).

    The same estimator as ``Trace_ELBO`` with one particle, per datapoint, unscaled: whatever
    objective a pair was trained with, this measures the same bound, so runs are comparable.
    """
    result = estimate_log_likelihood(
        model, guide, data, 1, batch_size, *args, bound_ks=(), diagnostics=False, distributed=distributed, **kwargs
    )
    return result.mean, result.stderr
