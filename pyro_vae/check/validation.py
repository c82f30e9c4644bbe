"""Pyro's validation, once and up front: the checks that training (which runs its steps with
``pyro.validation_enabled(False)`` for speed) and the estimators skip at every step.

* :func:`run_pair` traces the guide and the model replayed against it, as the trainer's steps do,
  and refuses a subsampled data plate (also when Pyro's shape checks made the run fail) and a model
  that failed after drawing a latent the guide does not sample (:mod:`~pyro_vae.check.idioms`);
* :func:`check_arguments` is torch's argument validation, site by site, so the error names the site;
* :func:`check_draws_in_bulk` draws many values from each guide site and refuses log-densities
  that are not finite there (draws at the edge of the support in the floating-point type, e.g.
  a relaxed categorical at a low temperature), which one draw per datapoint rarely shows;
* :func:`check_under_pyro_validation` runs Pyro's own trace checks (``check_site_shape``,
  ``check_model_guide_match``, sample validation) with validation on, turning Pyro's errors *and
  its warnings* into :class:`ModelGuideError`. Warnings from outside Pyro (the user's code, torch)
  are passed on unchanged, never dropped.
"""

from __future__ import annotations

import os
import warnings

import pyro
import pyro.infer
import torch
from pyro import poutine
from torch.distributions import constraints
from torch.distributions.utils import lazy_property

from ..importance import sample_sites
from ..pyro_internals import MessageHook, elbo_traces, strip_trace_shapes
from .errors import ModelGuideError
from .idioms import SiteRecorder, missing_latent_refusal, subsample_refusal
from .rules import distribution_name

__all__ = ["BULK_DRAWS", "boundary_hint", "check_arguments", "check_draws_in_bulk", "check_under_pyro_validation",
           "first_rows_sites", "run_pair"]

BULK_DRAWS = 2 ** 15
"""Draws per latent site in :func:`check_draws_in_bulk` (fewer for wide sites): a failure rate of
``3e-4`` per draw (a relaxed categorical at temperature 0.1) shows with probability ``1 - e^-10``."""

_ENUM_HINT = ("; under enumeration a site marked for it takes all its values at once, shape (C, 1, ..., 1) "
              "left of the plates: code that uses its value must broadcast (index with pyro.ops.indexing.Vindex, "
              "no .view/.reshape over the batch)")
_ERRORS = (ValueError, RuntimeError, TypeError, IndexError, KeyError, NotImplementedError, AssertionError)
_PYRO_DIR = os.path.dirname(pyro.__file__)


def _rng(x: torch.Tensor):
    return torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else [])


def _run(fn, role: str, x, args, kwargs):
    try:
        return poutine.trace(fn).get_trace(x, *args, **kwargs)
    except ModelGuideError:
        raise
    except _ERRORS as e:
        message = strip_trace_shapes(str(e))  # Pyro appends a shape table to errors
        raise ModelGuideError(f"the {role} raised {type(e).__name__} on a batch of {x.shape[0]} datapoints: "
                              f"{message}") from e


def run_pair(model, guide, x: torch.Tensor, args: tuple, kwargs: dict, data_plate: str = "data"):
    """``(guide_trace, model_trace)`` of one run on the batch ``x``, with validation off as in the
    trainer's steps (the checks here then give the messages); the RNG state is left as it was.
    A subsampled plate ``data_plate`` is refused first (also when it made the run fail), then a
    model that failed after drawing a latent the guide does not sample (a ``PyroSample`` weight)."""
    guide_log, model_log = SiteRecorder(), SiteRecorder()
    guide_trace = None
    try:
        with poutine.block(), _rng(x), pyro.validation_enabled(False):
            with MessageHook(guide_log):
                guide_trace = _run(guide, "guide", x, args, kwargs)
            with MessageHook(model_log):
                model_trace = _run(poutine.replay(model, trace=guide_trace), "model", x, args, kwargs)
    except ModelGuideError as e:
        _refuse_idiom(guide_log, model_log, guide_trace, data_plate, e.__cause__ or e)
        raise
    _refuse_idiom(guide_log, model_log, guide_trace, data_plate, None)
    return guide_trace, model_trace


def first_rows_sites(model, guide, data: torch.Tensor, args: tuple, kwargs: dict, data_plate: str = "data",
                     rows: int = 8) -> tuple[dict, dict]:
    """``(guide sites, model latent sites)``, ``{name: site}``, of :func:`run_pair` on the first
    ``rows`` datapoints of ``data`` (tensor arguments with one row per datapoint cut with it), as
    the estimators read them before they start (the RNG state is left as it was)."""
    n = data.shape[0]
    cut = lambda v: v[:rows] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
    guide_trace, model_trace = run_pair(model, guide, data[:rows], tuple(cut(a) for a in args),
                                        {k: cut(v) for k, v in kwargs.items()}, data_plate)
    return dict(sample_sites(guide_trace)), dict(sample_sites(model_trace, observed=False))


def _refuse_idiom(guide_log, model_log, guide_trace, data_plate: str, error) -> None:
    for log in (guide_log, model_log):
        subsampled = log.subsampled(data_plate)
        if subsampled is not None:
            raise subsample_refusal(data_plate, *subsampled) from error
    if error is not None and guide_trace is not None:
        refusal = missing_latent_refusal(model_log, guide_trace.nodes, data_plate,
                                         strip_trace_shapes(str(error)).splitlines()[0])
        if refusal is not None:
            raise refusal from error


def _invalid_arguments(fn):
    """``(distribution, parameter, constraint)`` of the first parameter outside its constraint,
    through wrappers (Independent, Expanded, Masked, Transformed), as torch checks under validation."""
    while fn is not None:
        try:
            arg_constraints = fn.arg_constraints
        except NotImplementedError:
            arg_constraints = {}
        for param, constraint in arg_constraints.items():
            if constraints.is_dependent(constraint):
                continue
            if param not in fn.__dict__ and isinstance(getattr(type(fn), param, None), lazy_property):
                continue  # probs/logits: only the one the user gave is stored
            value = getattr(fn, param, None)
            if isinstance(value, torch.Tensor) and not bool(constraint.check(value).all()):
                return fn, param, constraint
        fn = getattr(fn, "base_dist", None)
    return None


def check_arguments(sites) -> None:
    """Every distribution's parameters lie inside their constraints (torch's argument validation,
    which Pyro turns off with validation); ``sites`` holds ``(role, name, site)``."""
    for role, name, site in sites:
        found = _invalid_arguments(site["fn"])
        if found is not None:
            fn, param, constraint = found
            raise ModelGuideError(
                f"{role} site {name!r}: parameter {param!r} of {type(fn).__name__} lies outside its constraint "
                f"{constraint} for some datapoints; with validation on torch refuses it, with validation off "
                f"(training) the log-density is meaningless. Map the parameter into its domain (e.g. "
                f"softplus/exp for a positive one, or pyro.param(..., constraint=constraints.positive))")


def boundary_hint(fn, dtype: torch.dtype) -> str:
    """The likely cause when draws of ``fn`` (in ``dtype``) sit on the edge of a support, and the way out."""
    base = fn
    while not hasattr(base, "temperature") and hasattr(base, "base_dist"):
        base = base.base_dist
    temperature = getattr(base, "temperature", None)
    if temperature is not None:
        t = float(torch.as_tensor(temperature).min())
        return (f"at temperature {t:g} the relaxed draws lie so close to the corners of the simplex that "
                f"{str(dtype).replace('torch.', '')} cannot hold them inside it (components underflow to 0, "
                f"where the density is not finite, or sum to 1 only within rounding); raise the temperature "
                f"(e.g. >= 0.3), work in float64, or sample the latent in log space (ExpRelaxedCategorical)")
    return (f"draws reach the edge of the support in {str(dtype).replace('torch.', '')}; narrow the guide, "
            "reparameterize the site, or work in float64")


def check_draws_in_bulk(pairs, batch: int) -> None:
    """For each latent site ``(name, guide site, model site)`` in ``pairs``: the log-densities of
    guide and model are finite at :data:`BULK_DRAWS` draws from the guide's distribution (the one
    of the check run, so no network runs again)."""
    for name, g, m in pairs:
        draws = max(1, min(BULK_DRAWS // max(batch, 1), 2 ** 22 // max(g["value"].numel(), 1)))
        try:
            with torch.no_grad(), _rng(g["value"]):  # the caller's RNG state stays as it was
                z = g["fn"].sample((draws,))
                log_q, log_p = g["fn"].log_prob(z), m["fn"].log_prob(z)
        except ValueError as e:  # a distribution built with validate_args=True: a draw failed the support check
            raise ModelGuideError(f"site {name!r}: a draw from the guide fails the support check of the model's "
                                  f"{distribution_name(m['fn'])}: {str(e).splitlines()[0]}; "
                                  f"{boundary_hint(g['fn'], g['value'].dtype)}") from e
        except (NotImplementedError, RuntimeError, TypeError):
            continue  # a distribution that cannot draw a sample shape: the one-draw checks stand
        bad = ~(torch.isfinite(log_q) & torch.isfinite(log_p))
        if bool(bad.any()):
            raise ModelGuideError(
                f"site {name!r}: at {int(bad.sum())} of {bad.numel()} draws from the guide's "
                f"{distribution_name(g['fn'])} the log-density of the guide or of the model is not finite: "
                f"{boundary_hint(g['fn'], g['value'].dtype)}")


def check_under_pyro_validation(model, guide, x: torch.Tensor, args: tuple, kwargs: dict,
                                max_plate_nesting: int, enum: bool = False) -> None:
    """The pair under ``pyro.validation_enabled(True)`` (torch's argument and sample checks), then
    Pyro's ``Trace_ELBO`` trace preparation on the batch (its shape and site checks) with one
    vectorized particle as in training, ``TraceEnum_ELBO``'s with ``enum`` (enumerated sites
    take all their values, in dims left of the particle plate); Pyro's errors and warnings become
    :class:`ModelGuideError`, other warnings are re-issued."""
    if enum:
        elbo = pyro.infer.TraceEnum_ELBO(vectorize_particles=True, max_plate_nesting=max_plate_nesting,
                                         strict_enumeration_warning=False)
    else:
        elbo = pyro.infer.Trace_ELBO(vectorize_particles=True, max_plate_nesting=max_plate_nesting)
    with warnings.catch_warnings(record=True) as caught, poutine.block(), _rng(x), pyro.validation_enabled(True):
        warnings.simplefilter("always")
        guide_trace = _run(guide, "guide (under Pyro's validation, which training turns off)", x, args, kwargs)
        _run(poutine.replay(model, trace=guide_trace), "model (under Pyro's validation, which training turns off)",
             x, args, kwargs)
        try:
            for _ in elbo_traces(elbo, model, guide, (x, *args), kwargs):
                pass
        except ModelGuideError:
            raise
        except _ERRORS as e:
            hint = _ENUM_HINT if enum else ""
            raise ModelGuideError(f"under Pyro's validation (which training turns off for speed) the pair "
                                  f"fails: {strip_trace_shapes(str(e))}{hint}") from e
    for w in caught:
        if not os.path.abspath(w.filename).startswith(_PYRO_DIR):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    pyro_warnings = [w for w in caught if os.path.abspath(w.filename).startswith(_PYRO_DIR)]
    if pyro_warnings:
        raise ModelGuideError(f"under Pyro's validation (which training turns off for speed) Pyro warns: "
                              f"{pyro_warnings[0].message}")
