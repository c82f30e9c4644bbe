"""The one seam between pyro-vae and Pyro's private and semi-private names.

Everything in :mod:`pyro_vae` that needs a Pyro name outside Pyro's documented API (a leading
underscore, a helper from ``pyro.infer.util`` or ``pyro.distributions.util``, a key that Pyro puts
on trace sites, an attribute of ``PyroOptim``, the ``Messenger`` hook) calls one of the small
functions here instead. Each states what it returns in pyro-vae's words, and
``tests/test_pyro_internals.py`` pins each one against Pyro's *public* classes or an independent
computation, so that a Pyro upgrade that moves or changes one of these names breaks that one test
file rather than the trainer.

Checked against pyro-ppl 1.9.2 (``pyro-ppl>=1.9,<1.10`` in ``pyproject.toml``).
"""

from __future__ import annotations

import math
import re

import torch
from opt_einsum import shared_intermediates
from pyro.distributions.util import is_identically_zero as _is_identically_zero
from pyro.distributions.util import scale_and_mask as _scale_and_mask
from pyro.infer import ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.traceenum_elbo import _compute_model_factors
from pyro.infer.util import Dice as _Dice
from pyro.infer.util import MultiFrameTensor as _MultiFrameTensor
from pyro.infer.util import _fulldot
from pyro.infer.util import torch_item as _torch_item
from pyro.poutine.messenger import Messenger
from pyro.ops import packed as _packed
from pyro.ops.contract import contract_tensor_tree as _contract_tensor_tree
from pyro.ops.einsum.adjoint import require_backward as _require_backward
from pyro.ops.rings import MarginalRing as _MarginalRing
from pyro.ops.rings import SampleRing as _SampleRing
from pyro.poutine.util import site_is_subsample as _site_is_subsample

__all__ = [
    "MessageHook",
    "TracelessELBO",
    "compute_dice_elbo",
    "compute_log_r",
    "elbo_traces",
    "is_deterministic",
    "is_identically_zero",
    "log_r_sum_to",
    "optim_args",
    "optim_constructor",
    "pending_optim_state",
    "per_param_optimizers",
    "plate_sums",
    "scale_and_mask",
    "score_parts",
    "set_optim_args",
    "set_pending_optim_state",
    "site_is_subsample",
    "strip_trace_shapes",
    "torch_item",
    "unconstrained_param",
]

# -- numbers and flags (pyro.infer.util, pyro.distributions.util) ---------------------------------


def torch_item(x):
    """``x.item()`` for a tensor (one host sync), ``x`` itself for a Python number."""
    return _torch_item(x)


def is_identically_zero(x) -> bool:
    """Whether ``x`` is the literal number 0, Pyro's marker for a term that is absent (e.g. the
    score-function part of a reparameterized site). False for float tensors, even all-zero ones."""
    return _is_identically_zero(x)


def scale_and_mask(tensor, scale=1.0, mask=None):
    """``tensor * scale`` with the entries where ``mask`` is False set to 0 (``mask=None``: none);
    returns ``tensor`` itself when ``scale`` is 1 and ``mask`` is None."""
    return _scale_and_mask(tensor, scale, mask)


# -- trace sites ----------------------------------------------------------------------------------


def site_is_subsample(site) -> bool:
    """Whether the trace site is the subsample site that a ``pyro.plate`` records (it carries the
    indices of the minibatch, not a random variable)."""
    return _site_is_subsample(site)


def is_deterministic(site) -> bool:
    """Whether the sample site records a ``pyro.deterministic`` value (no random variable)."""
    return bool(site["infer"].get("_deterministic"))


def score_parts(site):
    """``(log_prob, score_function, entropy_term)`` of a sample site in a trace that Pyro's ELBO
    prepared (:func:`elbo_traces`): ``entropy_term`` is the part of ``log q`` that carries
    pathwise (reparameterized) gradients, ``score_function`` the part whose gradient needs the
    REINFORCE estimator; the absent one is the number 0 (:func:`is_identically_zero`)."""
    return site["score_parts"]


def compute_log_r(model_trace, guide_trace):
    """The detached ``log r = log p(x, z) - log q(z | x)`` of every site, grouped by the plates the
    site is in (Pyro's ``MultiFrameTensor``): the downstream cost of ``Trace_ELBO``'s
    score-function terms. Needs the sites' ``log_prob`` (``Trace.compute_log_prob``)."""
    return _compute_log_r(model_trace, guide_trace)


def compute_dice_elbo(model_trace, guide_trace):
    """The ELBO of one (possibly vectorized) particle of ``TraceEnum_ELBO``'s traces
    (:func:`elbo_traces` of a ``TraceEnum_ELBO``): enumerated sites summed out, the other sites'
    score-function terms in Dice form; a tensor whose value is the ELBO (nats, summed over the
    batch as the sites are scaled) and whose gradient is the estimator's; the number 0 for an
    empty trace.

    Pyro's ``_compute_dice_elbo`` (pyro-ppl 1.9.2), with one change in the Dice expectation
    (:class:`_WhereDice`): terms of zero probability are dropped by ``torch.where`` instead of a
    host test ``mask.all()`` and ``masked_select``, so the step reads nothing on the host (it can be
    recorded, and a GPU step does not wait). Same value and gradient (tested with a value of
    probability 0); bit for bit where every probability is positive (the usual case). A NaN
    probability, whose term Pyro's mask drops, makes this value NaN (the step is then not applied)."""
    marginal_costs, log_factors, ordering, sum_dims, scale = _compute_model_factors(model_trace, guide_trace)
    if log_factors:
        dim_to_size = {}
        for terms in log_factors.values():
            for term in terms:
                dim_to_size.update(zip(term._pyro_dims, term.shape))
        with shared_intermediates() as cache:
            ring = _SampleRing(cache=cache, dim_to_size=dim_to_size)
            log_factors = _contract_tensor_tree(log_factors, sum_dims, ring=ring)
            model_trace._sharing_cache = cache  # as Pyro (TraceEnumSample_ELBO reads it)
        for t, terms in log_factors.items():
            marginal_costs.setdefault(t, []).extend(_packed.scale_and_mask(term, scale=scale) for term in terms)
    for name, site in guide_trace.nodes.items():  # the guide's costs
        if site["type"] == "sample":
            marginal_costs.setdefault(ordering[name], []).append(_packed.neg(site["packed"]["log_prob"]))
    return _WhereDice(guide_trace, ordering).compute_expectation(marginal_costs)


class _WhereDice(_Dice):
    """Pyro's ``Dice`` whose expectation has no host read (:func:`compute_dice_elbo`)."""

    def compute_expectation(self, costs):
        """The differentiable expected cost: the sum over ordinals of ``prob * cost``."""
        expected_cost = 0.0
        with shared_intermediates() as cache:
            ring = _MarginalRing(cache=cache)
            for ordinal, cost_terms in costs.items():
                scale, probs = self._marginals(ring, ordinal, cost_terms)
                for cost in cost_terms:
                    prob = probs[frozenset(cost._pyro_dims)]
                    cost, prob = _packed.broadcast_all(cost, prob)
                    cost = torch.where(prob > 0, cost, torch.zeros_like(cost))  # Pyro's mask, without 0 * inf
                    expected_cost = expected_cost + scale * _fulldot(prob, cost)
        return expected_cost

    def _marginals(self, ring, ordinal, cost_terms) -> tuple[float, dict]:
        """The constant scale of ``ordinal``'s log factors, and the marginal probability of each
        cost term's dims (by ``frozenset`` of dims), as Pyro's ``Dice.compute_expectation``."""
        log_factors = self._get_log_factors(ordinal)
        scale = math.exp(sum(x for x in log_factors if not isinstance(x, torch.Tensor)))
        log_factors = [x for x in log_factors if isinstance(x, torch.Tensor)]
        queries = {frozenset(cost._pyro_dims): None for cost in cost_terms}
        for log_factor in log_factors:
            key = frozenset(log_factor._pyro_dims)
            if queries.get(key, False) is None:
                queries[key] = log_factor
        for cost in cost_terms:  # a query for each cost term
            key = frozenset(cost._pyro_dims)
            if queries[key] is None:
                query = torch.zeros_like(cost)
                query._pyro_dims = cost._pyro_dims
                log_factors.append(query)
                queries[key] = query
        sum_dims = set().union(*(x._pyro_dims for x in log_factors)) - ordinal
        for query in queries.values():
            _require_backward(query)
        ring.sumproduct(log_factors, sum_dims)._pyro_backward()
        probs = {}
        for key, query in queries.items():
            probs[key] = query._pyro_backward_result.exp()
            probs[key]._pyro_dims = query._pyro_dims
        return scale, probs


def log_r_sum_to(log_r, site):
    """``log r`` (from :func:`compute_log_r`) summed over every plate the ``site`` is not in,
    keeping the dims of its own plates (partial Rao-Blackwellization); 0.0 for an empty trace."""
    return log_r.sum_to(site["cond_indep_stack"])


def plate_sums(terms):
    """The tensors of ``terms`` (``(cond_indep_stack, tensor)`` pairs, e.g. per-site ELBO terms)
    grouped by the vectorized plates they are in (Pyro's ``MultiFrameTensor``), for
    :func:`log_r_sum_to`: like :func:`compute_log_r`, but of any terms, not only ``log p - log q``."""
    return _MultiFrameTensor(*terms)


def strip_trace_shapes(message: str) -> str:
    """The error ``message`` without the table of shapes (from ``Trace Shapes:`` on) that
    ``poutine.trace`` appends to a ``ValueError``/``RuntimeError`` raised inside the traced call."""
    return re.split(r"\n\s*Trace Shapes:", message)[0].strip()


# -- ELBO and effect-handler hooks ----------------------------------------------------------------


def elbo_traces(elbo: ELBO, model, guide, args: tuple, kwargs: dict):
    """``(model_trace, guide_trace)`` pairs from Pyro's ``ELBO._get_traces``: one pair with the
    particles vectorized in an outer plate when ``elbo.vectorize_particles`` (guessing
    ``max_plate_nesting`` first when it is infinite), else ``num_particles`` pairs. The sites carry
    ``log_prob``, ``log_prob_sum`` and :func:`score_parts`."""
    return elbo._get_traces(model, guide, args, kwargs)


class TracelessELBO(ELBO):
    """Base of ELBOs that define only ``differentiable_loss`` and never ask Pyro for traces.

    Pyro's ``ELBO`` declares the private abstract method ``_get_trace``; this class implements it
    (raising ``NotImplementedError``) so that such objectives can be instantiated.
    """

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError(f"{type(self).__name__} computes its loss in differentiable_loss")


class MessageHook(Messenger):
    """An effect handler that calls ``process(msg)`` on every message (sample, param, plate, ...)
    of the code it wraps, before the message is handled (Pyro's ``Messenger._process_message``).

    ``process`` may change the message in place, e.g. ``msg["scale"]``; its return value is
    ignored. Use as ``with MessageHook(process): ...``.
    """

    def __init__(self, process):
        super().__init__()
        self.process = process

    def _process_message(self, msg):
        self.process(msg)


# -- parameters and optimizers --------------------------------------------------------------------


def unconstrained_param(value):
    """The unconstrained leaf tensor (the one optimizers step) behind a constrained parameter
    value from Pyro's param store, e.g. the ``"value"`` of a param site."""
    return value.unconstrained()


def per_param_optimizers(optim) -> list:
    """The ``torch.optim`` optimizers of a ``PyroOptim``, one per parameter it has stepped."""
    return list(optim.optim_objs.values())


def optim_constructor(optim):
    """The ``torch.optim.Optimizer`` class a ``PyroOptim`` builds its optimizers with."""
    return optim.pt_optim_constructor


def optim_args(optim):
    """The optimizer arguments a ``PyroOptim`` uses for parameters it has not seen yet (a dict, or
    a callable of the parameter's name)."""
    return optim.pt_optim_args


def set_optim_args(optim, args) -> None:
    """Replace the arguments a ``PyroOptim`` gives to the optimizers of parameters still to come."""
    optim.pt_optim_args = args


def pending_optim_state(optim) -> dict:
    """``{param name: optimizer state}`` loaded into a ``PyroOptim`` (``set_state``) for
    parameters it has not stepped yet; each is consumed at that parameter's first step."""
    return optim._state_waiting_to_be_consumed


def set_pending_optim_state(optim, state: dict) -> None:
    """Replace the states a ``PyroOptim`` holds for parameters it has not stepped yet."""
    optim._state_waiting_to_be_consumed = state
