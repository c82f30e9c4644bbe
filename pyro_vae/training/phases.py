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
(its step is not applied; ``nonfinite_backoff`` backs off the pair's optimizer only). Phases run after
an *applied* step of the pair only (a skipped, non-finite step of the pair skips them too). Their
settings (``config.json``'s ``phases``: names, objectives, owned names, schedule, optimizer class and
learning rate) must match on resume. A pair that names networks in ``phase_params`` (a GAN's
discriminator) is refused without a phase owning each of them.

A phase owns what is registered under its own name: ``pyro.module(params, net)`` (entries
``params$$$...``) or ``pyro.param(params)``. Give each network a name of its own: a submodule of a
module registered whole (``pyro.module("pair", self)``) or a ``PyroModule``'s parameters cannot be owned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyro
import pyro.optim
import torch
from pyro import poutine

from ..objectives import elbo_label
from ..pyro_internals import unconstrained_param
from .checkpoint import CheckpointError
from .step import ELBOLoss, NonFiniteLossError, svi_step

__all__ = ["PhaseRunner", "TrainingPhase", "check_phases"]


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
        args = getattr(self.optim, "pt_optim_args", None)
        return {"name": self.name, "objective": elbo_label(self.objective), "params": self.params,
                "every": self.every, "start": self.start, "optimizer": type(self.optim).__name__,
                "lr": args.get("lr") if isinstance(args, dict) else None}


def check_phases(phases, model, guide, objective, example: tuple, named: dict, world: int,
                 required: tuple = ()) -> None:
    """Refuse, before the first step, phases the trainer cannot run as asked: bad settings; a pair
    whose ``required`` networks (by ``pyro.module`` name, a pair's ``phase_params``: a GAN's
    discriminator) no phase owns; two phases owning one parameter, or a tensor registered under a
    phase's name and another; a phase whose loss, on ``example`` (a small batch ``(x, *args)`` with
    per-datapoint ``named`` arguments), is not a finite scalar or has no gradient for the
    parameters it owns; a pair's objective left with no parameter to update. The RNG streams are
    left as they were.

    Raises:
        ValueError: naming the phase (or the network) and the problem.
    """
    names = [getattr(p, "name", None) for p in phases]
    for phase in phases:
        _check_settings(phase, names)
    for net in required:
        if not any(phase.owns(net) for phase in phases):
            raise ValueError(f"this pair trains its network {net!r} as its own training phase, and no phase owns it: "
                             "its objective alone would train a different model (for a shipped pair, "
                             "pyro_vae.training.pair_phases(vae, elbo) gives the objective and the phases)")
    if not phases:
        return
    if world > 1:
        raise ValueError("training phases do not go with distributed training yet: train on one process")
    reached = {}
    with torch.random.fork_rng(devices=[example[0].device] if example[0].device.type == "cuda" else []):
        for phase in phases:
            loss, params = _param_names(phase.objective, model, guide, example, named)
            _check_reach(phase, loss, params)
            reached.update(params)
        _, params = _param_names(objective, model, guide, example, named)
    if not [n for n in params if not any(p.owns(n) for p in phases)]:
        raise ValueError(f"the phases {names} own every parameter the pair's objective reaches: the pair's SVI "
                         "step would update nothing")
    _check_ownership(phases, {**reached, **params})


def _check_reach(phase, loss: torch.Tensor, params: dict) -> None:
    if loss.dim() != 0 or not bool(torch.isfinite(loss)):
        raise ValueError(f"training phase {phase.name!r}: its loss on a small batch is {loss}, not a finite scalar "
                         "(nats summed over the minibatch)")
    owned = [p for n, p in params.items() if phase.owns(n)]
    grads = torch.autograd.grad(loss, owned, allow_unused=True) if owned and loss.requires_grad else []
    if not any(g is not None for g in grads):
        raise ValueError(f"training phase {phase.name!r} would update nothing: its loss has no gradient for a "
                         f"parameter named {phase.params!r} or {phase.params + '$$$...'!r} (it reaches "
                         f"{sorted(params)[:6]}); set params= to the pyro.module name of its networks")


def _check_ownership(phases, params: dict) -> None:
    """Refuse a tensor of ``params`` (by name: those the run's losses reach) owned by two phases, or by a phase
    under one name and not under another."""
    owners: dict[int, set] = {}
    for name, value in params.items():
        owners.setdefault(id(value), set()).update({p.name for p in phases if p.owns(name)} or {None})
    for name, value in params.items():
        if len(owners[id(value)]) > 1:
            raise ValueError(f"parameter {name!r} would be updated by {sorted(map(str, owners[id(value)]))} "
                             "(None: the pair's step): two phases own it, or the tensor is registered under a "
                             "phase's name and another; give each network one pyro.module name and one owner")


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


def _param_names(objective, model, guide, example: tuple, named: dict) -> tuple[torch.Tensor, dict]:
    """The loss of ``objective`` on ``example`` and the parameters it reaches, by name (unconstrained)."""
    with poutine.trace(param_only=True) as capture, torch.enable_grad():
        loss = objective.differentiable_loss(model, guide, *example, **named)
    return loss, {name: unconstrained_param(site["value"]) for name, site in capture.trace.nodes.items()}


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
