"""Training phases: more objectives in the same run, each with its own optimizer and parameters.

Some members of the VAE family train more than one player. A VAE-GAN (Larsen et al. 2016) updates
encoder and decoder on one loss and a discriminator on another, each with its own optimizer. A
:class:`TrainingPhase` is one such player: a loss callable (``differentiable_loss(model, guide, x,
*args)``, as the pair's objective), a ``PyroOptim``, the parameters it owns (a ``pyro.module`` /
``pyro.param`` name) and when it runs. On every minibatch the trainer runs::

    the pair's SVI step: its objective, updating every parameter that no phase owns
    for each phase, in the order given, if it is due at this step:
        the phase's step: its loss, updating only the parameters it owns

Each loss's gradients reach only the parameters of its own step; the rest are dropped
(:func:`~pyro_vae.training.svi_step`'s ``updates``). A phase's optimizer state is part of every
checkpoint, so a run with phases resumes bitwise like any other; its mean loss per datapoint over
the epoch is a metric, ``train_<name>_loss``. A non-finite phase loss or gradient stops the run
(its step is not applied; ``nonfinite_backoff`` backs off the pair's optimizer only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyro
import pyro.optim
import torch
from pyro import poutine

from ..models.vaegan import VAEGAN
from ..models.wae import WAEGAN
from ..objectives import elbo_label, get_elbo, vaegan_objectives
from ..objectives.wae_gan import wae_gan_objectives
from ..optim import make_optimizer
from .checkpoint import CheckpointError
from .step import ELBOLoss, NonFiniteLossError, svi_step

__all__ = ["PhaseRunner", "TrainingPhase", "check_phases", "pair_phases"]


@dataclass
class TrainingPhase:
    """One more objective trained in the same run, on the parameters it owns.

    Args:
        name: names the phase in metrics (``train_<name>_loss``), checkpoints and errors; a
            Python identifier.
        objective: the loss (an object with ``differentiable_loss(model, guide, *args,
            **kwargs)`` returning a scalar in nats summed over the minibatch, e.g.
            :class:`~pyro_vae.objectives.DiscriminatorLoss`).
        optim: its own ``PyroOptim`` (e.g. ``pyro.optim.Adam({"lr": 2e-4, "betas": (0.5, 0.999)})``).
        params: the parameters it owns, by name: every param-store entry named ``params`` or
            ``params$$$...`` (the parameters of ``pyro.module(params, net)``).
        every: run on every ``every``-th step (1: every minibatch).
        start: the first step (counted from 0) at which it runs.
    """

    name: str
    objective: object
    optim: pyro.optim.PyroOptim
    params: str
    every: int = 1
    start: int = 0

    def owns(self, name: str) -> bool:
        """Whether the param-store entry ``name`` is this phase's."""
        return name == self.params or name.startswith(self.params + "$$$")

    def due(self, step: int) -> bool:
        """Whether the phase runs at step ``step`` (the number of SVI steps taken before it)."""
        return step >= self.start and (step - self.start) % self.every == 0

    def record(self) -> dict:
        """The phase's settings as ``config.json`` records them (a resumed run must match them)."""
        return {"name": self.name, "objective": elbo_label(self.objective), "params": self.params,
                "every": self.every, "start": self.start, "optimizer": type(self.optim).__name__}


def check_phases(phases, model, guide, objective, example: tuple, named: dict, world: int) -> None:
    """Refuse, before the first step, phases the trainer cannot run as asked: bad settings, a phase
    whose loss reaches none of the parameters it owns or is not finite on ``example`` (a small
    batch ``(x, *args)`` with per-datapoint ``named`` arguments), or a pair's objective left with
    no parameter to update. The RNG streams are left as they were.

    Raises:
        ValueError: naming the phase and the problem.
    """
    names = [getattr(p, "name", None) for p in phases]
    for phase in phases:
        _check_settings(phase, names)
    if not phases:
        return
    if world > 1:
        raise ValueError("training phases do not go with distributed training yet: train on one process")
    with torch.random.fork_rng(devices=[example[0].device] if example[0].device.type == "cuda" else []):
        for phase in phases:
            loss, params = _param_names(phase.objective, model, guide, example, named)
            reached = [n for n in params if phase.owns(n)]
            if not reached:
                raise ValueError(f"training phase {phase.name!r} would update nothing: its loss reaches no parameter "
                                 f"named {phase.params!r} or {phase.params + '$$$...'!r} (it reaches "
                                 f"{sorted(params)[:6]}); set params= to the pyro.module name of its networks")
            if not bool(torch.isfinite(loss).all()) or loss.dim() != 0:
                raise ValueError(f"training phase {phase.name!r}: its loss on a small batch is {loss}, not a finite "
                                 "scalar (nats summed over the minibatch)")
        _, params = _param_names(objective, model, guide, example, named)
        if not [n for n in params if not any(p.owns(n) for p in phases)]:
            raise ValueError(f"the phases {names} own every parameter the pair's objective reaches: the pair's SVI "
                             "step would update nothing")


def _check_settings(phase, names: list) -> None:
    if not isinstance(phase, TrainingPhase):
        raise TypeError(f"phases take TrainingPhase objects, not {type(phase).__name__}")
    if not re.fullmatch(r"[A-Za-z_]\w*", phase.name) or names.count(phase.name) > 1:
        raise ValueError(f"training phase names must be distinct identifiers, got {phase.name!r} in {names}")
    if not callable(getattr(phase.objective, "differentiable_loss", None)):
        raise TypeError(f"training phase {phase.name!r}: its objective {type(phase.objective).__name__} has no "
                        "differentiable_loss(model, guide, *args)")
    if not isinstance(phase.optim, pyro.optim.PyroOptim):
        raise TypeError(f"training phase {phase.name!r}: optim must be a PyroOptim, not {type(phase.optim).__name__}")
    if not (isinstance(phase.every, int) and phase.every >= 1 and isinstance(phase.start, int) and phase.start >= 0):
        raise ValueError(f"training phase {phase.name!r}: every must be an integer >= 1 and start >= 0, got "
                         f"every={phase.every!r}, start={phase.start!r}")


def _param_names(objective, model, guide, example: tuple, named: dict) -> tuple[torch.Tensor, set]:
    """The loss of ``objective`` on ``example`` and the names of the parameters it reaches."""
    with poutine.trace(param_only=True) as capture, torch.enable_grad():
        loss = objective.differentiable_loss(model, guide, *example, **named)
    return loss.detach(), set(capture.trace.nodes)


class PhaseRunner:
    """The trainer's side of its phases: their steps, the epoch's loss sums, their optimizer states.

    Args:
        phases: the :class:`TrainingPhase` list (checked by :func:`check_phases`).
        model, guide: the pair, as the phases' losses receive it.
        device: where the loss sums live (read once per epoch).
    """

    def __init__(self, phases, model, guide, device: torch.device):
        self.phases = list(phases)
        self.losses = [ELBOLoss(None, phase.objective, model, guide) for phase in self.phases]
        self.total = torch.zeros(len(self.phases), device=device)
        self.points = [0] * len(self.phases)

    def pair_updates(self):
        """The ``updates`` filter of the pair's own SVI step: every parameter no phase owns."""
        if not self.phases:
            return None
        return lambda name: not any(phase.owns(name) for phase in self.phases)

    def step(self, step: int, where: str, x: torch.Tensor, *args, **named) -> None:
        """Run each phase due at ``step`` on the minibatch ``x``.

        Raises:
            NonFiniteLossError: a phase's loss or gradient is not finite (its step not applied).
        """
        for i, (phase, loss_fn) in enumerate(zip(self.phases, self.losses)):
            if not phase.due(step):
                continue
            loss, applied = svi_step(loss_fn, phase.optim, x, *args, updates=phase.owns, **named)
            if not applied:
                raise NonFiniteLossError(f"non-finite loss or gradient of training phase {phase.name!r} at {where}: "
                                         f"loss {float(loss)}; the step was not applied. Lower that phase's learning "
                                         "rate")
            self.total[i] += loss
            self.points[i] += x.shape[0]

    def end_epoch(self) -> dict:
        """The epoch's mean loss per datapoint of each phase (``train_<name>_loss``, nats; ``None``
        for a phase that did not run), then zero the sums for the next epoch. One host read."""
        totals = self.total.tolist()
        metrics = {f"train_{phase.name}_loss": (total / points if points else None)
                   for phase, total, points in zip(self.phases, totals, self.points)}
        self.total.zero_()
        self.points = [0] * len(self.phases)
        return metrics

    def state(self) -> dict:
        """The checkpoint entry: loss sums so far in the epoch and each phase's optimizer state."""
        return {"total": self.total.detach().cpu(), "points": list(self.points),
                "optimizers": {phase.name: phase.optim.get_state() for phase in self.phases}}

    def restore(self, saved: dict | None) -> None:
        """Continue from :meth:`state`'s entry of a checkpoint (``None``: one written without phases).

        Raises:
            CheckpointError: the run was written with other phases (by name).
        """
        before, now = list((saved or {}).get("optimizers", {})), [phase.name for phase in self.phases]
        if before != now:
            raise CheckpointError(f"cannot resume: the run was trained with the training phases {before}, this one "
                                  f"has {now}; resume it with the same phases")
        if not self.phases:
            return
        self.total = saved["total"].to(self.total.device)
        self.points = list(saved["points"])
        for phase in self.phases:
            phase.optim.set_state(saved["optimizers"][phase.name])


def pair_phases(vae, objective, num_particles: int = 1, free_bits: float = 0.0) -> tuple:
    """``(objective, free_bits, phases)`` to ``train`` a shipped pair ``vae`` with its objective
    ``objective`` (a name or an ELBO object) as ``pyro-vae train`` does. A VAE-GAN: its objective wrapped in
    :class:`~pyro_vae.objectives.VAEGANLoss` (which then carries the free bits) and its
    discriminator's training phase; a WAE-GAN: its own two objectives
    (:func:`~pyro_vae.objectives.wae_gan.wae_gan_objectives`; another ``--elbo`` is refused). Each
    discriminator takes Adam at the pair's ``discriminator_lr``. Any other pair: its objective as
    given, no phases."""
    if isinstance(vae, VAEGAN):
        inner = get_elbo(objective, num_particles, free_bits, data_plate="data") if isinstance(objective, str) \
            else objective
        elbo, discriminator_loss = vaegan_objectives(vae.discriminator, inner)
        return elbo, 0.0, [TrainingPhase("discriminator", discriminator_loss,
                                         make_optimizer("adam", vae.discriminator_lr), params="discriminator")]
    if isinstance(vae, WAEGAN):
        if objective != vae.default_elbo:
            raise ValueError(f"the WAE-GAN trains with its own two objectives (encoder and decoder; latent "
                             f"discriminator), not {objective!r}: drop --elbo")
        elbo, discriminator_loss = wae_gan_objectives(vae.latent_discriminator)
        return elbo, free_bits, [TrainingPhase("latent_discriminator", discriminator_loss,
                                               make_optimizer("adam", vae.discriminator_lr),
                                               params="latent_discriminator")]
    return objective, free_bits, []
