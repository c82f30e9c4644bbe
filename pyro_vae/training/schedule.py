"""The KL schedule of a run: KL warm-up and free bits, the two ways a trainer reshapes the KL term.

* **KL warm-up** (Bowman et al. 2016, Sønderby et al. 2016): every latent site, in model and
  guide alike, is scaled by ``min(1, step / warmup_steps)`` at step ``1, 2, ...``
  (:func:`pyro_vae.objectives.scale_latents`).
* **Free bits** (Kingma et al. 2016): the KL of each latent dimension, averaged over the
  minibatch, is replaced by ``max(free_bits, KL_j)`` (:class:`pyro_vae.objectives.FreeBitsELBO`,
  with ``elbo="meanfield"`` only).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..objectives import scale_latents

__all__ = ["KLSchedule"]


@dataclass(frozen=True)
class KLSchedule:
    """KL warm-up and free bits for :func:`pyro_vae.train` (``schedule=KLSchedule(...)``).

    Args:
        warmup_steps: ``N > 0`` raises the weight of every latent site linearly from ``1/N`` to 1
            over the first ``N`` SVI steps; 0 is off. Not with ``elbo="iwae"``
            (``step="compiled"`` takes the factor as an input of the recorded step).
        free_bits: nats per latent dimension (``elbo="meanfield"`` only); 0 is off.

    Example:
        >>> KLSchedule(warmup_steps=1000, free_bits=0.25)
        KLSchedule(warmup_steps=1000, free_bits=0.25)
    """

    warmup_steps: int = 0
    free_bits: float = 0.0

    def __post_init__(self):
        if self.warmup_steps < 0:
            raise ValueError(f"KL warm-up steps must be >= 0, got {self.warmup_steps}")

    def check(self, elbo: str) -> None:
        """Refuse combinations that would train on another objective than the one asked for."""
        if self.warmup_steps and elbo == "iwae":
            raise ValueError("KL warm-up scales the latent sites only, which has no importance-weighted "
                             "analogue: use elbo 'trace' or 'meanfield' with KL warm-up")
        if self.warmup_steps and elbo == "wae":
            raise ValueError("KL warm-up scales the latent sites' log-densities, and the WAE's objective has no KL "
                             "term to warm up (its penalty is lam * MMD): drop the KL warm-up")

    def wrap(self, model, guide, steps_taken, weight_input=None):
        """``(model, guide)`` with the warm-up factor applied to their latent sites, read from
        ``steps_taken()`` (the SVI steps taken so far) at every call; the pair itself without warm-up.

        ``weight_input``: a 0-d tensor read as the factor instead, which the caller fills with
        :meth:`weight` before each step (so that a recorded step takes the factor as an input)."""
        if not self.warmup_steps:
            return model, guide
        factor = (lambda: weight_input) if weight_input is not None else (lambda: self.weight(steps_taken()))
        return scale_latents(model, factor), scale_latents(guide, factor)

    def weight(self, steps_taken: int) -> float:
        """The warm-up factor of the step after ``steps_taken`` steps: ``min(1, (steps_taken + 1) / N)``."""
        return min(1.0, (steps_taken + 1) / self.warmup_steps)
