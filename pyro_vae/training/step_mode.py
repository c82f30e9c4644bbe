"""Which SVI step a run takes: ``train(step="auto" | "eager" | "compiled" | "compiled:replay")``.

* ``"eager"``: :func:`~pyro_vae.training.step.svi_step`, Pyro's Python work at every step.
* ``"compiled"``: :class:`~pyro_vae.training.compiled.CompiledSVIStep`, the whole step recorded
  once and compiled by inductor (``"compiled:replay"``: the recorded graph replayed op by op,
  bitwise equal to eager; for tests).
* ``"auto"`` (the default): ``"compiled"`` when the settings allow it and the run is long enough
  for compiling to pay, else ``"eager"``; on the CPU only for now (no GPU has been at hand to
  check the compiled step there: ``step="compiled"`` runs it on CUDA, checked against eager).
  Recording and compiling cost 6-60 s once; the steps saved pay for it after some hundreds to
  about 12,000 steps (``experiments/README.md``, "The compiled step"): :data:`AUTO_MIN_STEPS`.

A pair that cannot be recorded (its sites or shapes depend on the data, it reads a tensor's value
in Python) is found when the step is recorded and checked, and runs eager with one line saying
why, under ``"auto"`` as under ``"compiled"``.
"""

from __future__ import annotations

import math

import pyro.optim

from ..optim import FusedOptim
from ..pyro_internals import optim_constructor
from .compiled import UPDATES

__all__ = ["AUTO_MIN_STEPS", "BACKEND_OF", "STEP_MODES", "check_compiled_settings", "choose_step",
           "remaining_steps", "steps_per_epoch",
           "unsupported_settings"]

STEP_MODES = ("auto", "eager", "compiled", "compiled:replay")
"""The values of ``train(step=...)`` and ``pyro-vae train --step``."""
BACKEND_OF = {"compiled": "inductor", "compiled:replay": "replay"}
"""The backend of each compiled mode (:class:`~pyro_vae.training.compiled.CompiledSVIStep`)."""
AUTO_MIN_STEPS = 20_000
"""``step="auto"`` compiles a run that has at least this many SVI steps left. The break-even
measured on the 2-core CPU was about 12,000 steps for a 784-64-8 VAE at batch 32 and 9,000 for the
784-500-20 VAE at batch 100 in the prototype (cold inductor cache, a quiet machine), 360-3,400 in
``experiments/results/benchmark_cpu_compiled.md`` (a loaded machine, where each step saved more
milliseconds); 20,000 leaves a margin for slower compilers."""


def unsupported_settings(optimizer, compile, phases: int = 0) -> list[str]:
    """The settings of a run that the compiled step does not take (empty: it can be tried).
    ``optimizer`` is the run's ``PyroOptim``: a :class:`~pyro_vae.optim.FusedOptim` over
    ``torch.optim.Adam`` or ``torch.optim.Adagrad`` (``optimizer="adam"``, ``"adagrad"``) is taken. Objectives, KL warm-up, free bits and
    named arguments are not among these: whether a pair's step can be recorded is found by
    recording and checking it."""
    fused = isinstance(optimizer, FusedOptim) and optim_constructor(optimizer) in UPDATES
    return [what for what, bad in ((_optimizer_label(optimizer), not fused), ("compile", bool(compile)),
                                   (f"training phases ({phases})", phases > 0)) if bad]


def _optimizer_label(optimizer) -> str:
    """``optimizer FusedOptim(Adagrad)``, ``optimizer PyroOptim(Adam)``: class and torch optimizer."""
    inner = optim_constructor(optimizer).__name__ if isinstance(optimizer, pyro.optim.PyroOptim) else repr(optimizer)
    return f"optimizer {type(optimizer).__name__}({inner})"


def check_compiled_settings(optimizer, compile, phases: int = 0) -> None:
    """Refuse, before any step, an explicit ``step="compiled"`` with settings it does not take.

    Raises:
        ValueError: naming each such setting and what the compiled step supports.
    """
    unsupported = unsupported_settings(optimizer, compile, phases)
    if unsupported:
        raise ValueError(f"step='compiled' does not support {', '.join(unsupported)} yet: it supports the optimizer "
                         "'adam' or 'adagrad' (by name, or a FusedOptim over torch.optim.Adam or Adagrad), without compile "
                         "or training phases; "
                         "train with step='eager' (or 'auto', which picks eager for these settings)")


def choose_step(step: str, *, remaining_steps: int, optimizer, compile, phases: int = 0,
                device_type: str = "cpu", resumed_from: str | None = None) -> tuple[str, str]:
    """The step mode a run takes, and why.

    Args:
        step: one of :data:`STEP_MODES`.
        remaining_steps: the SVI steps the run has left (all of them for a fresh run).
        optimizer, compile, phases: the run's settings (see :func:`unsupported_settings`; ``phases``:
            how many :class:`~pyro_vae.training.TrainingPhase` the run has).
        device_type: the data's device type: ``"auto"`` compiles on the CPU only for now (the
            compiled step has not been measured on a GPU yet; ``step="compiled"`` runs it there).
        resumed_from: the mode a resumed run used so far (``step_used`` of its ``config.json``);
            ``"auto"`` keeps it where the settings allow, so that the resumed run stays bitwise
            equal to an uninterrupted one (whatever the steps left).

    Returns:
        ``(mode, reason)``: ``mode`` is ``"eager"``, ``"compiled"`` or ``"compiled:replay"``;
        ``reason`` says in one line why (recorded in ``config.json`` as ``step_reason``).

    Raises:
        ValueError: an unknown ``step``, or ``"compiled"`` with settings it does not take.
    """
    if step not in STEP_MODES:
        raise ValueError(f"step must be one of {', '.join(STEP_MODES)}, got {step!r}")
    if step != "auto":
        if step != "eager":
            check_compiled_settings(optimizer, compile, phases)
        return step, f"step={step!r} was asked for"
    unsupported = unsupported_settings(optimizer, compile, phases)
    if unsupported:
        return "eager", f"step='auto' runs eager: the compiled step does not support {', '.join(unsupported)} yet"
    if resumed_from == "eager" or resumed_from in BACKEND_OF and device_type == "cpu":
        return resumed_from, f"step='auto' continues the run in the mode it used so far ({resumed_from!r})"
    if device_type != "cpu":
        return "eager", (f"step='auto' runs eager on {device_type}: the compiled step has not been checked on this "
                         "device yet; step='compiled' runs it (checked against eager before the first step)")
    if remaining_steps < AUTO_MIN_STEPS:
        return "eager", (f"step='auto' runs eager: {remaining_steps} steps left, fewer than the {AUTO_MIN_STEPS} "
                         "after which compiling (10-60 s once) pays")
    return "compiled", f"step='auto' compiles: {remaining_steps} steps left (>= {AUTO_MIN_STEPS})"


def steps_per_epoch(num_train: int, batch_size: int, world: int = 1) -> int:
    """SVI steps in an epoch: ``ceil(num_train / batch_size)``, less a last minibatch smaller than
    the number of processes ``world`` (which is dropped)."""
    steps, remainder = math.ceil(num_train / batch_size), num_train % batch_size
    return steps - 1 if world > 1 and remainder and remainder < world else steps


def remaining_steps(num_train: int, batch_size: int, epochs: int, epochs_done: int = 0, world: int = 1) -> int:
    """SVI steps of the epochs a run has left."""
    return max(epochs - epochs_done, 0) * steps_per_epoch(num_train, batch_size, world)
