"""The opt-in fast paths of a run: the loss recorded with ``torch.jit.trace``, the networks compiled.

* :func:`record_jit_graphs`: :class:`pyro_vae.objectives.JitELBO` records one graph per
  minibatch shape; the trainer records them all before the first step (so that recording draws
  no random numbers inside the run and a resumed run stays bitwise equal), each checked against
  the eager loss on another minibatch.
* :func:`compiled_networks`: ``torch.compile`` of each network of the pair for the duration of
  a run, Pyro's bookkeeping staying eager.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["compiled_networks", "minibatch_sizes", "record_jit_graphs"]


def minibatch_sizes(num_train: int, batch_size: int, steps_per_epoch: int, world: int, rank: int) -> list[int]:
    """The minibatch sizes this process sees in an epoch: the full one and the last, smaller one
    (each process's share of it under ``torchrun``)."""
    last = min(batch_size, num_train - (steps_per_epoch - 1) * batch_size)
    return [len(torch.arange(size).tensor_split(world)[rank]) if world > 1 else size
            for size in sorted({batch_size, last})]


def record_jit_graphs(objective, model, guide, data, labels: bool, sizes: list[int]) -> None:
    """Record the objective's graph for every minibatch size in ``sizes``, on the first ``n``
    training points, and check it against the eager loss on the last ``n``."""
    for n in sizes:
        batches = []
        for part in (slice(0, n), slice(-n, None)):
            x = data.train[part]
            x = (x > 0.5).to(x.dtype) if data.binarize else x
            batches.append((x, data.train_labels[part]) if labels else (x,))
        objective.compile(model, guide, *batches[0], check=batches[1])


@contextmanager
def compiled_networks(module: torch.nn.Module | None, mode: bool | str):
    """``torch.compile`` every child module of the pair's ``module`` in place for the duration.

    Args:
        module: the ``nn.Module`` holding the pair's networks.
        mode: ``False`` (nothing), ``True`` (the default mode) or a ``torch.compile`` mode name.
    """
    if not mode:
        yield
        return
    if module is None:
        raise ValueError("compile=True needs the nn.Module holding the pair's networks: make model and guide "
                         "methods of one nn.Module (as the shipped pairs are) or pass module=...")
    children = list(module.children())
    previous = [child._compiled_call_impl for child in children]
    for child in children:
        child.compile(**({} if mode is True else {"mode": mode}))
    try:
        yield
    finally:
        for child, impl in zip(children, previous):
            child._compiled_call_impl = impl
