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

**Enumeration.** With ``enumerate="sum"`` or ``"elbo"`` the guide runs under ``poutine.enum``: a
discrete guide site marked for parallel enumeration (``@config_enumerate``,
``infer={"enumerate": "parallel"}``) takes every value of its support along a dim to the left of
the particle plate instead of a draw. ``"sum"`` then adds ``p(x, y, z)/q(z | x, y)`` over those
values, so the weight marginalizes ``y`` exactly, ``log w = log sum_y p(x, y, z_y) / q(z_y | x, y)``
(``q(y | x)`` cancels: unbiased whatever the classifier); ``"elbo"`` takes the expectation
``sum_y q(y | x) [log p(x, y, z_y) - log q(y | x) - log q(z_y | x, y)]`` (``TraceEnum_ELBO``'s).
Rows where the site is masked out average over its values. Other sites are sampled as usual.

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

__all__ = ["ENUMERATE_MODES", "LogWeights", "guess_max_plate_nesting", "is_enumerated", "log_importance_weights",
           "plate_nesting", "sample_sites"]

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


ENUMERATE_MODES = (None, "sum", "elbo")


def is_enumerated(site) -> bool:
    """Whether a sample site is marked for parallel enumeration (``config_enumerate`` or
    ``infer={"enumerate": "parallel"}``)."""
    return site["infer"].get("enumerate") == "parallel"


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


def _per_datapoint(log_prob: torch.Tensor, plate_dims: int, data_dim: int, enum_dims: int) -> torch.Tensor:
    """Sum a site's log-density over every plate dim except the data plate's: ``(*enum, K, B)``
    (sizes 1 where it does not vary); ``plate_dims`` counts the particle plate and the pair's."""
    if log_prob.dim() > plate_dims + enum_dims:
        raise ValueError(f"a log-density has {log_prob.dim()} batch dims, more than the {plate_dims - 1} that the "
                         "plates declare (plus particles and enumeration); is max_plate_nesting too small?")
    log_prob = log_prob.reshape((1,) * (plate_dims - log_prob.dim()) + log_prob.shape)
    others = [d for d in range(-plate_dims + 1, 0) if d != data_dim]
    if others:
        log_prob = log_prob.sum(others, keepdim=True)
    return log_prob.reshape(log_prob.shape[: log_prob.dim() - plate_dims + 1] + (log_prob.shape[data_dim],))


def log_importance_weights(
    model,
    guide,
    *args,
    num_particles: int,
    max_plate_nesting: int,
    data_plate: str = "data",
    require_reparam: bool = False,
    enumerate: str | None = None,
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
        enumerate: ``None`` samples every site (enumeration marks ignored); ``"sum"`` sums
            enumerated guide sites out of each weight, ``"elbo"`` takes the ELBO's expectation
            over them (see the module docstring); without enumerated sites both are ``None``.

    Raises:
        ValueError: the sites of model and guide do not match, a site lies outside the data
            plate, an enumerated site lies in a plate nested in it, or (with
            ``require_reparam``) a guide site has no ``rsample``.
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    if enumerate not in ENUMERATE_MODES:
        raise ValueError(f"enumerate must be one of {ENUMERATE_MODES}, got {enumerate!r}")
    model_trace, guide_trace = _trace_particles(model, guide, args, kwargs, num_particles, max_plate_nesting,
                                                enumerate is not None)
    _check_sites_match(model_trace, guide_trace)
    log_w, log_q_enum, scales, subsampled, batch = _sum_log_weights(
        model_trace, guide_trace, max_plate_nesting + 1, data_plate, require_reparam, enumerate is not None
    )
    if log_w is None:
        raise ValueError("the model has no sample sites")
    log_w = log_w.expand(log_w.shape[:-2] + (num_particles, batch))
    return LogWeights(_reduce_enumerated(log_w, log_q_enum, enumerate), _common_scale(scales), subsampled)


def _reduce_enumerated(log_w: torch.Tensor, log_q_enum, mode: str | None) -> torch.Tensor:
    """``(*enum, K, B)`` log weights of every enumerated value to ``(K, B)``: their ``logsumexp``
    (``"sum"``) or the expectation of ``log w - log q(y)`` under ``q(y)`` (``"elbo"``). A row where
    an enumerated site is masked out (``log_q_enum = (masked, unmasked)`` log q) takes the
    ``q``-weighted average over the values instead, as Pyro's Dice weights do."""
    enum_dims = list(range(log_w.dim() - 2))
    if not enum_dims:
        return log_w
    masked, unmasked = log_q_enum
    if mode == "sum":  # unmasked rows: masked == unmasked, a plain sum over the values
        return torch.logsumexp(log_w + (unmasked - masked), dim=enum_dims)
    q = unmasked.exp().expand(log_w.shape)  # q(y | x) of every enumerated value: sums to 1
    return (q * log_w - torch.special.xlogy(q, masked.exp())).sum(enum_dims)


def _trace_particles(model, guide, args, kwargs, num_particles: int, max_plate_nesting: int, enum: bool):
    """``(model_trace, guide_trace)``: the guide run with ``K`` particles in an outer plate (and its
    parallel-enumerated sites enumerated left of it when ``enum``), the model replayed against it."""
    guide = _vectorize(guide, num_particles, max_plate_nesting)
    if enum:
        guide = poutine.enum(guide, first_available_dim=-(max_plate_nesting + 2))
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(
        poutine.replay(_vectorize(model, num_particles, max_plate_nesting), trace=guide_trace)
    ).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def _sum_log_weights(model_trace, guide_trace, plate_dims, data_plate, require_reparam, enum):
    """``(log_w, log_q_enum, scales, subsampled, batch)``: the ``(*enum, K, B)`` sum of the model's
    log-densities minus the sampled guide sites' (``None`` without sites), the sum of the
    enumerated guide sites' log-densities with and without their masks (0.0 without), every
    site's scale, and whether the data plate is subsampled, and the data plate's size."""
    log_w, log_q_enum, log_q_unmasked, scales, subsampled = None, 0.0, 0.0, [], False
    enumerated = {name for name, site in sample_sites(guide_trace, observed=False) if enum and is_enumerated(site)}
    for sign, trace, observed in ((1.0, model_trace, None), (-1.0, guide_trace, False)):
        for name, site in sample_sites(trace, observed=observed):
            frame = _data_frame(name, site, data_plate)
            subsampled = subsampled or (frame.full_size is not None and frame.full_size != frame.size)
            if name in enumerated:
                _check_enumerated_plates(name, site, data_plate)
            elif require_reparam and sign < 0:
                _check_reparameterized(name, site)
            lp = scale_and_mask(_log_prob(name, site, sign), 1.0, site["mask"])  # unscaled
            lp = _per_datapoint(lp, plate_dims, frame.dim, len(enumerated))
            if sign < 0 and name in enumerated:
                log_q_enum = log_q_enum + lp
                log_q_unmasked = log_q_unmasked + _per_datapoint(_log_prob(name, site, sign), plate_dims, frame.dim,
                                                                 len(enumerated))
            else:
                log_w = sign * lp if log_w is None else log_w + sign * lp
            scales.append(site["scale"])
    return log_w, (log_q_enum, log_q_unmasked), scales, subsampled, frame.size if log_w is not None else 0


def _check_enumerated_plates(name: str, site, data_plate: str) -> None:
    nested = [f.name for f in site["cond_indep_stack"] if f.vectorized and f.name not in (data_plate, PARTICLE_PLATE)]
    if nested:
        raise ValueError(
            f"enumerated site {name!r} lies in plate(s) {nested} nested in {data_plate!r}: per-datapoint "
            f"weights sum enumerated values once per datapoint; enumerate only sites directly in "
            f"pyro.plate({data_plate!r}), or sample this one (infer={{'enumerate': None}})"
        )


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
        raise ValueError(f"guide site {name!r} ({type(site['fn']).__name__}) is not reparameterizable; "
                         "this objective needs reparameterized guide samples")


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
