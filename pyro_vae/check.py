"""Check that a model/guide pair follows the contract, before any training or estimation.

:func:`check_model_guide` runs the guide once on a small batch, replays the model against it, and
raises :class:`ModelGuideError` naming the first broken rule and the site it concerns (the rules
are in :mod:`pyro_vae.models.base`). The trainer and the estimators call it first, so a user meets
one clear message instead of a traceback from deep inside Pyro.
"""

from __future__ import annotations


import pyro
import torch
from pyro import poutine

from .importance import sample_sites
from .pyro_internals import strip_trace_shapes

__all__ = ["ModelGuideError", "check_model_guide"]


class ModelGuideError(ValueError):
    """A model/guide pair breaks the contract; the message names the rule and the site."""


def _slice(value, batch: int, num_points: int):
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == num_points:
        return value[:batch]
    return value


def _data_plate_size(site, data_plate: str):
    for frame in site["cond_indep_stack"]:
        if frame.name == data_plate:
            return frame.size
    return None


def _name(fn) -> str:
    """The distribution's own name, through Independent/Expanded/Masked wrappers."""
    while hasattr(fn, "base_dist") and type(fn).__name__ in ("Independent", "ExpandedDistribution",
                                                              "MaskedDistribution"):
        fn = fn.base_dist
    return type(fn).__name__


def _run(fn, role: str, *args, **kwargs):
    try:
        return poutine.trace(fn).get_trace(*args, **kwargs)
    except ModelGuideError:
        raise
    except (ValueError, RuntimeError, TypeError, IndexError, KeyError) as e:
        message = strip_trace_shapes(str(e))  # Pyro appends a shape table to errors
        raise ModelGuideError(f"the {role} raised {type(e).__name__} on a batch of "
                              f"{args[0].shape[0]} datapoints: {message}") from e


def check_model_guide(model, guide, data: torch.Tensor, *args, elbo: str | None = None, batch_size: int = 8,
                      data_plate: str = "data", **kwargs) -> None:
    """Run ``guide`` and ``model`` once on the first ``batch_size`` rows of ``data`` and check the
    contract; return ``None`` when the pair conforms.

    Args:
        model, guide: the pair, called as ``fn(x, *args, **kwargs)``.
        data: ``(N, D)`` data. The pair runs on the first ``batch_size`` rows; every row is
            checked against the support of the observed site. Tensor arguments in
            ``args``/``kwargs`` whose first dimension is ``N`` are sliced with it (labels).
        elbo: the objective the pair will be trained with; ``"iwae"`` also requires every guide
            site to be reparameterizable.
        batch_size: rows used for the check (at least 2, so that a plate of the wrong size shows).
        data_plate: name of the plate over datapoints.

    Raises:
        ModelGuideError: naming the problem and the site: a model or guide that fails to run on
            the batch; a missing data plate or one whose size differs from the batch; a latent
            site in one function but not the other; batch or event shapes that differ between
            model and guide; a guide draw outside the model's support; a site that is not
            reparameterizable under ``iwae``; no observed site; observations outside the
            support of the model's likelihood (e.g. grey pixels under a Bernoulli); a log-density
            that is not finite.
    """
    _check_data(data)
    _check_call_signature(model, data)
    batch = min(max(batch_size, 2), data.shape[0])
    guide_trace, model_trace = _run_pair(model, guide, data, batch, args, kwargs)
    guide_sites = dict(sample_sites(guide_trace))
    observed = dict(sample_sites(model_trace, observed=True))
    latent = dict(sample_sites(model_trace, observed=False))
    _check_observed_site_exists(observed)
    _check_data_plate(guide_sites, {**latent, **observed}, data_plate, batch)
    _check_same_latent_sites(latent, guide_sites, observed)
    for name, site in guide_sites.items():
        _check_latent_site(name, site, latent[name], elbo)
    for name, site in observed.items():
        _check_observations(name, site, data)
    _check_finite_log_densities(guide_trace, model_trace)


def _check_data(data) -> None:
    """``data`` is a non-empty ``(num_datapoints, ...)`` tensor."""
    if not isinstance(data, torch.Tensor) or data.dim() < 2:
        got = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise ModelGuideError(f"data must be a (num_datapoints, ...) tensor, got {got}")
    if data.shape[0] == 0:
        raise ModelGuideError("data is empty")


def _check_call_signature(model, data: torch.Tensor) -> None:
    """Call signature: a shipped pair (a ``PairModule``) says what ``x`` it takes."""
    check_input = getattr(getattr(model, "__self__", None), "check_input", None)
    if callable(check_input):
        try:
            check_input(data)
        except ValueError as e:
            raise ModelGuideError(str(e)) from e


def _run_pair(model, guide, data: torch.Tensor, batch: int, args, kwargs):
    """Traces of the guide and of the model replayed against it on the first ``batch`` rows,
    with tensor arguments sliced along; the global RNG state is left as it was."""
    num_points = data.shape[0]
    x = data[:batch]
    args = tuple(_slice(a, batch, num_points) for a in args)
    kwargs = {k: _slice(v, batch, num_points) for k, v in kwargs.items()}
    # Pyro's own argument validation is off here so that the support checks below give the message
    rng = torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else [])
    with poutine.block(), rng, pyro.validation_enabled(False):
        guide_trace = _run(guide, "guide", x, *args, **kwargs)
        model_trace = _run(poutine.replay(model, trace=guide_trace), "model", x, *args, **kwargs)
    return guide_trace, model_trace


def _check_observed_site_exists(observed: dict) -> None:
    """Observed site: the model has at least one."""
    if not observed:
        raise ModelGuideError("the model has no observed site: call pyro.sample(name, likelihood, obs=x)")


def _check_data_plate(guide_sites: dict, model_sites: dict, data_plate: str, batch: int) -> None:
    """The data plate: every site lies inside it, and its size is the batch's."""
    # the guide first: replay copies the guide's plate sizes into the model
    for role, sites in (("guide", guide_sites), ("model", model_sites)):
        for name, site in sites.items():
            size = _data_plate_size(site, data_plate)
            if size is None:
                raise ModelGuideError(
                    f"{role} site {name!r} is not inside pyro.plate({data_plate!r}, batch): every "
                    "site of a datapoint must be, so that estimates stay per datapoint")
            if size != batch:
                raise ModelGuideError(
                    f"{role} site {name!r}: plate {data_plate!r} has size {size} but the batch has "
                    f"{batch} datapoints; declare pyro.plate({data_plate!r}, x.shape[0])")


def _check_same_latent_sites(latent: dict, guide_sites: dict, observed: dict) -> None:
    """Latent sites: the guide samples exactly the model's unobserved sites."""
    for name in latent.keys() - guide_sites.keys():
        raise ModelGuideError(f"latent site {name!r} of the model has no site in the guide")
    for name in guide_sites.keys() - latent.keys():
        where = "is observed in the model" if name in observed else "is not in the model"
        raise ModelGuideError(f"guide site {name!r} {where}; the guide must sample exactly the model's "
                              "latent sites")


def _check_latent_site(name: str, g: dict, m: dict, elbo: str | None) -> None:
    """Latent sites: same batch and event shapes in guide ``g`` and model ``m``, guide draws in
    the model's support, and ``rsample`` under ``iwae``."""
    for what in ("batch_shape", "event_shape"):
        gs, ms = getattr(g["fn"], what), getattr(m["fn"], what)
        if tuple(gs) != tuple(ms):
            raise ModelGuideError(f"site {name!r}: the guide's {what} {tuple(gs)} differs from the "
                                  f"model's {tuple(ms)}")
    if not bool(m["fn"].support.check(g["value"]).all()):
        raise ModelGuideError(f"site {name!r}: the guide draws values outside the support of the "
                              f"model's {_name(m['fn'])} distribution")
    if elbo == "iwae" and not g["fn"].has_rsample:
        raise ModelGuideError(f"guide site {name!r} ({_name(g['fn'])}) is not reparameterizable, "
                              "but the iwae objective needs rsample()")


def _check_observations(name: str, site: dict, data: torch.Tensor) -> None:
    """Observed site: every datapoint is finite and inside the support of the likelihood."""
    # the support does not depend on parameters: check every datapoint, not only the batch
    values = data if tuple(site["value"].shape[-data.dim() + 1:]) == tuple(data.shape[1:]) else site["value"]
    if values.is_floating_point():
        nonfinite = ~torch.isfinite(values).reshape(values.shape[0], -1).all(-1)
        if bool(nonfinite.any()):
            raise ModelGuideError(f"observed site {name!r}: {int(nonfinite.sum())} of {values.shape[0]} "
                                  "datapoints hold NaN or inf values; remove or repair them")
    inside = site["fn"].support.check(values)
    if not bool(inside.all()):
        bad = int((~inside).sum())
        raise ModelGuideError(
            f"observed site {name!r}: {bad} of {inside.numel()} datapoints lie outside the support of "
            f"{_name(site['fn'])}; e.g. grey pixels under a Bernoulli "
            "likelihood: binarize the data or choose a likelihood for grey levels")


def _check_finite_log_densities(guide_trace, model_trace) -> None:
    """Every sample site of guide and model has a finite log-density on the check batch."""
    for role, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in sample_sites(trace):
            log_prob = site["fn"].log_prob(site["value"])
            if not bool(torch.isfinite(log_prob).all()):
                raise ModelGuideError(f"{role} site {name!r}: log-density is not finite on the check batch")
