"""The compiled step: any objective's loss recorded once by ``torch.jit.trace`` and replayed.

Pyro's effect handlers are plain Python that run at every step (about 1-2.5 ms, whatever the
network); a recorded graph runs without them. Pyro's own ``JitTraceMeanField_ELBO`` re-traces at
every call in pyro-ppl 1.9, and its ``Jit*`` classes freeze the ``.item()`` value of the loss.
"""

from __future__ import annotations

import functools
import warnings

import pyro.infer
import torch
from pyro.infer import ELBO

from ..pyro_internals import compiled_graphs, jit_trace
from .base import LossFromDifferentiableLoss
from .trace import Trace_ELBO

__all__ = ["JitELBO"]


class JitELBO(LossFromDifferentiableLoss):
    """Any objective of :mod:`pyro_vae.objectives` with its loss compiled by ``torch.jit.trace``
    (``pyro.ops.jit.trace``).

    The Python work of a step (Pyro's effect handlers, trace bookkeeping, distribution objects)
    runs once, when the loss is traced; later steps run the recorded graph, which still draws
    fresh noise (the random ops are part of the graph). One graph is recorded per pair and per
    shape, dtype and device of the tensor arguments, so the last, smaller minibatch of an epoch
    gets its own. Pyro's ``JitTrace_ELBO`` does the same for ``Trace_ELBO``; this class also
    covers ``TraceMeanField_ELBO`` (Pyro 1.9's ``JitTraceMeanField_ELBO`` rebuilds its compiled
    closure at every call, so it re-traces every step) and
    :class:`~pyro_vae.objectives.IWAE_ELBO`.

    The loss is the wrapped objective's (nats, summed over the batch), from the same random
    draws as the eager objective at the same RNG state, up to float rounding.

    Only for pairs with static structure: the same sites, shapes and Python control flow at
    every call, tensors passed as positional arguments, nothing read from global state but the
    param store. Anything else is baked into the graph as a constant (a KL warm-up factor, for
    instance). :meth:`compile` checks the compiled loss against the eager one at the same RNG
    state, so a pair that traces differently is refused rather than trained wrongly.

    Args:
        elbo: the eager objective (from :func:`~pyro_vae.objectives.get_elbo`).
    """

    def __init__(self, elbo: ELBO):
        if isinstance(elbo, pyro.infer.Trace_ELBO) and not isinstance(elbo, Trace_ELBO):
            raise TypeError(  # its loss value goes through .item(), which a trace freezes as a constant
                f"JitELBO needs pyro_vae.objectives.{type(elbo).__name__.replace('Jit', '')} (a loss that stays a "
                f"tensor), not pyro.infer.{type(elbo).__name__}: build it with get_elbo(name, jit=True)")
        super().__init__(num_particles=elbo.num_particles)
        self.elbo = elbo
        self.compiled: dict = {}

    def _compiled(self, model, guide, args):
        """The compiled loss of this pair for the shapes, dtypes and devices of ``args``."""
        key = (model, guide) + tuple(  # bound methods of one object compare (and hash) equal
            (tuple(a.shape), a.dtype, str(a.device)) if isinstance(a, torch.Tensor) else type(a) for a in args)
        if key not in self.compiled:
            prepare = getattr(self.elbo, "prepare", None)  # the pair's structure, read eagerly, not recorded
            if prepare is not None:
                prepare(model, guide, *args)
            loss = functools.partial(self.elbo.differentiable_loss, model, guide)  # tensors only: no value frozen
            self.compiled[key] = jit_trace(loss, ignore_warnings=True)
        return self.compiled[key]

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The wrapped objective's loss, from the graph recorded for these argument shapes."""
        fn = self._compiled(model, guide, args)
        if compiled_graphs(fn):
            return fn(*args, **kwargs)
        with warnings.catch_warnings():  # torch >= 2.9 marks torch.jit.trace deprecated; it still works
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* deprecated", category=FutureWarning)
            return fn(*args, **kwargs)

    def compile(self, model, guide, *args, check: tuple | None = None, rtol: float = 1e-4, **kwargs) -> None:
        """Record the graph for the shapes of ``args`` now, without drawing from the RNGs, then
        check it: the compiled and the eager loss on ``check`` (other arguments of the same
        shapes, e.g. another minibatch; default ``args``), at one RNG state that differs from
        the recording's, must agree to ``rtol``. A value the trace froze (a Python number taken
        from the data or from a random draw) shows up as a difference.

        Raises:
            ValueError: the compiled loss differs from the eager one (the pair's structure or
                constants depend on its input or on global state: train it without jit).
        """
        check = args if check is None else tuple(check)
        devices = [a.device for a in args if isinstance(a, torch.Tensor) and a.device.type == "cuda"][:1]
        with torch.random.fork_rng(devices=devices):
            self.differentiable_loss(model, guide, *args, **kwargs)  # records the graph (with autograd)
            state = torch.random.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]
            eager = self.elbo.differentiable_loss(model, guide, *check, **kwargs).detach()
            torch.random.set_rng_state(state[0])
            for d, s in zip(devices, state[1]):
                torch.cuda.set_rng_state(s, d)
            compiled = self.differentiable_loss(model, guide, *check, **kwargs).detach()
        if not torch.allclose(compiled, eager, rtol=rtol, atol=0.0):
            raise ValueError(
                f"the compiled (jit) loss {float(compiled):.6g} differs from the eager loss {float(eager):.6g} at "
                f"the same random state: the pair's structure or constants depend on its input or on global "
                f"state (a Python number taken from a tensor, a branch on the data), which torch.jit.trace "
                f"records once; train it without jit")
