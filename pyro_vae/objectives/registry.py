"""The objectives by name: :data:`ELBO_NAMES` and :func:`get_elbo`, which the trainer and the
command line use to build an objective from its settings (a name, or an ELBO object a user built).
"""

from __future__ import annotations

import copy
import math

import pyro.infer
from pyro.infer import ELBO

from ..names import unknown_name
from .baselines import TraceBaseline_ELBO
from .enum import TraceEnum_ELBO
from .free_bits import FreeBitsELBO
from .gradients import CIWAE_ELBO, IWAE_DReG, IWAE_STL, MIWAE_ELBO, PIWAE_ELBO, STL_ELBO
from .iwae import IWAE_ELBO
from .meanfield import TraceMeanField_ELBO
from .trace import Trace_ELBO
from .vq import VQVAELoss
from .wae import WAELoss

__all__ = ["ELBO_NAMES", "GRADIENT_ESTIMATORS", "elbo_label", "from_object", "get_elbo"]

GRADIENT_ESTIMATORS = {"stl": STL_ELBO, "iwae-stl": IWAE_STL, "dreg": IWAE_DReG, "miwae": MIWAE_ELBO,
                       "piwae": PIWAE_ELBO, "ciwae": CIWAE_ELBO}
"""The objectives of :mod:`~pyro_vae.objectives.gradients` by name; built with ``num_particles``
as ``K`` and their other settings at the defaults (MIWAE and PIWAE: ``groups=2``, so ``2 K`` draws
per datapoint; CIWAE: ``beta=0.5``); other settings: pass an object, e.g.
``MIWAE_ELBO(groups=8, num_particles=8)``."""
ELBO_NAMES = ("trace", "meanfield", "iwae", "enum", *GRADIENT_ESTIMATORS, "vq", "baseline", "wae")


def get_elbo(name: str | ELBO, num_particles: int = 1, free_bits: float = 0.0, max_plate_nesting: int | None = None,
             data_plate: str = "data") -> ELBO:
    """The objective called ``name`` (see :data:`ELBO_NAMES`) with ``num_particles`` samples, or the
    objective an ELBO object computes (:func:`from_object`; it carries its own settings).

    ``max_plate_nesting``: the pair's plate depth (see
    :func:`~pyro_vae.importance.guess_max_plate_nesting`); ``None`` lets the objective guess it
    at its first call, which runs model and guide once more and so draws from the RNGs.

    ``data_plate``: the name of the pair's plate over datapoints (``pyro.plate(data_plate, batch)``),
    which ``iwae`` needs (its bound is per datapoint); the other objectives do not use it.

    Particles are vectorized. For ``trace`` and ``meanfield`` the ``K`` particles are averaged
    (a lower-variance estimate of the same bound); for ``iwae`` they tighten the bound. ``enum`` is
    ``trace`` with the guide sites marked for parallel enumeration (``@config_enumerate``) summed
    out exactly (:class:`TraceEnum_ELBO`). ``stl``, ``iwae-stl``, ``dreg``, ``miwae``, ``piwae``
    and ``ciwae``: the bounds and gradient estimators of :mod:`~pyro_vae.objectives.gradients`
    (:data:`GRADIENT_ESTIMATORS`), with ``num_particles`` draws per datapoint (per group). ``vq``:
    the VQ-VAE's loss (:class:`~pyro_vae.objectives.vq.VQVAELoss`, commitment 0.25). ``wae``: the
    WAE-MMD loss (:class:`~pyro_vae.objectives.wae.WAELoss`, ``lambda = 10``; not a bound). ``baseline``:
    ``trace`` with Pyro's baselines on its score-function terms
    (:class:`~pyro_vae.objectives.baselines.TraceBaseline_ELBO`).
    ``free_bits > 0`` (nats per latent dimension) gives :class:`FreeBitsELBO`, for ``meanfield``
    only (it needs the per-dimension analytic KL; pairs for which that KL is not a term of the
    ELBO are refused at their first call, and by ``check_model_guide(..., free_bits=...)``).

    Raises:
        ValueError: an unknown name, ``num_particles < 1``, free bits with another objective
            than ``meanfield``, or an ELBO object whose own ``data_plate`` is not ``data_plate``.
        TypeError: ``name`` is neither a name nor a ``pyro.infer.ELBO``, or an object that
            pyro-vae cannot train with (see :func:`from_object`).
    """
    if not isinstance(name, str):
        return from_object(name, num_particles, free_bits, max_plate_nesting, data_plate)
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    nesting = float("inf") if max_plate_nesting is None else max_plate_nesting
    if free_bits:
        if name != "meanfield":
            raise ValueError(f"free bits need the per-dimension analytic KL: use elbo 'meanfield', not {name!r}")
        return FreeBitsELBO(free_bits, num_particles, max_plate_nesting=nesting)
    if name == "trace":
        return Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=nesting)
    if name == "meanfield":
        return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=nesting)
    if name == "iwae":
        return IWAE_ELBO(num_particles=num_particles, data_plate=data_plate, max_plate_nesting=max_plate_nesting)
    if name == "enum":
        return TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=nesting)
    if name == "baseline":
        return TraceBaseline_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=nesting)
    if name in ("vq", "wae") and num_particles != 1:  # one code per datapoint: the posterior is a point mass
        raise ValueError(f"the {name!r} loss draws one code per datapoint (a point-mass encoder): num_particles "
                         f"must be 1, got {num_particles}")
    if name == "vq":
        return VQVAELoss()
    if name == "wae":
        return WAELoss(data_plate=data_plate)
    if name in GRADIENT_ESTIMATORS:
        return GRADIENT_ESTIMATORS[name](num_particles=num_particles, data_plate=data_plate,
                                         max_plate_nesting=max_plate_nesting)
    if name in PAIR_LABELS:
        raise ValueError(f"{name!r} is not an objective's name but a pair's label: {PAIR_LABELS[name]}")
    raise unknown_name("ELBO", name, ELBO_NAMES)


PAIR_LABELS = {"wae-gan": "the WAE-GAN trains with two objectives (objectives.wae_gan.wae_gan_objectives), the "
                          "latent discriminator's as a TrainingPhase; pyro_vae.training.pair_phases(vae, 'wae-gan') "
                          "gives both"}
"""Labels that pairs use as ``default_elbo`` for objectives no name builds alone, and what to do instead."""


def from_object(elbo: ELBO, num_particles: int = 1, free_bits: float = 0.0, max_plate_nesting: int | None = None,
                data_plate: str = "data") -> ELBO:
    """The objective to train with for an ELBO object ``elbo``: the object itself (its
    ``differentiable_loss`` is what the trainer steps with), except Pyro's ``RenyiELBO(alpha=0)``,
    which becomes :class:`IWAE_ELBO` with its particles and ``data_plate`` (the same bound, scaled
    after the logsumexp, and with a ``differentiable_loss``, which Pyro's class lacks). A
    ``max_plate_nesting`` fills an object's unset (infinite) one, so that it does not guess. An
    object with its own ``data_plate`` (:class:`IWAE_ELBO`) must name the same plate as ``data_plate``.

    Raises:
        TypeError: not a ``pyro.infer.ELBO``; an ELBO without ``differentiable_loss``
            (``TraceGraph_ELBO``, ``RenyiELBO`` with ``alpha != 0``, ...).
        ValueError: ``num_particles`` or ``free_bits`` given besides an object that carries its own;
            an object whose ``data_plate`` differs from ``data_plate``.
    """
    if not isinstance(elbo, ELBO):
        raise TypeError(f"elbo must be a name in {ELBO_NAMES} or a pyro.infer.ELBO instance, not "
                        f"{type(elbo).__name__} ({elbo!r})")
    label = f"{type(elbo).__module__}.{type(elbo).__qualname__}"
    if num_particles != 1 and num_particles != elbo.num_particles or free_bits:
        raise ValueError(f"{label} carries its own settings: give num_particles (and free bits, as "
                         f"FreeBitsELBO(...)) to its constructor, not to get_elbo/train")
    own_plate = getattr(elbo, "data_plate", data_plate)
    if own_plate != data_plate:
        raise ValueError(f"{label} was built with data_plate={own_plate!r} but data_plate={data_plate!r} was asked "
                         f"for: name the pair's plate once, the same in both (get_elbo/train(..., "
                         f"data_plate={own_plate!r}))")
    if isinstance(elbo, pyro.infer.RenyiELBO):
        if elbo.alpha != 0:
            raise TypeError(f"{label}(alpha={elbo.alpha}) has no differentiable_loss, which pyro-vae's trainer "
                            f"steps with; pyro-vae computes alpha=0 (the IWAE bound) as IWAE_ELBO: use "
                            f"RenyiELBO(alpha=0, num_particles=K) or get_elbo(\"iwae\", K)")
        elbo = IWAE_ELBO(num_particles=elbo.num_particles, data_plate=data_plate,
                         max_plate_nesting=max_plate_nesting)
    if not callable(getattr(elbo, "differentiable_loss", None)):
        raise TypeError(f"{label} has no differentiable_loss, which pyro-vae's trainer steps with (it defines "
                        f"only loss/loss_and_grads); use one of {ELBO_NAMES} or Trace_ELBO/TraceEnum_ELBO")
    if max_plate_nesting is not None and getattr(elbo, "max_plate_nesting", None) == math.inf:
        # on a copy: the user's object stays as given. Pyro's ELBO counts its vectorized particle plate
        # in the attribute (ELBO.__init__ adds 1)
        elbo = copy.copy(elbo)
        elbo.max_plate_nesting = max_plate_nesting + int(elbo.vectorize_particles and elbo.num_particles > 1)
    return elbo


def elbo_label(elbo: str | ELBO) -> str:
    """How a run records its objective (``config.json``, progress bar, plot legends): a name as it
    is; an object as its class path and settings, e.g.
    ``"pyro.infer.trace_elbo.Trace_ELBO(num_particles=2, vectorize_particles=True)"``."""
    if isinstance(elbo, str):
        return elbo
    settings = {"num_particles": getattr(elbo, "num_particles", 1),
                "vectorize_particles": getattr(elbo, "vectorize_particles", False)}
    for name in ("alpha", "free_bits", "groups", "beta", "coefficient", "lam", "feature_weight", "adversarial_weight"):
        if hasattr(elbo, name):
            settings[name] = getattr(elbo, name)
    if isinstance(getattr(elbo, "elbo", None), ELBO):  # a wrapped objective (SpectralRegularizedELBO)
        settings["elbo"] = elbo_label(elbo.elbo)
    if getattr(elbo, "max_plate_nesting", math.inf) != math.inf:
        settings["max_plate_nesting"] = elbo.max_plate_nesting
    body = ", ".join(f"{k}={v!r}" for k, v in settings.items())
    return f"{type(elbo).__module__}.{type(elbo).__qualname__}({body})"
