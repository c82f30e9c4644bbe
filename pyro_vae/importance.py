"""Per-datapoint importance weights of a model/guide pair, with particles vectorized.

For a batch ``x_1..x_B`` and ``K`` draws ``z_k ~ q(z | x)`` from the guide, this module
computes the matrix of log importance weights

    log w[k, n] = log p(x_n, z_kn) - log q(z_kn | x_n)           (nats)

keeping the *data* dimension: every site's log-density is summed over its event and over every
plate except the particle plate and the data plate, so no datapoint's weight mixes with
another's. (``pyro.infer.Importance`` and ``vectorized_importance_weights`` sum over all
plates, which on a batch gives the weight of the whole batch jointly.)

The log-densities are *unscaled*: ``poutine.scale`` and plate subsampling factors are reported
separately (:attr:`LogWeights.scale`), so that objectives can apply them after the per-datapoint
``logsumexp`` — the place where Pyro's ``RenyiELBO`` goes wrong.

Everything else in the package that needs ``log p(x, z) - log q(z | x)`` per datapoint (the
IWAE objective, the test ELBO, :func:`pyro_vae.estimate_log_likelihood`) calls
:func:`log_importance_weights`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine

from .pyro_internals import is_deterministic, scale_and_mask, site_is_subsample

__all__ = ["LogWeights", "guess_max_plate_nesting", "log_importance_weights", "plate_nesting", "sample_sites"]

PARTICLE_PLATE = "_pyro_vae_particles"


@dataclass
class LogWeights:
    """Result of :func:`log_importance_weights`.

    Attributes:
        log_weights: ``(K, B)`` tensor, ``log p(x_n, z_kn) - log q(z_kn | x_n)`` in nats, unscaled.
        scale: the factor that ``poutine.scale`` and plate subsampling put on every site of a
            datapoint (1.0 when neither is used). ``None`` when sites carry different scales
            (e.g. a KL weight on the latent only), in which case no single per-datapoint bound
            can be scaled consistently.
        subsampled: whether the data plate is subsampled (``plate(size=N, subsample_size=B)``).
    """

    log_weights: torch.Tensor
    scale: float | torch.Tensor | None
    subsampled: bool


def _vectorize(fn, num_particles: int, max_plate_nesting: int):
    def vectorized(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1)):
            return fn(*args, **kwargs)

    return vectorized


def sample_sites(trace, observed: bool | None = None):
    """``(name, site)`` of the trace's sample sites, without plates' subsample sites and
    deterministic sites; ``observed`` filters on ``is_observed`` when given."""
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if is_deterministic(site):
            continue
        if observed is not None and site["is_observed"] != observed:
            continue
        yield name, site


def guess_max_plate_nesting(model, guide, *args, **kwargs) -> int:
    """Number of batch dimensions the pair's plates use (runs guide and model once, no particles)."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return plate_nesting(guide_trace, model_trace)


def plate_nesting(*traces) -> int:
    """Number of batch dimensions the plates of the sample sites in ``traces`` use."""
    dims = [-frame.dim for trace in traces for _, site in sample_sites(trace)
            for frame in site["cond_indep_stack"] if frame.vectorized]
    return max(dims, default=0)


def _check_sites_match(model_trace, guide_trace) -> None:
    guide_latents = {name for name, _ in sample_sites(guide_trace, observed=False)}
    model_latents = {name for name, _ in sample_sites(model_trace, observed=False)}
    model_all = {name for name, _ in sample_sites(model_trace)}
    if guide_latents - model_all:
        raise ValueError(
            f"guide samples site(s) {sorted(guide_latents - model_all)} that the model does not have"
        )
    if model_latents - guide_latents:
        raise ValueError(
            f"model has latent site(s) {sorted(model_latents - guide_latents)} that the guide "
            "does not sample; a guide must sample every latent site of the model"
        )


def _data_frame(site_name: str, site, data_plate: str):
    for frame in site["cond_indep_stack"]:
        if frame.name == data_plate:
            return frame
    raise ValueError(
        f"site {site_name!r} is outside the plate {data_plate!r}: per-datapoint importance "
        f"weights need every latent and observed site inside pyro.plate({data_plate!r}, batch_size)"
    )


def _per_datapoint(log_prob: torch.Tensor, total_dims: int, data_dim: int, shape) -> torch.Tensor:
    """Sum a site's log-density over every batch dim except particles (first) and data."""
    if log_prob.dim() > total_dims:
        raise ValueError(
            f"a log-density has {log_prob.dim()} batch dims, more than the {total_dims} that the "
            "plates declare; is max_plate_nesting too small?"
        )
    log_prob = log_prob.reshape((1,) * (total_dims - log_prob.dim()) + log_prob.shape)
    keep = (0, total_dims + data_dim)
    others = [d for d in range(total_dims) if d not in keep]
    if others:
        log_prob = log_prob.sum(others)
    return log_prob.expand(shape)


def log_importance_weights(
    model,
    guide,
    *args,
    num_particles: int,
    max_plate_nesting: int,
    data_plate: str = "data",
    require_reparam: bool = False,
    **kwargs,
) -> LogWeights:
    """Draw ``num_particles`` guide samples per datapoint and return the ``(K, B)`` log weights.

    Args:
        model, guide: a conforming pair (see :mod:`pyro_vae.models`); called as
            ``fn(*args, **kwargs)``.
        num_particles: ``K``, vectorized in an outer plate.
        max_plate_nesting: batch dims used by the pair's own plates
            (:func:`guess_max_plate_nesting`).
        data_plate: name of the plate over datapoints.
        require_reparam: raise if a guide site cannot be reparameterized (objectives that
            differentiate through the samples need this).

    Raises:
        ValueError: the sites of model and guide do not match, a site lies outside the data
            plate, or (with ``require_reparam``) a guide site has no ``rsample``.
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    model_trace, guide_trace = _trace_particles(model, guide, args, kwargs, num_particles, max_plate_nesting)
    _check_sites_match(model_trace, guide_trace)
    log_w, scales, subsampled = _sum_log_weights(
        model_trace, guide_trace, num_particles, max_plate_nesting + 1, data_plate, require_reparam
    )
    if log_w is None:
        raise ValueError("the model has no sample sites")
    return LogWeights(log_w, _common_scale(scales), subsampled)


def _trace_particles(model, guide, args, kwargs, num_particles: int, max_plate_nesting: int):
    """``(model_trace, guide_trace)``: the guide run with ``K`` particles in an outer plate, the
    model replayed against its draws."""
    guide_trace = poutine.trace(_vectorize(guide, num_particles, max_plate_nesting)).get_trace(
        *args, **kwargs
    )
    model_trace = poutine.trace(
        poutine.replay(_vectorize(model, num_particles, max_plate_nesting), trace=guide_trace)
    ).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def _sum_log_weights(model_trace, guide_trace, num_particles, total_dims, data_plate, require_reparam):
    """``(log_w, scales, subsampled)``: the ``(K, B)`` sum of the model's log-densities minus the
    guide's (``None`` without sites), every site's scale, and whether the data plate is subsampled."""
    log_w, scales, subsampled, shape = None, [], False, None
    for sign, trace, observed in ((1.0, model_trace, None), (-1.0, guide_trace, False)):
        for name, site in sample_sites(trace, observed=observed):
            frame = _data_frame(name, site, data_plate)
            subsampled = subsampled or (frame.full_size is not None and frame.full_size != frame.size)
            if shape is None:
                shape = (num_particles, frame.size)
            if require_reparam and sign < 0:
                _check_reparameterized(name, site)
            lp = scale_and_mask(_log_prob(name, site, sign), 1.0, site["mask"])  # unscaled
            lp = _per_datapoint(lp, total_dims, frame.dim, shape)
            log_w = sign * lp if log_w is None else log_w + sign * lp
            scales.append(site["scale"])
    return log_w, scales, subsampled


def _log_prob(name: str, site, sign: float) -> torch.Tensor:
    """The site's log-density at its value; a draw that fails torch's support check (validation on)
    raises :class:`~pyro_vae.ModelGuideError` naming the site and the likely cause."""
    try:
        return site["fn"].log_prob(site["value"])
    except ValueError as e:
        if "support" not in str(e):
            raise
        from .check.errors import ModelGuideError  # here: the check package imports this module
        from .check.validation import boundary_hint

        first_line = str(e).splitlines()[0]
        if site["is_observed"]:
            raise ModelGuideError(f"observed site {name!r}: a value fails the support check of "
                                  f"{type(site['fn']).__name__} ({first_line})") from e
        role = "model" if sign > 0 else "guide"
        raise ModelGuideError(f"{role} site {name!r}: a guide draw fails the support check of the {role}'s "
                              f"{type(site['fn']).__name__} ({first_line}); "
                              f"{boundary_hint(site['fn'], site['value'].dtype)}") from e


def _check_reparameterized(name: str, site) -> None:
    if not site["fn"].has_rsample:
        raise ValueError(
            f"guide site {name!r} ({type(site['fn']).__name__}) is not reparameterizable; "
            "this objective needs reparameterized guide samples"
        )


def _common_scale(scales: list):
    """The scale shared by all sites, or ``None`` when they differ."""
    scale = scales[0]
    if any(s is not scale and not _same_scale(s, scale) for s in scales[1:]):
        return None
    return scale


def _same_scale(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return math.isclose(a, b, rel_tol=1e-12)
