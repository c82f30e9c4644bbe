"""The SVI step: the loss of one minibatch, its gradients, a finiteness check, one optimizer update.

:class:`ELBOLoss` is the pair's objective as a ``torch.nn.Module`` (so that
``DistributedDataParallel`` can wrap it) and :func:`svi_step` is what the trainer runs once per
minibatch. A step whose loss or gradient is not finite is never applied; the trainer decides what
happens next (:class:`NonFiniteLossError`, or a learning-rate back-off).
"""

from __future__ import annotations

import pyro
import torch

from .. import distributed
from ..pyro_internals import unconstrained_param

__all__ = ["ELBOLoss", "NonFiniteLossError", "ddp_loss", "explain_nonfinite", "owner_module", "svi_step"]


class NonFiniteLossError(FloatingPointError):
    """A non-finite loss or gradient: the step that produced it was not applied."""


class ELBOLoss(torch.nn.Module):
    """The negative ELBO of a pair as a ``torch.nn.Module``.

    The counterpart of Pyro's ``ELBOModule`` for pairs whose networks belong to one
    ``nn.Module``: ``module`` holds every parameter the pair registers with ``pyro.module``, so
    ``DistributedDataParallel`` can average their gradients.

    Args:
        module: the ``nn.Module`` holding the pair's networks, or ``None``.
        objective: a Pyro ``ELBO`` with ``differentiable_loss`` (see :mod:`pyro_vae.objectives`).
        model, guide: the pair.

    ``forward(x, *args)`` returns the loss of the minibatch ``x`` (``(batch, D)``): a scalar
    device tensor, in nats summed over the minibatch.
    """

    def __init__(self, module: torch.nn.Module | None, objective, model, guide):
        super().__init__()
        self.module, self.objective, self.model, self.guide = module, objective, model, guide

    def forward(self, x, *args, **kwargs):
        return self.objective.differentiable_loss(self.model, self.guide, x, *args, **kwargs)


def svi_step(loss_fn, optim, x: torch.Tensor, *args, grad_scale: float = 1.0, updates=None,
             **kwargs) -> tuple[torch.Tensor, bool]:
    """Loss and gradients on the minibatch ``x``, the optimizer step only if both are finite.

    Args:
        loss_fn: ``loss_fn(x, *args)`` returns the minibatch's loss (an :class:`ELBOLoss`).
        optim: a ``PyroOptim`` (called as ``optim(params)``).
        x, args, kwargs: the minibatch ``(batch, D)`` and its per-datapoint arguments (``(batch, ...)``),
            positional and named.
        grad_scale: multiplies the loss before ``backward`` (the number of processes under DDP,
            which averages gradients, so that the step follows the whole minibatch's gradient).
        updates: ``updates(name) -> bool`` picks, by their param-store names, the parameters the
            step updates (``None``: all that the loss reaches). The gradients of the others are
            dropped, not kept for a later step: a training phase
            (:class:`~pyro_vae.training.TrainingPhase`) owns its parameters.

    Returns:
        ``(loss, applied)``: the loss as a detached device tensor (nats, summed over the
        minibatch) and whether the update was applied. The finiteness check reads one boolean
        (one host sync; agreed across processes when distributed).
    """
    with pyro.poutine.trace(param_only=True) as capture:
        loss = loss_fn(x, *args, **kwargs)
        (loss * grad_scale if grad_scale != 1.0 else loss).backward()
    # one entry per tensor (a module registered under two names appears twice), as in Pyro's SVI
    sites = capture.trace.nodes
    params = list(dict.fromkeys(unconstrained_param(site["value"]) for site in sites.values()))
    if updates is not None:  # a tensor registered under several names is updated only if all of them pass
        dropped = {id(unconstrained_param(site["value"])) for name, site in sites.items() if not updates(name)}
        kept = {id(p) for p in params} - dropped
        for p in params:
            if id(p) not in kept:
                p.grad = None
        params = [p for p in params if id(p) in kept]
    grads = [p.grad for p in params if p.grad is not None]
    finite = torch.isfinite(loss.detach())
    if grads:
        finite = finite & torch.isfinite(_total_norm(grads))
    applied = distributed.all_true(finite)
    if applied:
        optim(params)
    for p in params:
        p.grad = None
    return loss.detach(), applied


RELAXED = ("RelaxedOneHotCategorical", "RelaxedBernoulli", "RelaxedOneHotCategoricalStraightThrough",
           "RelaxedBernoulliStraightThrough")
"""Concrete / Gumbel-softmax distributions: at a low temperature their draws reach the edge of the
support in float32, where the density is not finite."""


def explain_nonfinite(model, guide, x: torch.Tensor, *args, **kwargs) -> str:
    """Why a minibatch's loss or gradient may be non-finite: the first site of the pair whose
    log-density, or its gradient with respect to the parameters, is not finite on a rerun of guide
    and model on ``x`` (without touching the RNG streams or the parameters' gradients), with the
    likely cause for relaxed (Concrete) latents; ``""`` when the rerun finds none."""
    cuda = [x.device] if x.device.type == "cuda" else []
    params = [p for _, p in pyro.get_param_store().named_parameters()]
    with torch.random.fork_rng(devices=cuda), torch.enable_grad(), pyro.poutine.block(), \
            pyro.validation_enabled(False):
        guide_trace = pyro.poutine.trace(guide).get_trace(x, *args, **kwargs)
        model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(x, *args, **kwargs)
        for role, trace in (("guide", guide_trace), ("model", model_trace)):
            for name, site in trace.nodes.items():
                if site["type"] != "sample":
                    continue
                log_prob = site["fn"].log_prob(site["value"]).sum()
                what = _nonfinite_part(log_prob, params)
                if what:
                    return _nonfinite_reason(role, name, site["fn"], what)
    return ""


def _nonfinite_part(log_prob: torch.Tensor, params: list) -> str:
    """``"log-density"`` or ``"gradient of the log-density"`` when that is not finite, else ``""``."""
    if not bool(torch.isfinite(log_prob)):
        return "log-density"
    if log_prob.requires_grad:
        grads = torch.autograd.grad(log_prob, params, allow_unused=True, retain_graph=True)
        if not all(bool(torch.isfinite(g).all()) for g in grads if g is not None):
            return "gradient of the log-density"
    return ""


def _nonfinite_reason(role: str, name: str, fn, what: str) -> str:
    base = fn
    while hasattr(base, "base_dist") and type(base).__name__ not in RELAXED:
        base = base.base_dist
    text = f"the {what} of {role} site {name!r} ({type(base).__name__}) is not finite on this minibatch"
    if type(base).__name__ in RELAXED:
        temperature = float(torch.as_tensor(base.temperature).min())
        text += (f": a relaxed (Concrete) latent at temperature {temperature:g} draws values at the edge of its "
                 "support in float32, where the density is not finite. Raise the temperature (or anneal it more "
                 "slowly); the learning rate is not the cause")
    return text


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together, in one fused pass where torch has it (>= 2.6)."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.stack([g.detach().norm() for g in grads]).norm()


def owner_module(model, guide, module: torch.nn.Module | None = None) -> torch.nn.Module | None:
    """``module`` if given, else the one ``nn.Module`` whose methods ``model`` and ``guide`` are (or
    whose method one of them is, the other a plain function). ``None`` when no one module holds
    both: e.g. a model method beside a guide that is a module itself (such as
    :class:`~pyro_vae.AutoAmortizedNormal`), or a plain-function model beside one; then distributed
    training and ``compile`` ask for ``module=...``, and a run folder does not claim a shipped pair."""
    if module is not None:
        return module

    def owner(fn):
        holder = getattr(fn, "__self__", fn)
        return holder if isinstance(holder, torch.nn.Module) else None

    owners = [o for o in (owner(model), owner(guide)) if o is not None]
    if len({id(o) for o in owners}) != 1:
        return None
    if len(owners) == 1 and any(isinstance(fn, torch.nn.Module) for fn in (model, guide)):
        return None  # a module guide (or model) beside a function: it does not hold the other's networks
    return owners[0]


def ddp_loss(loss: ELBOLoss, device: torch.device):
    """Wrap the loss in ``DistributedDataParallel``; every parameter in Pyro's param store must be
    a parameter of the pair's module (so DDP averages its gradient)."""
    if loss.module is None:
        raise ValueError("distributed training needs the nn.Module holding the pair's networks: make model and "
                         "guide methods of one nn.Module (as the shipped pairs are) or pass module=...")
    owned = {id(p) for p in loss.module.parameters()}
    stray = [name for name, p in pyro.get_param_store().named_parameters() if id(p) not in owned]
    if stray:
        raise ValueError(f"distributed training: parameters {stray[:5]} are in Pyro's param store but not in the "
                         "pair's nn.Module, so DistributedDataParallel would not average their gradients; "
                         "register them as nn.Parameters of the module")
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index or 0] if device.type == "cuda" else None
    return DistributedDataParallel(loss, device_ids=device_ids)
