"""Reading a model for :class:`~pyro_vae.autoguide.AutoAmortizedNormal`: one trace of it on an
example batch gives its latent sites inside the data plate, in sampling order, with their shapes,
supports and scales (:func:`latent_sites`), or a ``ValueError`` that names a site the autoguide
cannot serve and the way out."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from torch.distributions import biject_to, constraints, transforms

from ..importance import sample_sites

__all__ = ["LatentSite", "check_constant_scales", "latent_sites", "refusal", "trace_model"]


@dataclass(frozen=True)
class LatentSite:
    """A latent site as the guide samples it: ``name``, ``event_shape`` per datapoint, the event shape on the
    unconstrained space (``(K - 1,)`` for a ``K``-simplex), ``transform = biject_to(support)`` (``None`` on the
    reals), and the model's ``poutine.scale`` on it (beta), which the guide repeats."""

    name: str
    event_shape: torch.Size
    unconstrained_shape: torch.Size
    transform: transforms.Transform | None
    scale: float


def _is_identity(transform) -> bool:
    while isinstance(transform, transforms.IndependentTransform):
        transform = transform.base_transform
    return transform == transforms.identity_transform


def _bounds_vary(support, event_dim: int) -> bool:
    """Whether the bounds of ``support`` (an interval, ``greater_than``, ...) have batch dims."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    bounds = (getattr(support, "lower_bound", None), getattr(support, "upper_bound", None))
    return any(torch.is_tensor(b) and b.dim() > event_dim for b in bounds)


def trace_model(model, x: torch.Tensor, *args, **kwargs) -> poutine.Trace:
    """One trace of ``model(x, *args, **kwargs)``, without gradients, hidden from outer effect
    handlers, with torch's, numpy's and Python's RNG states restored afterwards and Pyro's param
    store left as it was (entries the run added, e.g. by the model's ``pyro.module`` calls, are
    removed: the model registers them again at its next call, from its own modules)."""
    store, states = pyro.get_param_store(), (random.getstate(), np.random.get_state())
    before = set(store.keys())
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad(), \
                poutine.block():
            return poutine.trace(model).get_trace(x, *args, **kwargs)
    finally:
        for name in set(store.keys()) - before:
            del store[name]
        random.setstate(states[0]), np.random.set_state(states[1])


def refusal(name: str, why: str, way_out: str = "write the guide by hand") -> ValueError:
    return ValueError(f"AutoAmortizedNormal: latent site {name!r} {why}; {way_out}")


def _latent_site(name: str, site: dict, data_plate: str, batch: int) -> LatentSite:
    """The :class:`LatentSite` of model site ``site``, or a ``ValueError`` naming why it has none."""
    fn, frames = site["fn"], site["cond_indep_stack"]
    frame = next((f for f in frames if f.name == data_plate), None)
    if frame is None:
        raise refusal(name, f"lies outside pyro.plate({data_plate!r}, ...): a global latent, shared by all "
                      "datapoints, has no amortized posterior q(. | x_n) (and pyro-vae's per-datapoint ELBO and "
                      "estimators refuse it)", f"make it a parameter (pyro.param, a network weight), or move it "
                      f"inside pyro.plate({data_plate!r}, x.shape[0])")
    if len(frames) > 1:
        raise refusal(name, f"lies in plate(s) {[f.name for f in frames if f is not frame]} besides {data_plate!r}:"
                      " the autoguide amortizes one datapoint at a time", "declare the per-datapoint dims as event "
                      "dims (.to_event(n)) instead of a nested plate, or write the guide by hand")
    if fn.support.is_discrete:
        raise refusal(name, f"is discrete ({type(fn).__name__}, support {fn.support}): a Normal guide cannot "
                      "represent it", "sum it out by enumeration (a hand-written guide with config_enumerate "
                      "and elbo=\"enum\", as pyro_vae.SemiSupervisedVAE does), or write the guide by hand")
    if _bounds_vary(fn.support, len(fn.event_shape)):
        raise refusal(name, f"has a support whose bounds vary over the batch ({fn.support}): they depend on the "
                      "datapoint or on other latents, and the guide's map onto the support is built once")
    if frame.dim != -1 or tuple(fn.batch_shape) != (batch,):
        raise refusal(name, f"has batch shape {tuple(fn.batch_shape)} in plate {data_plate!r} (dim {frame.dim}); "
                      f"the autoguide needs ({batch},), the data plate at dim=-1 (the default)",
                      "declare the dims right of the data plate as event dims with .to_event(n)")
    try:
        transform = biject_to(fn.support)
    except NotImplementedError:
        raise refusal(name, f"has support {fn.support}, which torch cannot map from the reals (biject_to)") from None
    if torch.is_tensor(site["scale"]) and site["scale"].numel() != 1:
        raise refusal(name, "has a poutine.scale that varies over the batch")
    return LatentSite(name, fn.event_shape, transform.inverse_shape(fn.event_shape),
                      None if _is_identity(transform) else transform, float(site["scale"]))


def check_constant_scales(sites: list[LatentSite], model, x: torch.Tensor, args: tuple, named: dict,
                           data_plate: str) -> None:
    """The guide repeats each site's ``poutine.scale`` as a constant: refuse a scale that changes with
    the batch (e.g. ``N / B``), found by tracing the model once more on the first datapoint."""
    if x.shape[0] < 2:
        return
    first = lambda a: a[:1] if torch.is_tensor(a) and a.dim() > 0 and a.shape[0] == x.shape[0] else a  # noqa: E731
    again = latent_sites(trace_model(model, x[:1], *map(first, args), **{k: first(v) for k, v in named.items()}),
                         data_plate, 1)
    for site, other in zip(sites, again):
        if site.scale != other.scale:
            raise refusal(site.name, f"has a poutine.scale that changes with the batch size ({site.scale:g} on "
                          f"{x.shape[0]} datapoints, {other.scale:g} on 1)", "the guide repeats a constant scale: "
                          "scale by a constant (beta), or write the guide by hand")


def latent_sites(trace: poutine.Trace, data_plate: str, batch: int) -> list[LatentSite]:
    """The latent sites of a model ``trace`` in sampling order (``ValueError`` for one the
    autoguide cannot serve, naming it and the way out), checking that the model observes a site."""
    sites = list(sample_sites(trace))  # without plates' subsample sites and pyro.deterministic ones
    if not any(s["is_observed"] for _, s in sites):
        raise ValueError("AutoAmortizedNormal: the model observes no site on the example batch: call "
                         "pyro.sample(name, likelihood, obs=x)")
    if not any(f.name == data_plate for _, s in sites for f in s["cond_indep_stack"]):
        raise ValueError(f"AutoAmortizedNormal: the model declares no pyro.plate({data_plate!r}, ...); pass the "
                         "name of its plate over datapoints as data_plate=")
    latent = [_latent_site(name, s, data_plate, batch) for name, s in sites if not s["is_observed"]]
    if not latent:
        raise ValueError("AutoAmortizedNormal: the model has no latent site, so it needs no guide (def guide(x): pass)")
    return latent


