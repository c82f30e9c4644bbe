"""The importance-sampling estimator of per-datapoint log-likelihoods, and the ELBO evaluation
built on it (the math is in :mod:`pyro_vae.evaluation`)."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass

import pyro
import torch
from tqdm.auto import tqdm

from ..check import check_model_guide
from ..check.idioms import check_proposal_covers_prior, point_mass_sites
from ..check.validation import first_rows_sites
from ..diagnostics import StreamingLogWeights, psis_tail_length
from ..distributed import world_size
from ..importance import guess_max_plate_nesting, log_importance_weights
from .comparison import data_fingerprint
from .compiled import CompiledChunk, use_compiled
from .minibatches import MinibatchPlan, particles_per_chunk, slice_args
from .quantity import estimated_quantity
from .result import LogLikelihoodResult
from .rng import forked_rng, seed_minibatch

__all__ = ["DEFAULT_BOUND_KS", "estimate_log_likelihood", "evaluate_elbo"]

DEFAULT_BOUND_KS = (1, 5, 50)
"""The smaller ``k`` whose IWAE_k bounds :func:`estimate_log_likelihood` reports by default."""


def estimate_log_likelihood(model, guide, data: torch.Tensor, num_samples: int = 5000, batch_size: int = 100,
                            *args, bound_ks=DEFAULT_BOUND_KS, particle_chunk_size: int | None = None,
                            diagnostics: bool = True, seed: int | None = None, data_plate: str = "data",
                            progress: bool = False, distributed: bool = False, compiled="auto",
                            **kwargs) -> LogLikelihoodResult:
    """Estimate ``log p(x_n)`` for every datapoint by importance sampling with the guide.

    Args:
        model, guide: a conforming pair (see :mod:`pyro_vae.models`), called as
            ``fn(x_batch, *args, **kwargs)``.
        data: ``(N, ...)`` tensor on the device of the pair's parameters.
        num_samples: ``K`` importance samples per datapoint.
        batch_size: datapoints evaluated together.
        ``*args``, ``**kwargs``: extra arguments for model and guide; a tensor whose first dimension
            has length ``N`` (labels, say) is sliced along with ``data``.
        bound_ks: smaller ``k`` for which IWAE_k bounds are reported from the same samples.
        particle_chunk_size: particles vectorized at once (default: about 65536 particle x
            datapoint pairs per chunk); a multiple of every ``k`` in ``bound_ks``. The estimate
            does not depend on it beyond Monte Carlo noise.
        diagnostics: compute ESS and PSIS k-hat (``K >= 100`` for k-hat).
        seed: makes the estimate reproducible: each minibatch of ``batch_size`` datapoints draws
            from its own seed, derived from this one, so the estimates do not depend on which
            process evaluates which minibatch. The global RNGs (torch's CPU generator and the data
            device's, Python's ``random``, numpy's) are forked for the estimate and restored after
            it, so the caller's next draws are the same as without the call (see
            :mod:`pyro_vae.evaluation.rng`). ``None``: draw from the global RNGs as they are.
        data_plate: name of the data plate in the pair.
        progress: show a progress bar over datapoints.
        distributed: under ``torchrun`` (``torch.distributed`` initialized with several
            processes), evaluate minibatch ``b`` on rank ``b mod world_size`` and gather the
            per-datapoint results on every process; with a seed they equal a one-process run's.
            Ignored in a single process.
        compiled: ``True``: record each chunk's computation once and replay it compiled
            (:mod:`pyro_vae.evaluation.compiled`; a pair that cannot be recorded runs eager, with
            one warning line saying why); ``False``: eager; ``"auto"`` (default): compiled for
            estimates of at least :data:`~pyro_vae.evaluation.compiled.AUTO_MIN_WORK` datapoint x
            sample pairs. With a seed, the compiled estimate uses the eager one's draws (equal up to
            float rounding, about 1e-6 nats here).

    Returns:
        :class:`LogLikelihoodResult`, tensors on the CPU, float64, in nats, with the data's
        fingerprint (so that :meth:`LogLikelihoodResult.compare` can pair it with another result)
        and the quantity estimated (:func:`estimated_quantity`: ``"log p(x)"``, ``"log p(x | y)"``, ...).

    Raises:
        ValueError: ``num_samples <= 0`` or empty data; at the minibatch where it happens, importance
            weights that are NaN or +inf (naming the rows: a distribution parameter outside its
            constraint there, which Pyro's validation, off inside the sampling loop, does not
            report), or a class index given to ``F.one_hot`` out of range.
        ModelGuideError: (a ``ValueError``) the pair breaks the contract, as found by
            :func:`~pyro_vae.check_model_guide` (sites that do not match, a site outside the data
            plate, data outside the likelihood's support, ...), or a subsampled data plate (pass
            the datapoints to evaluate as ``data`` and declare ``pyro.plate(data_plate, len(x))``).

    Enumeration: discrete guide sites marked for parallel enumeration (``@config_enumerate``,
    ``infer={"enumerate": "parallel"}``) are summed exactly in every weight,
    ``w_k = sum_y p(x, y, z_ky) / q(z_ky | x, y)``; only the other latents are importance-sampled,
    so the estimate does not depend on ``q(y | x)`` (see :mod:`pyro_vae.importance`).

    Scaling: log-densities are used unscaled, so a ``poutine.scale`` inside the pair (a beta
    or KL-annealing weight) does not change the estimate of the generative model's ``log p(x)``.
    """
    work = data.shape[0] * num_samples // (world_size() if distributed else 1)  # this process's share
    options = _Options(bound_ks, particle_chunk_size, diagnostics, seed, data_plate, progress, distributed,
                       compiled=use_compiled(compiled, work))
    result = _estimate(model, guide, data, num_samples, batch_size, args, kwargs, options)
    result.data_fingerprint = data_fingerprint(data)
    result.quantity = estimated_quantity(model, data, args, kwargs, rows=batch_size)
    return result


@dataclass(frozen=True)
class _Options:
    """The keyword options of :func:`estimate_log_likelihood`."""

    bound_ks: tuple
    chunk_size: int | None
    diagnostics: bool
    seed: int | None
    data_plate: str
    progress: bool
    distributed: bool
    enumerate: str = "sum"
    compiled: bool | str = False  # True, or "replay" for tests (the recorded graph op by op)


def _estimate(model, guide, data, num_samples: int, batch_size: int, args: tuple, kwargs: dict,
              options: _Options) -> LogLikelihoodResult:
    """:func:`estimate_log_likelihood` without the data fingerprint; with a seed, inside forked RNGs."""
    _check_sizes(num_samples, batch_size, data)
    group_sizes = tuple(sorted({int(k) for k in options.bound_ks if 0 < k < num_samples}))
    tail_size = psis_tail_length(num_samples) + 1 if options.diagnostics else 0
    plan = MinibatchPlan.make(data.shape[0], batch_size, options.seed, options.distributed)
    start = time.perf_counter()
    with forked_rng(data.device) if options.seed is not None else contextlib.nullcontext():
        check_model_guide(model, guide, data, *args, data_plate=options.data_plate, **kwargs)
        if options.enumerate == "sum":  # log p(x) by importance sampling (not evaluate_elbo's ELBO)
            check_proposal_covers_prior(*first_rows_sites(model, guide, data, args, kwargs, options.data_plate))
        nesting = _max_plate_nesting(model, guide, data, batch_size, args, kwargs)
        sampler = _Sampler(model, guide, num_samples, group_sizes, tail_size, options.chunk_size, nesting,
                           options.data_plate, options.diagnostics, options.enumerate)
        if options.compiled:
            sampler.record_chunk(data, args, kwargs, plan, "replay" if options.compiled == "replay" else "inductor")
        results, bounds = plan.gather(*sampler.run(data, args, kwargs, plan, options.progress))
    return _result(results, bounds, num_samples, options.diagnostics, time.perf_counter() - start)


def _check_sizes(num_samples: int, batch_size: int, data: torch.Tensor) -> None:
    if num_samples <= 0:
        raise ValueError(f"num_samples must be a positive number of importance samples, got {num_samples}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if data.shape[0] == 0:
        raise ValueError("data is empty: nothing to evaluate")


def _result(results: dict, bounds: dict, num_samples: int, diagnostics: bool, seconds: float):
    """The per-minibatch tensors of every process, in data order, joined into one result."""
    return LogLikelihoodResult(
        log_likelihood=torch.cat(results["log_likelihood"]),
        num_samples=num_samples,
        iwae_bounds={k: torch.cat(v) for k, v in bounds.items()},
        ess=torch.cat(results["ess"]) if diagnostics else None,
        pareto_k=torch.cat(results["pareto_k"]) if diagnostics else None,
        seconds=seconds,
    )


def _max_plate_nesting(model, guide, data: torch.Tensor, batch_size: int, args: tuple, kwargs: dict) -> int:
    """The pair's plate nesting, from one run on the first minibatch."""
    num_points = data.shape[0]
    first_args, first_kwargs = slice_args(args, kwargs, num_points, slice(0, min(batch_size, num_points)))
    return guess_max_plate_nesting(model, guide, data[:batch_size], *first_args, **first_kwargs)


@dataclass
class _Sampler:
    """Draws the ``num_samples`` importance weights of each minibatch and reduces them to
    per-datapoint estimates (log p̂, IWAE_k bounds, ESS, k-hat)."""

    model: object
    guide: object
    num_samples: int
    group_sizes: tuple[int, ...]
    tail_size: int
    chunk_size: int | None
    nesting: int
    data_plate: str
    diagnostics: bool
    enumerate: str
    compiled: CompiledChunk | None = None

    def record_chunk(self, data, args: tuple, kwargs: dict, plan: MinibatchPlan, backend: str) -> None:
        """Record and compile the chunk of a full minibatch (:class:`CompiledChunk`), checked on the
        second minibatch (the first again when there is one)."""
        options = {"max_plate_nesting": self.nesting, "data_plate": self.data_plate, "enumerate": self.enumerate}
        first, second = plan.index(0), plan.index(1 if plan.num_points >= 2 * plan.batch_size else 0)
        batches = [(data[i], *slice_args(args, kwargs, plan.num_points, i)) for i in (first, second)]
        chunk = particles_per_chunk(self.chunk_size, self.num_samples, batches[0][0].shape[0], self.group_sizes)
        self.compiled = CompiledChunk(self.model, self.guide, options, backend).record(
            min(chunk, self.num_samples), *batches)

    def run(self, data, args, kwargs, plan: MinibatchPlan, progress: bool) -> tuple[dict, dict]:
        """Per-minibatch ``(N_b,)`` CPU tensors for this process's minibatches, in plan order:
        ``results[name]`` (``log_likelihood``, ``ess``, ``pareto_k``) and ``bounds[k]``."""
        results = {"log_likelihood": [], "ess": [], "pareto_k": []}
        bounds = {k: [] for k in self.group_sizes}
        bar = tqdm(total=plan.num_mine(), desc=f"log p(x), K={self.num_samples}", unit="pt",
                   disable=not progress)
        with torch.no_grad(), pyro.validation_enabled(False):  # validated once, up front (check_model_guide)
            for b in plan.mine:
                if plan.seeds is not None:
                    seed_minibatch(plan.seeds[b], data.device)
                index = plan.index(b)
                x = data[index]
                acc = self.log_weights(x, *slice_args(args, kwargs, plan.num_points, index))
                results["log_likelihood"].append(self._refuse_broken(acc.log_mean_exp(), index))
                for k in self.group_sizes:
                    bounds[k].append(acc.group_bound(k))
                if self.diagnostics:  # k-hat is fitted on the CPU (arviz): one transfer of the tail per batch
                    results["ess"].append(acc.ess())
                    results["pareto_k"].append(torch.from_numpy(acc.pareto_k()))
                bar.update(x.shape[0])
        bar.close()
        # to the CPU once, after the loop (one host read a minibatch: _refuse_broken; the k-hat tails)
        results = {key: [t.cpu() for t in values] for key, values in results.items()}
        bounds = {k: [t.cpu() for t in values] for k, values in bounds.items()}
        return results, bounds

    def _refuse_broken(self, estimate: torch.Tensor, index: slice) -> torch.Tensor:
        """``estimate`` ``(N_b,)``, after one host read: raise ``ValueError`` naming the datapoints
        whose weights are NaN or +inf (a distribution parameter outside its constraint on those rows,
        which Pyro's validation, off in this loop, would have reported) or whose class indices a
        compiled chunk found out of range."""
        broken = torch.isnan(estimate) | (estimate == math.inf)
        guard = self.compiled.take_guard() if self.compiled is not None else None
        any_broken, bad_index = torch.stack([broken.any(), broken.new_zeros(()) if guard is None
                                             else guard.to(broken.device)]).tolist()
        if bad_index:
            raise ValueError("a class index given to F.one_hot lies outside [0, num_classes) in the evaluated "
                             "data (labels out of range?)")
        if any_broken:
            rows = (torch.nonzero(broken).flatten() + index.start).tolist()
            raise ValueError(f"the importance weights of {len(rows)} datapoint(s) are NaN or +inf (rows {rows[:5]}): a "
                             "distribution parameter outside its constraint there (a scale of 0, a NaN from a net); "
                             "run the pair on those rows under pyro.validation_enabled(True) to see the site")
        return estimate

    def log_weights(self, x: torch.Tensor, args: tuple, kwargs: dict) -> StreamingLogWeights:
        """The ``num_samples`` log importance weights of the minibatch ``x`` ``(batch, ...)``,
        drawn in chunks and accumulated per datapoint."""
        chunk = particles_per_chunk(self.chunk_size, self.num_samples, x.shape[0], self.group_sizes)
        acc = StreamingLogWeights(self.group_sizes, self.tail_size)
        for done in range(0, self.num_samples, chunk):
            particles = min(chunk, self.num_samples - done)
            replayed = self.compiled(particles, x, args, kwargs) if self.compiled is not None else None
            if replayed is not None:  # recorded from an eager chunk of this shape, which was not subsampled
                acc.update(replayed)
                continue
            w = log_importance_weights(
                self.model, self.guide, x, *args, num_particles=particles,
                max_plate_nesting=self.nesting, data_plate=self.data_plate, enumerate=self.enumerate, **kwargs,
            )
            if w.subsampled:
                raise ValueError(
                    f"the plate {self.data_plate!r} is subsampled: per-datapoint log-likelihoods "
                    f"need every datapoint of the batch evaluated; declare "
                    f"pyro.plate({self.data_plate!r}, len(x)) and pass the datapoints as data"
                )
            acc.update(w.log_weights)
        return acc


def evaluate_elbo(model, guide, data: torch.Tensor, batch_size: int = 1000, *args, distributed: bool = False,
                  data_plate: str = "data", **kwargs) -> tuple[float, float]:
    """Mean and standard error over datapoints of a one-sample ELBO estimate (nats per datapoint).

    ``data``: ``(N, ...)``; ``args``/``kwargs`` as for :func:`estimate_log_likelihood`.
    ``distributed``: shard the minibatches over the ``torchrun`` processes (see
    :func:`estimate_log_likelihood`). ``data_plate``: the name of the pair's plate over datapoints.

    The same estimator as ``Trace_ELBO`` with one particle, per datapoint, unscaled: whatever
    objective a pair was trained with, this measures the same bound, so runs are comparable.
    Discrete guide sites marked for parallel enumeration enter with their exact expectation under
    ``q(y | x)``, as in ``TraceEnum_ELBO`` (the same bound, without the noise of sampling ``y``).
    A guide with a point mass (``Delta``) over a continuous latent (a WAE's deterministic encoder)
    has ``KL(q || p) = inf``: the ELBO is ``-inf``, returned (standard error 0) with a warning.
    """
    _check_sizes(1, batch_size, data)
    point_masses = point_mass_sites(*first_rows_sites(model, guide, data, args, kwargs, data_plate))
    if point_masses:
        warnings.warn(f"guide site {point_masses[0]!r} is a point mass (Delta) over a continuous latent: KL(q || p) "
                      f"is infinite and the ELBO is -inf (for a WAE: pyro_vae.objectives.wae.wae_metrics)", stacklevel=2)
        return -math.inf, 0.0
    options = _Options((), None, False, None, data_plate, False, distributed, enumerate="elbo")
    result = _estimate(model, guide, data, 1, batch_size, args, kwargs, options)
    return result.mean, result.stderr
