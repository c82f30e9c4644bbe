"""What an objective needs of a pair beyond the contract: ``meanfield`` a dependency structure it can
read, free bits an analytic KL per latent dimension that is a term of the ELBO, ``iwae``
reparameterizable guide sites (checked with the site's other rules), ``enum`` enough
``max_plate_nesting``, ``wae`` one continuous, reparameterized, unscaled latent site (and it alone
lets a point-mass guide site through: :data:`POINT_MASS_RULES`); and, for an ELBO *object*, which of these rule sets it needs
(:func:`rules_of`).

The decision per site is made by one function, :func:`pyro_vae.check.structure.pair_structure`,
which both the checker and the objectives call: the checker to refuse what cannot be computed
(free bits on a site whose KL is not an ELBO term), ``TraceMeanField_ELBO`` (at its first call for
a pair, before any step) to take the closed-form KL where it is a term and the sampled
``log p - log q`` elsewhere. The free-bits messages here are also raised by ``FreeBitsELBO``.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import pyro.infer
import torch

from .errors import ModelGuideError
from .rules import distribution_name
from .structure import PairStructure, pair_structure

__all__ = ["NAMED_RULES", "POINT_MASS_RULES", "ObjectiveRules", "check_common_scale", "check_objective", "free_bits_refusal", "rules_of", "same_factor", "structure_of",
           "wae_refusal"]


class ObjectiveRules(NamedTuple):
    """The rule set of an objective: ``name`` (``"trace"``, ``"meanfield"``, ``"iwae"``, ``"enum"``
    or ``None``), its ``free_bits`` threshold (nats per latent dimension, 0: none),
    ``pyro_meanfield``: whether it is Pyro's own ``TraceMeanField_ELBO`` (analytic KL at *every*
    site, no score-function term), and the ``max_plate_nesting`` it was built with (``inf``: it
    guesses)."""

    name: str | None
    free_bits: float
    pyro_meanfield: bool
    max_plate_nesting: float


NAMED_RULES = {"baseline": "trace", "stl": "iwae", "iwae-stl": "iwae", "dreg": "iwae", "miwae": "iwae", "piwae": "iwae",
               "ciwae": "iwae", "wae-gan": "wae"}
"""The rule set of each objective name that is not a rule set's own name: ``baseline`` is ``trace``
with baselines; ``wae-gan`` (the WAE-GAN pair's label, :class:`~pyro_vae.objectives.wae_gan.WAEGANLoss`)
is ``wae``; the gradient estimators
of :mod:`pyro_vae.objectives.gradients` need what ``iwae`` needs (reparameterized guide sites,
per-datapoint weights at one common scale). Their classes say the same in ``checker_rules``."""

POINT_MASS_RULES = ("wae",)
"""The rule sets under which a guide site may be a point mass (``Delta``) where the model's site is
not: the WAE's loss (:class:`~pyro_vae.objectives.wae.WAELoss`) reads the guide's draws only, never
``log q``. Under every other rule set, and for the estimators (``elbo=None``), the checker refuses
one (:func:`~pyro_vae.check.idioms.check_no_point_mass`)."""


def rules_of(elbo, free_bits: float = 0.0) -> ObjectiveRules:
    """The :class:`ObjectiveRules` of ``elbo``: a name or ``None`` as given; an ELBO object by what
    it computes (pyro-vae's objectives say so in ``checker_rules``; Pyro's classes and users'
    subclasses of them by their base class; an objective that wraps another in its ``elbo``
    attribute by the wrapped one).

    Raises:
        TypeError: ``elbo`` is neither a name, ``None``, nor a ``pyro.infer.ELBO``.
    """
    if elbo is None or isinstance(elbo, str):
        return ObjectiveRules(NAMED_RULES.get(elbo, elbo), free_bits, False, math.inf)
    if not isinstance(elbo, pyro.infer.ELBO):
        raise TypeError(f"elbo must be a name (e.g. \"trace\"), a pyro.infer.ELBO instance or None, "
                        f"not {type(elbo).__name__}")
    inner = getattr(elbo, "elbo", None)  # an objective that wraps another (SpectralRegularizedELBO)
    if isinstance(inner, pyro.infer.ELBO):
        return rules_of(inner, free_bits)
    # Pyro's ELBO counts its vectorized particle plate in max_plate_nesting (ELBO.__init__ adds 1)
    particles = int(getattr(elbo, "vectorize_particles", False) and getattr(elbo, "num_particles", 1) > 1)
    nesting = getattr(elbo, "max_plate_nesting", math.inf) - particles
    free_bits = max(free_bits, getattr(elbo, "free_bits", 0.0))
    name = getattr(elbo, "checker_rules", None)
    if name is not None:
        return ObjectiveRules(name, free_bits, False, nesting)
    for cls, name in ((pyro.infer.TraceEnum_ELBO, "enum"), (pyro.infer.TraceMeanField_ELBO, "meanfield"),
                      (pyro.infer.RenyiELBO, "iwae")):
        if isinstance(elbo, cls):
            return ObjectiveRules(name, free_bits, name == "meanfield", nesting)
    return ObjectiveRules("trace", free_bits, False, nesting)  # Trace_ELBO, TraceGraph_ELBO, a user's ELBO


def same_factor(a, b) -> bool:
    """Whether two site scales (or masks) are the same factor: the same object, equal numbers, both
    ``None``, or equal tensors (one host sync, only for two distinct tensors)."""
    if a is b:
        return True
    if isinstance(a, numbers.Number) and isinstance(b, numbers.Number):
        return a == b
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if a is None or b is None:
            return False
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        return a.shape == b.shape and bool(torch.equal(a, b.to(a.device, a.dtype)))
    return False


def check_common_scale(every_site: list, label: str) -> None:
    """Under the importance-weighted rule set (``iwae`` and the gradient estimators) every site of
    a datapoint, latent or observed, in model and guide, carries the same scale: the bound is
    ``s * log (1/K) sum_k w_k`` for one ``s``. ``every_site`` holds ``(side, name, site)``."""
    side, name, site = every_site[0]
    for other_side, other, other_site in every_site[1:]:
        if not same_factor(other_site["scale"], site["scale"]):
            raise ModelGuideError(
                f"{label}: the {other_side}'s site {other!r} carries another scale than the {side}'s site {name!r} "
                f"(poutine.scale on some sites only, as beta-VAEs and KL warm-up put on the latents); an "
                f"importance-weighted objective is defined for one scale per datapoint, so it has no analogue "
                f"here: use elbo=\"trace\" or \"meanfield\", or scale every site alike")


def free_bits_refusal(name: str, g: dict, m: dict, structure: PairStructure) -> str | None:
    """Why free bits cannot be computed for latent site ``name`` (guide site ``g``, model site
    ``m``), with the way out; ``None`` when it can."""
    if not g["fn"].has_rsample:
        return (f"guide site {name!r} ({distribution_name(g['fn'])}) is not reparameterizable: the free-bits "
                f"objective clamps a batch mean of KLs, for which pyro-vae has no score-function estimator. "
                f"Use elbo=\"meanfield\" or \"trace\" without free bits (score-function gradients), or a "
                f"reparameterizable (e.g. relaxed) latent")
    if structure.kl_blockers(name):
        return structure.refusal(name, "free bits")
    if not (same_factor(g["scale"], m["scale"]) and same_factor(g["mask"], m["mask"])):
        return (f"latent site {name!r}: the model and the guide put different scales or masks on it, so its "
                f"KL has no single weight to apply after the free-bits clamp; scale both (e.g. "
                f"pyro_vae.objectives.scale_latents on model and guide), or train without free bits")
    return None


def structure_of(model, guide, x: torch.Tensor, args: tuple, kwargs: dict) -> PairStructure:
    """:func:`pair_structure` on the check batch, its failures as :class:`ModelGuideError`."""
    try:
        return pair_structure(model, guide, x, *args, **kwargs)
    except (ValueError, RuntimeError, TypeError, NotImplementedError) as e:
        raise ModelGuideError(
            f"the dependency analysis of the pair failed ({type(e).__name__}: {str(e).splitlines()[0]}); "
            f"meanfield and free bits need it to know which KLs are terms of the ELBO: use elbo=\"trace\"") from e


def check_objective(model, guide, x: torch.Tensor, args: tuple, kwargs: dict, pairs: list,
                    rules: ObjectiveRules, nesting: int) -> None:
    """The objective's conditions; ``pairs`` holds ``(name, guide site, model site)`` per latent site;
    ``nesting`` is the plate depth the pair uses."""
    elbo, free_bits, pyro_meanfield, declared = rules
    if nesting > declared:
        raise ModelGuideError(
            f"the objective was built with max_plate_nesting={declared}, but the pair's plates use {nesting} "
            f"batch dims; enumerated values and particles would collide with a plate: pass "
            f"max_plate_nesting={nesting}")
    if elbo == "wae" and wae_refusal(pairs) is not None:
        raise ModelGuideError(wae_refusal(pairs))
    if elbo != "meanfield" and not free_bits:
        return
    structure = structure_of(model, guide, x, args, kwargs)
    if pyro_meanfield:
        for name, g, m in pairs:
            _check_pyro_meanfield(name, g, structure)
    if free_bits:
        for name, g, m in pairs:
            reason = free_bits_refusal(name, g, m, structure)
            if reason is not None:
                raise ModelGuideError(reason)


def _check_pyro_meanfield(name: str, g: dict, structure: PairStructure) -> None:
    """Pyro's ``TraceMeanField_ELBO`` takes the analytic KL at every latent site and has no
    score-function term: both must be right for ``name``."""
    if not g["fn"].has_rsample:
        raise ModelGuideError(
            f"guide site {name!r} ({distribution_name(g['fn'])}) is not reparameterizable, and Pyro's "
            f"TraceMeanField_ELBO has no score-function term for it (its gradient would be wrong): use "
            f"get_elbo(\"meanfield\") (pyro-vae's, which adds the term) or elbo=\"trace\"")
    if structure.kl_blockers(name):
        raise ModelGuideError(structure.refusal(name, "Pyro's TraceMeanField_ELBO").replace(
            "Train with elbo=\"trace\" (no free bits)", "Use get_elbo(\"meanfield\") (pyro-vae's, which takes "
            "the sampled term there) or elbo=\"trace\""))


def wae_refusal(pairs: list) -> str | None:
    """Why the WAE's loss cannot train a pair whose guide's latent sites are ``pairs``, ``(name,
    guide site, model site or None)``; ``None`` when it can: one latent site (the MMD matches one
    aggregate posterior to one prior), continuous in the model (the kernel is on real vectors),
    reparameterized in the guide (the penalty reaches the encoder through the draw), unscaled
    (KL warm-up and beta weigh a KL term that the loss does not have)."""
    if len(pairs) != 1:
        return (f"the wae objective matches the aggregate posterior of one latent site to its prior, but the "
                f"guide samples {len(pairs)} ({', '.join(repr(p[0]) for p in pairs) or 'none'}): write the "
                f"latent as one site (concatenate), or train with an ELBO")
    name, g, m = pairs[0]
    if m is None:
        return f"guide site {name!r} has no site of that name in the model, whose prior the wae objective samples"
    if m["fn"].support.is_discrete or not g["fn"].has_rsample:
        return (f"latent site {name!r} ({distribution_name(m['fn'])} prior, {distribution_name(g['fn'])} guide): "
                f"the wae objective needs a continuous latent drawn by rsample() (a Delta at the encoder's "
                f"output, or e.g. a Normal), so that the MMD penalty on the draws reaches the encoder")
    for side, site in (("guide", g), ("model", m)):
        if isinstance(site["scale"], torch.Tensor) or site["scale"] != 1.0:
            return (f"the {side}'s latent site {name!r} is scaled (poutine.scale: beta, KL warm-up), but the wae "
                    f"objective has no KL term for a scale to weigh and reads only the site's draws: remove the "
                    f"scale (weigh the MMD penalty with WAELoss(lam=...))")
    return None
