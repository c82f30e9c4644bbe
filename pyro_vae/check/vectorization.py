"""Whether a pair broadcasts over an extra batch dimension on the left, as ``iwae``, vectorized
particles (``num_particles > 1``) and the estimators (``K`` importance samples at once) need.

:func:`check_broadcasts` runs the pair once more through the estimators' own
:func:`~pyro_vae.importance.log_importance_weights` with two particles in the particle plate left
of the pair's plates, the guide replayed at the check run's draws (particle 0) and at the same
draws with the datapoints rolled by one (particle 1), and compares every site's log-density per
particle with the one of each draw computed alone (one particle). A pair that fails there, or
whose numbers differ (code that mixes particles or datapoints: ``z[0]``, ``z.view(-1, k)``,
``torch.cat(..., dim=0)``), is refused naming the site. A pair that draws noise of its own given
``z`` (dropout in training mode) cannot be compared so: when the draw alone, run again, gives other
numbers, only the failures are refused.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine

from ..importance import log_importance_weights, sample_sites
from ..pyro_internals import MessageHook, strip_trace_shapes
from .errors import ModelGuideError
from .idioms import SiteRecorder

__all__ = ["PARTICLES", "check_broadcasts"]

PARTICLES = 2
"""Particles of the vectorized run (the two draws compared)."""

_ERRORS = (ValueError, RuntimeError, TypeError, IndexError, KeyError, NotImplementedError, AssertionError)
_ADVICE = ("iwae, num_particles > 1 (vectorized) and the estimators (which run K samples at once) need a pair that "
           "broadcasts over extra batch dimensions on the left of its plates: reshape only the right-most dims "
           "(z.reshape(z.shape[:-1] + (a, b)), x.reshape(x.shape[:-1] + (-1,))), concatenate along dim=-1, "
           "index with [..., i], never over the batch (z[0], z.view(-1, k), torch.cat(..., dim=0))")


def _replay_values(guide_trace, data_plate: str, nesting: int):
    """Two traces of the guide's latent sites: the check run's draws with the datapoints rolled by
    one, and the draws and those stacked in a particle dim left of the ``nesting`` plate dims
    (``None`` when a site's value has more batch dims than the plates)."""
    rolled, stacked = poutine.Trace(), poutine.Trace()
    for name, site in sample_sites(guide_trace, observed=False):
        value, event_dim = site["value"], len(site["fn"].event_shape)
        batch_dims = value.dim() - event_dim
        if batch_dims > nesting:
            return None
        value = value.reshape((1,) * (nesting - batch_dims) + value.shape)
        frame = next((f for f in site["cond_indep_stack"] if f.name == data_plate and f.vectorized), None)
        other = value
        if frame is not None and value.shape[frame.dim - event_dim] > 1:
            other = value.roll(1, dims=frame.dim - event_dim)
        both = torch.stack([value, other], dim=-(nesting + 1) - event_dim)
        for trace, v in ((rolled, other), (stacked, both)):
            trace.add_node(name, **{**site, "value": v})
    return rolled, stacked


def _recorded(fn, recorder: SiteRecorder):
    def recorded(*args, **kwargs):
        with MessageHook(recorder):
            return fn(*args, **kwargs)

    return recorded


def _run(model, guide, replayed, x, args, kwargs, particles: int, nesting: int, data_plate: str):
    """``[(role, name, log-density per particle (particles,))]`` of every sample site of one run
    of :func:`log_importance_weights` with ``guide`` replayed at ``replayed``."""
    guide_log, model_log = SiteRecorder(), SiteRecorder()
    try:
        log_importance_weights(_recorded(model, model_log), _recorded(poutine.replay(guide, trace=replayed),
                               guide_log), x, *args, num_particles=particles, max_plate_nesting=nesting,
                               data_plate=data_plate, **kwargs)
    except ModelGuideError:
        raise
    except _ERRORS as e:
        role, log = ("model", model_log) if model_log.messages else ("guide", guide_log)
        where = f"at or after site {log.messages[-1]['name']!r} (the last one it reached)" if log.messages \
            else "before its first site"
        raise ModelGuideError(f"with {particles} particle{'s' * (particles > 1)} in a plate left of its plates the "
                              f"{role} fails {where}: "
                              f"{strip_trace_shapes(str(e))}; {_ADVICE}") from e
    return _per_particle([("guide", guide_log.sites()), ("model", model_log.sites())], particles, nesting)


def _per_particle(runs, particles: int, nesting: int):
    """``[(role, name, log-density summed over everything but the particle dim, (particles,))]`` of
    the sites ``(name, site)`` of each ``(role, sites)`` in ``runs``."""
    sites = []
    for role, run in runs:
        for name, msg in run:
            log_prob = msg["fn"].log_prob(msg["value"])
            if log_prob.dim() > nesting + 1:
                raise ModelGuideError(f"with {particles} particle(s) in a plate left of its plates, {role} site "
                                      f"{name!r} has batch shape {tuple(log_prob.shape)}, more dims than the "
                                      f"plates and the particles; {_ADVICE}")
            log_prob = log_prob.reshape((1,) * (nesting + 1 - log_prob.dim()) + log_prob.shape)
            sites.append((role, name, log_prob.reshape(log_prob.shape[0], -1).sum(-1).expand(particles)))
    return sites


def check_broadcasts(model, guide, x: torch.Tensor, args: tuple, kwargs: dict, guide_trace, model_trace,
                     nesting: int, data_plate: str = "data") -> None:
    """Refuse a pair that does not give, with :data:`PARTICLES` particles vectorized, the
    log-densities it gives for each particle alone (see the module docstring); ``guide_trace`` and
    ``model_trace`` are the check run's (the first particle's draws alone), ``nesting`` the pair's
    plate depth. The RNG state is left as it was."""
    replayed = _replay_values(guide_trace, data_plate, nesting)
    if replayed is None:
        return
    rolled, stacked = replayed
    fork = torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else [])
    with poutine.block(), fork, pyro.validation_enabled(False), torch.no_grad():
        first = _per_particle([("guide", list(sample_sites(guide_trace))), ("model", list(sample_sites(model_trace)))],
                              1, nesting)
        alone = [first, _run(model, guide, rolled, x, args, kwargs, 1, nesting, data_plate)]
        together = _run(model, guide, stacked, x, args, kwargs, PARTICLES, nesting, data_plate)
        mismatch = _first_mismatch(together, alone)
        if mismatch is not None:
            again = _run(model, guide, rolled, x, args, kwargs, 1, nesting, data_plate)
            if _first_mismatch(again, alone[1:]) is not None:
                return  # the pair draws noise of its own given z (e.g. dropout): these runs cannot judge it
    if mismatch is not None:
        role, name, k, got, want = mismatch
        raise ModelGuideError(
            f"{role} site {name!r} does not broadcast over particles: with {PARTICLES} particles in a plate left of "
            f"its plates its log-density for particle {k} is {got:.6g} nats, for the same draw alone {want:.6g}: "
            f"the code before it mixes particles or datapoints; {_ADVICE}")


def _first_mismatch(together, alone):
    """``(role, name, particle, log-density, log-density alone)`` of the first site whose
    log-densities in ``together`` (one run of ``len(alone)`` particles) differ from the runs in
    ``alone`` (one particle each), or ``None``."""
    alone = [{(role, name): log_prob for role, name, log_prob in run} for run in alone]
    for role, name, log_prob in together:
        want = [run.get((role, name)) for run in alone]
        if any(w is None for w in want):
            raise ModelGuideError(f"with {PARTICLES} particles in a plate left of its plates the {role} draws a "
                                  f"site {name!r} it does not draw for one particle; {_ADVICE}")
        want = torch.cat(want)
        close = torch.isclose(log_prob, want, rtol=1e-4, atol=1e-3) | (log_prob == want)
        if not bool(close.all()):
            k = int((~close).nonzero()[0, 0])
            return role, name, k, float(log_prob[k]), float(want[k])
    return None
