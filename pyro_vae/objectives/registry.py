"""The objectives by name: :data:`ELBO_NAMES` and :func:`get_elbo`, which the trainer and the
command line use to build an objective from its settings.
"""

from __future__ import annotations

from pyro.infer import ELBO

from ..names import unknown_name
from .free_bits import FreeBitsELBO
from .iwae import IWAE_ELBO
from .jit import JitELBO
from .meanfield import TraceMeanField_ELBO
from .trace import Trace_ELBO

__all__ = ["ELBO_NAMES", "get_elbo"]

ELBO_NAMES = ("trace", "meanfield", "iwae")


def get_elbo(name: str, num_particles: int = 1, free_bits: float = 0.0, max_plate_nesting: int | None = None,
             jit: bool = False) -> ELBO:
    """The objective called ``name`` (see :data:`ELBO_NAMES`) with ``num_particles`` samples.

    ``max_plate_nesting``: the pair's plate depth (see
    :func:`~pyro_vae.importance.guess_max_plate_nesting`); ``None`` lets the objective guess it
    at its first call, which runs model and guide once more and so draws from the RNGs.

    Particles are vectorized. For ``trace`` and ``meanfield`` the ``K`` particles are averaged
    (a lower-variance estimate of the same bound); for ``iwae`` they tighten the bound.
    ``free_bits > 0`` (nats per latent dimension) gives :class:`FreeBitsELBO`, for ``meanfield``
    only (it needs the per-dimension analytic KL; pairs for which that KL is not a term of the
    ELBO are refused at their first call, and by ``check_model_guide(..., free_bits=...)``). ``jit=True`` wraps the objective in
    :class:`JitELBO` (static pairs only; give ``max_plate_nesting``).

    Raises:
        ValueError: an unknown name, ``num_particles < 1``, or free bits with another objective
            than ``meanfield``.
    """
    if jit:
        return JitELBO(get_elbo(name, num_particles, free_bits, max_plate_nesting))
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
        return IWAE_ELBO(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
    raise unknown_name("ELBO", name, ELBO_NAMES)
