"""What the faster steps of a run need besides the step itself.

* :func:`recording_batches`: the two minibatches that the compiled step
  (:mod:`pyro_vae.training.compiled`) is recorded on and checked on.
* :func:`compile_targets` and :func:`compiled_networks`: the opt-in ``torch.compile`` of each
  network the pair calls, for the duration of a run, Pyro's bookkeeping staying eager; a pair
  whose parameters would stay eager is refused up front.
"""

from __future__ import annotations

from contextlib import contextmanager

import pyro
import torch

__all__ = ["compile_targets", "compiled_networks", "recording_batches"]


def recording_batches(data, labels: bool, n: int, names: tuple = ()) -> tuple[tuple, tuple]:
    """Two minibatches ``(x, *args, *named)`` of ``n`` training points (the values of the named
    per-datapoint arguments ``names`` last), to record a graph on and to check it on: the first
    ``n`` points and the last ``n`` (binarized at 0.5 when the data set is)."""
    batches = []
    for part in (slice(0, n), slice(-n, None)):
        x = data.train[part]
        x = (x > 0.5).to(x.dtype) if data.binarize else x
        named = data.named("train", part)
        batches.append((x, *((data.train_labels[part],) if labels else ()), *(named[k] for k in names)))
    return batches[0], batches[1]


def compile_targets(module: torch.nn.Module | None, model, guide, *args) -> list[torch.nn.Module]:
    """The networks that ``torch.compile`` must wrap for the pair to run compiled: the outermost
    submodules of ``module`` that a run of guide and model (on the example ``args``) calls as
    modules. A ``ModuleList`` is never called, so its members are the targets; a Pyro
    ``TransformModule`` is called as a transform, so the modules it calls are.

    Raises:
        ValueError: no ``module``, or parameters of ``module`` that no called submodule holds (a
            compiled run would leave them eager: ``compile`` would not do what it says).
    """
    if module is None:
        raise ValueError("compile=True needs the nn.Module holding the pair's networks: make model and guide "
                         "methods of one nn.Module (as the shipped pairs are) or pass module=...")
    called = _called_modules(module, model, guide, *args)
    targets: dict[str, torch.nn.Module] = {}
    for name, sub in module.named_modules():
        if id(sub) in called and not any(name == t or name.startswith(t + ".") for t in targets if t):
            targets[name] = sub
    covered = {id(p) for t in targets.values() for p in t.parameters()}
    eager = [name for name, p in module.named_parameters() if id(p) not in covered]
    if eager:
        raise ValueError(f"compile=True would leave parameters {eager[:5]} eager: no submodule holding them is "
                         "called as an nn.Module (parameters used directly, or nets called through another "
                         "method), so torch.compile cannot wrap them; train without compile, or call those nets "
                         "as modules")
    return list(targets.values())


def _called_modules(module: torch.nn.Module, model, guide, *args) -> set[int]:
    """``id`` of every submodule of ``module`` called (``__call__``) while guide and model run once
    on ``args``, without gradients, without touching the param store's values or the RNG streams."""
    called: set[int] = set()
    hooks = [sub.register_forward_pre_hook(lambda m, inputs: called.add(id(m))) for sub in module.modules()]
    cuda = sorted({a.device for a in args if isinstance(a, torch.Tensor) and a.device.type == "cuda"}, key=str)
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad(), pyro.poutine.block():
            guide_trace = pyro.poutine.trace(guide).get_trace(*args)
            pyro.poutine.replay(model, trace=guide_trace)(*args)
    finally:
        for hook in hooks:
            hook.remove()
    return called


@contextmanager
def compiled_networks(targets: list[torch.nn.Module], mode: bool | str):
    """``torch.compile`` each module of ``targets`` (see :func:`compile_targets`) in place for the
    duration; their previous call is restored on exit.

    Args:
        targets: the modules to compile.
        mode: ``False`` (nothing), ``True`` (the default mode) or a ``torch.compile`` mode name.
    """
    if not mode:
        yield
        return
    previous = [target._compiled_call_impl for target in targets]
    for target in targets:
        target.compile(**({} if mode is True else {"mode": mode}))
    try:
        yield
    finally:
        for target, impl in zip(targets, previous):
            target._compiled_call_impl = impl
