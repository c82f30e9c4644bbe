"""Optimizers for :func:`pyro_vae.train`: one torch optimizer over all parameters.

Pyro's ``PyroOptim`` (``pyro.optim.Adam`` etc.) builds one torch optimizer *per parameter* and
steps them one after the other: at the small MLPs of the VAE literature that costs about a
millisecond per step on a CPU (a kernel launch per parameter and per operation on a GPU).
:class:`FusedOptim` keeps Pyro's interface (``optim(params)``, ``get_state``/``set_state`` keyed
by parameter name, so checkpoints of either load into the other) but steps a single torch
optimizer over every parameter, with torch's fused kernel (``fused=True``) where the optimizer
and the device have one (Adam and Adagrad on CPU and CUDA in recent torch), its ``foreach``
implementation otherwise. The update rule is the same; only float rounding differs.
"""

from __future__ import annotations

import inspect
import math

import pyro
import pyro.optim
import torch

from .names import unknown_name
from .pyro_internals import (
    optim_args,
    optim_constructor,
    pending_optim_state,
    per_param_optimizers,
    set_optim_args,
    set_pending_optim_state,
)

__all__ = ["OPTIMIZERS", "FusedOptim", "build_torch_optimizer", "fused_adagrad_step", "fused_adam_step", "make_optimizer",
           "scale_learning_rate", "set_learning_rate"]

OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}
_IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def build_torch_optimizer(constructor, params: list, args: dict) -> torch.optim.Optimizer:
    """``constructor(params, **args)`` with torch's fused kernel when it has one for this optimizer and
    these parameters' device and dtype (and ``args`` choose no implementation), else the default."""
    if "fused" in inspect.signature(constructor).parameters and "fused" not in args and "foreach" not in args:
        try:
            return constructor(params, **args, fused=True)
        except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
            pass
    return constructor(params, **args)


class FusedOptim(pyro.optim.PyroOptim):
    """A ``PyroOptim`` that steps one ``torch.optim`` optimizer over all the parameters it sees.

    Args:
        optim_constructor: a ``torch.optim.Optimizer`` class, e.g. ``torch.optim.Adam``.
        optim_args: its keyword arguments, e.g. ``{"lr": 1e-3}`` (a dict; per-parameter
            callables as in ``PyroOptim`` are not supported).

    Parameters are added the first time a step sees them (Pyro creates them lazily). The state
    is exchanged in ``PyroOptim``'s form, ``{param name: state_dict of a one-parameter
    optimizer}``, so a checkpoint written with ``pyro.optim.Adam`` resumes with this one and back.
    """

    def __init__(self, optim_constructor, optim_args: dict):
        if not isinstance(optim_args, dict):
            raise TypeError("FusedOptim takes optim_args as a dict, e.g. {'lr': 1e-3}")
        super().__init__(optim_constructor, optim_args)
        self.optimizer: torch.optim.Optimizer | None = None
        self._params: list[torch.Tensor] = []  # in the optimizer's order
        self._seen: set[torch.Tensor] = set()

    def __call__(self, params, *args, **kwargs) -> None:
        """One optimizer step on every parameter the optimizer holds (``params`` adds new ones)."""
        self.register(params)
        self.optimizer.step()

    def register(self, params) -> torch.optim.Optimizer:
        """Add the parameters of ``params`` not seen yet (with any state loaded by ``set_state``
        for them) without stepping; returns the torch optimizer, which holds every state tensor."""
        new = [p for p in dict.fromkeys(params) if p not in self._seen]
        if new:
            self._rebuild(new)
        return self.optimizer

    def _rebuild(self, new: list[torch.Tensor]) -> None:
        """A new torch optimizer over the old and the new parameters, keeping every state."""
        waiting = {**pending_optim_state(self), **self.get_state()}
        self._params = self._params + new
        self._seen = set(self._params)
        self.optimizer = build_torch_optimizer(optim_constructor(self), self._params, optim_args(self))
        names = [pyro.get_param_store().param_name(p) for p in self._params]
        saved = [waiting.pop(name, None) if name is not None else None for name in names]
        set_pending_optim_state(self, waiting)
        if any(s is not None for s in saved):
            group = {k: v for k, v in next(s for s in saved if s is not None)["param_groups"][0].items()
                     if k != "params"}
            group.update({k: v for k, v in self.optimizer.param_groups[0].items() if k in _IMPLEMENTATION_FLAGS})
            self.optimizer.load_state_dict({
                "state": {i: s["state"][0] for i, s in enumerate(saved) if s is not None and 0 in s["state"]},
                "param_groups": [{**group, "params": list(range(len(self._params)))}],
            })

    def get_state(self) -> dict:
        """``{param name: state_dict of a one-parameter optimizer}``, as ``PyroOptim.get_state``."""
        if self.optimizer is None:
            return dict(pending_optim_state(self))
        full = self.optimizer.state_dict()  # one param group (see _rebuild), indices 0..n-1
        hyper = {k: v for k, v in full["param_groups"][0].items() if k != "params"}
        state = {}
        for i, p in enumerate(self._params):
            name = pyro.get_param_store().param_name(p)
            if name is not None:
                state[name] = {"state": {0: full["state"][i]} if i in full["state"] else {},
                               "param_groups": [{**hyper, "params": [0]}]}
        return state


def _torch_optimizers(optim: pyro.optim.PyroOptim) -> list[torch.optim.Optimizer]:
    if isinstance(optim, FusedOptim):
        return [] if optim.optimizer is None else [optim.optimizer]
    return per_param_optimizers(optim)


def _update_lr(optim: pyro.optim.PyroOptim, update) -> None:
    for opt in _torch_optimizers(optim):
        for group in opt.param_groups:
            group["lr"] = update(group["lr"])
    args = optim_args(optim)
    if isinstance(args, dict) and "lr" in args:
        set_optim_args(optim, {**args, "lr": update(args["lr"])})


def scale_learning_rate(optim: pyro.optim.PyroOptim, factor: float) -> None:
    """Multiply the learning rate of every parameter (and of those still to come) by ``factor``."""
    _update_lr(optim, lambda lr: lr * factor)


def set_learning_rate(optim: pyro.optim.PyroOptim, lr: float) -> None:
    """Set the learning rate of every parameter (and of those still to come) to ``lr``."""
    _update_lr(optim, lambda _: lr)


def make_optimizer(name: str, lr: float) -> FusedOptim:
    """The optimizer called ``name`` (``adam`` or ``adagrad``, torch's defaults otherwise) with
    learning rate ``lr``, as a :class:`FusedOptim`."""
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"learning rate must be positive, got {lr}")
    if name not in OPTIMIZERS:
        raise unknown_name("optimizer", name, tuple(OPTIMIZERS))
    return FusedOptim(OPTIMIZERS[name], {"lr": lr})


def fused_adam_step(params, grads, exp_avgs, exp_avg_sqs, steps, group: dict, found_inf) -> None:
    """One update of torch's fused Adam kernel (``torch._fused_adam_``, what
    ``torch.optim.Adam(fused=True).step()`` calls) with the hyper-parameters of the param
    ``group``; skipped where ``found_inf`` (a float 0-d tensor) is 1. ``steps`` must already count
    this step (``Adam`` adds 1 before the kernel)."""
    beta1, beta2 = group["betas"]
    torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=group["lr"], beta1=beta1, beta2=beta2,
                       weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                       maximize=group["maximize"], found_inf=found_inf)


def fused_adagrad_step(params, grads, state_sums, steps, group: dict, found_inf) -> None:
    """One update of torch's fused Adagrad kernel (``torch._fused_adagrad_``, what
    ``torch.optim.Adagrad(fused=True).step()`` calls) with the hyper-parameters of the param
    ``group``; skipped where ``found_inf`` (a float 0-d tensor) is 1. ``steps`` must already count
    this step (``Adagrad`` adds 1 before the kernel)."""
    torch._fused_adagrad_(params, grads, state_sums, steps, lr=group["lr"], lr_decay=group["lr_decay"],
                          weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                          grad_scale=None, found_inf=found_inf)
