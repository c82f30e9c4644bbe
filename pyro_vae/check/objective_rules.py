"""What an objective needs of a pair beyond the contract: ``meanfield`` a dependency structure it can
read, free bits an analytic KL per latent dimension that is a term of the ELBO, ``iwae``
reparameterizable guide sites (checked with the site's other rules).

The decision per site is made by one function, :func:`pyro_vae.check.structure.pair_structure`,
which both the checker and the objectives call: the checker to refuse what cannot be computed
(free bits on a site whose KL is not an ELBO term), ``TraceMeanField_ELBO`` (at its first call for
a pair, before any step) to take the closed-form KL where it is a term and the sampled
``log p - log q`` elsewhere. The free-bits messages here are also raised by ``FreeBitsELBO``.
"""

from __future__ import annotations

import numbers

import torch

from .errors import ModelGuideError
from .rules import distribution_name
from .structure import PairStructure, pair_structure

__all__ = ["check_objective", "free_bits_refusal", "same_factor", "structure_of"]


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
                    elbo: str | None, free_bits: float) -> None:
    """The objective's conditions; ``pairs`` holds ``(name, guide site, model site)`` per latent site."""
    if elbo != "meanfield" and not free_bits:
        return
    structure = structure_of(model, guide, x, args, kwargs)
    if free_bits:
        for name, g, m in pairs:
            reason = free_bits_refusal(name, g, m, structure)
            if reason is not None:
                raise ModelGuideError(reason)
