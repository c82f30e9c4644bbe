"""What an estimate is of: ``log p(x)``, ``log p(x | y)``, ``log p(x, y)``, ..., named from one run
of the model (:func:`estimated_quantity`)."""

from __future__ import annotations

import inspect

import torch
from pyro import poutine
from pyro.distributions import Unit

from ..importance import sample_sites
from .minibatches import slice_args
from .rng import forked_rng

__all__ = ["estimated_quantity"]


def estimated_quantity(model, data: torch.Tensor, args: tuple = (), kwargs: dict | None = None,
                       rows: int = 100) -> str:
    """What an estimate with ``model`` is of: ``"log p(x)"``, ``"log p(x | y)"``, ``"log p(x, y)"``,
    ``"log p(bottom | top)"``.

    Left of the bar: the model's observed sample sites, from one run of the model on the first
    ``rows`` datapoints (the site that observes ``data`` first, then in the order the model
    samples them); a site masked out on every one of those rows (``poutine.mask`` or
    ``Distribution.mask``, as for the unlabelled ``y = -1`` of a semi-supervised pair) is left
    out. Right of it: the per-datapoint inputs (tensors in ``args``/``kwargs`` with one row per
    datapoint of ``data`` ``(N, ...)``) that no site observes, by keyword name, positional ones by
    their parameter name in ``model``'s signature. The run draws from forked RNGs: the caller's
    next draws are the same as without it.
    """
    kwargs, num_points = kwargs or {}, data.shape[0]
    x = data[: min(rows, num_points)]
    cut_args, cut_kwargs = slice_args(args, kwargs, num_points, slice(0, x.shape[0]))
    with forked_rng(data.device), torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(x, *cut_args, **cut_kwargs)
    sites = [(name, site) for name, site in sample_sites(trace, observed=True)
             if not isinstance(site["fn"], Unit)]  # pyro.factor terms are no observations
    names = _positional_names(model, len(args))
    inputs = {**dict(zip(names, cut_args)), **cut_kwargs}  # as the model saw them
    per_datapoint = [name for name, value in {**dict(zip(names, args)), **kwargs}.items()
                     if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == num_points]
    given = [name for name in per_datapoint
             if not any(name == site_name or _same(site["value"], inputs[name]) for site_name, site in sites)]
    observed = sorted((name for name, site in sites if not _masked_out(site)),
                      key=lambda name: not _same(trace.nodes[name]["value"], x))
    return f"log p({', '.join(observed)}{' | ' + ', '.join(given) if given else ''})"


def _positional_names(model, count: int) -> list[str]:
    """The names of ``model``'s ``count`` positional parameters after the data (``arg1``, ... where
    its signature does not say)."""
    try:
        params = [p for p in inspect.signature(model).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # no signature to read (a builtin, say)
        params = []
    return [params[i].name if i < len(params) else f"arg{i}" for i in range(1, count + 1)]


def _same(a, b) -> bool:
    """Whether two site values or inputs are the same tensor, or equal tensors of one shape and dtype."""
    return a is b or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                      and a.dtype == b.dtype and torch.equal(a, b))


def _masked_out(site) -> bool:
    """Whether a site's log-density is masked out at every datapoint (``poutine.mask`` or a
    ``MaskedDistribution``, possibly inside ``Independent``)."""
    masks, fn = [site["mask"]], site["fn"]
    while fn is not None:
        masks.append(getattr(fn, "_mask", None))
        fn = getattr(fn, "base_dist", None)
    return any(m is False or (isinstance(m, torch.Tensor) and not bool(m.any())) for m in masks)
