"""Check that a model/guide pair follows the contract, before any training or estimation.

:func:`check_model_guide` runs the guide once on a small batch, replays the model against it, and
raises :class:`ModelGuideError` naming the first broken rule, the site it concerns and the way
out (the rules are in :mod:`pyro_vae.models.base`). It also repeats, once, everything that
training skips by running its steps with Pyro's validation off: torch's argument checks, Pyro's own
trace checks and warnings (run under ``pyro.validation_enabled(True)`` whatever the caller's
setting), and it adds the conditions of the objective in use. The trainer and the estimators call
it first, so a user meets one clear message instead of a wrong number or a traceback from deep
inside Pyro.

=====================  =================================================================
module                 contents
=====================  =================================================================
``errors``             :class:`ModelGuideError`
``rules``              one function per rule of the contract, on the traces of one run
``validation``         the pair under Pyro's validation, argument checks, bulk draws
``structure``          which latent sites' analytic KL is a term of the ELBO (derivation)
``objective_rules``    what ``meanfield``, free bits and ``iwae`` need of a pair
``idioms``             Pyro idioms refused by name: autoguides, subsampled data plates, global
                       latents, point-mass (``Delta``) guide sites
``vectorization``      the pair run with two particles vectorized, as ``iwae`` and the estimators
``named``              named per-datapoint arguments that model or guide does not take
=====================  =================================================================
"""

from __future__ import annotations

import torch

from ..importance import is_enumerated, plate_nesting, sample_sites
from .errors import ModelGuideError
from .idioms import check_no_global_latents, check_no_point_mass, check_not_autoguide
from .objective_rules import check_common_scale, check_objective, rules_of
from .rules import (
    check_call_signature,
    check_data,
    check_data_plate,
    check_enumeration,
    check_finite_log_densities,
    check_latent_site,
    check_observations,
    check_observed_site_exists,
    check_same_latent_sites,
)
from .validation import check_arguments, check_draws_in_bulk, check_under_pyro_validation, run_pair
from .vectorization import check_broadcasts

__all__ = ["ModelGuideError", "check_model_guide"]


def _slice(value, batch: int, num_points: int):
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == num_points:
        return value[:batch]
    return value


def check_model_guide(model, guide, data: torch.Tensor, *args, elbo=None, free_bits: float = 0.0,
                      batch_size: int = 8, data_plate: str = "data", **kwargs) -> None:
    """Run ``guide`` and ``model`` on the first ``batch_size`` rows of ``data`` and check the
    contract; return ``None`` when the pair conforms.

    Args:
        model, guide: the pair, called as ``fn(x, *args, **kwargs)``.
        data: ``(N, D)`` data. The pair runs on the first ``batch_size`` rows; every row is
            checked against the support of the observed site. Tensor arguments in
            ``args``/``kwargs`` whose first dimension is ``N`` are sliced with it (labels).
        elbo: the objective the pair will be trained with (``"trace"``, ``"meanfield"``,
            ``"iwae"``, ``"enum"``), an ELBO object (``pyro.infer.Trace_ELBO(num_particles=2)``,
            ``TraceEnum_ELBO(max_plate_nesting=1)``, ``RenyiELBO``, pyro-vae's, a subclass: checked
            by the rules of what it computes, see :func:`~pyro_vae.check.objective_rules.rules_of`)
            or ``None`` (estimation only); adds that objective's conditions.
            Guide sites marked for parallel enumeration (``@config_enumerate``) are checked at a
            sampled value by the rules below and run once enumerated under Pyro's
            ``TraceEnum_ELBO`` with validation on; they need ``"enum"`` or ``None`` (the
            estimators sum them exactly).
        free_bits: the free-bits threshold in nats per latent dimension the pair will be trained
            with (0: none); adds the conditions of :class:`~pyro_vae.objectives.FreeBitsELBO`.
        batch_size: rows used for the check (at least 2, so that a plate of the wrong size shows).
        data_plate: name of the plate over datapoints.

    Raises:
        ModelGuideError: naming the problem and the site: a Pyro autoguide (not amortized); a
            subsampled data plate (``subsample_size``/``subsample``: the trainer minibatches); a
            model or guide that fails to run on the batch; a global latent (a latent site outside
            the data plate, a ``PyroSample`` weight); a point-mass (``Delta``) guide site (except
            under ``"wae"``, whose pair must have one continuous, unscaled latent site); a
            distribution parameter outside its constraint; a missing data plate or one whose size
            differs from the batch; a latent site in one function but not the
            other; batch or event shapes that differ between model and guide; a guide draw
            outside the model's support; a site that is not reparameterizable under ``iwae`` or
            free bits; no observed site; observations outside the support of the model's
            likelihood (e.g. grey pixels under a Bernoulli); a log-density that is not finite on
            the batch or at any of many draws from the guide (e.g. a relaxed categorical at a
            low temperature); anything Pyro's validation raises or warns about; under free
            bits, a latent site whose analytic KL is not a term of the ELBO (see
            :mod:`pyro_vae.check.structure`) or whose scale differs between model and guide; a guide site marked
            for enumeration under an objective that would sample it; an enumerated site in a plate
            nested in the data plate; an objective built with a ``max_plate_nesting`` below the
            pair's; under Pyro's own ``TraceMeanField_ELBO``, a latent site that is not
            reparameterizable or whose analytic KL is not a term of the ELBO; a pair that does not
            broadcast over a particle dimension left of its plates (as ``iwae`` and the estimators
            run it), naming the site where it failed or gave other numbers than one particle alone.
        TypeError: ``elbo`` is neither a name, ``None`` nor a ``pyro.infer.ELBO``.

    The global RNG state is left as it was.
    """
    rules = rules_of(elbo, free_bits)
    label = elbo if elbo is None or isinstance(elbo, str) else type(elbo).__name__
    elbo = rules.name
    check_data(data)
    check_call_signature(model, data)
    check_not_autoguide(guide, data_plate)
    batch = min(max(batch_size, 2), data.shape[0])
    x = data[:batch]
    per_datapoint = [v for v in (*args, *kwargs.values())  # inputs a site may observe: checked on every row
                     if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == data.shape[0]]
    args = tuple(_slice(a, batch, data.shape[0]) for a in args)
    kwargs = {k: _slice(v, batch, data.shape[0]) for k, v in kwargs.items()}
    guide_trace, model_trace = run_pair(model, guide, x, args, kwargs, data_plate)
    guide_sites = dict(sample_sites(guide_trace))
    observed = dict(sample_sites(model_trace, observed=True))
    latent = dict(sample_sites(model_trace, observed=False))
    every_site = [("guide", n, s) for n, s in guide_sites.items()] + \
                 [("model", n, s) for n, s in {**latent, **observed}.items()]
    check_no_global_latents(guide_sites, latent, data_plate, batch)
    check_no_point_mass(guide_sites, latent, elbo, label)
    check_arguments(every_site)
    check_observed_site_exists(observed)
    check_data_plate(guide_sites, {**latent, **observed}, data_plate, batch)
    check_same_latent_sites(latent, guide_sites, observed)
    enumerated = [name for name, site in guide_sites.items() if is_enumerated(site)]
    check_enumeration(enumerated, guide_sites, elbo, data_plate, label)
    for name, site in guide_sites.items():
        check_latent_site(name, site, latent[name], elbo)
    if elbo == "iwae":
        check_common_scale(every_site, label)
    for name, site in observed.items():
        check_observations(name, site, data, per_datapoint)
    check_finite_log_densities(every_site)
    pairs = [(name, site, latent[name]) for name, site in guide_sites.items()]
    check_draws_in_bulk(pairs, batch)
    nesting = plate_nesting(guide_trace, model_trace)
    check_under_pyro_validation(model, guide, x, args, kwargs, nesting, enum=elbo == "enum" or bool(enumerated))
    check_broadcasts(model, guide, x, args, kwargs, guide_trace, model_trace, nesting, data_plate)
    check_objective(model, guide, x, args, kwargs, pairs, rules, nesting)
