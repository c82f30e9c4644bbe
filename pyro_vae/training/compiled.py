"""The compiled SVI step (``train(..., step="compiled")``, and ``"auto"`` for long runs): one
recorded, compiled graph per run.

**What.** :class:`CompiledSVIStep` does what :func:`~pyro_vae.training.step.svi_step` does (the
minibatch's loss, its gradients, the finiteness check, one Adam or Adagrad update, applied only when the loss
and gradients are finite) with Pyro's and autograd's Python work done once instead of every step.

**Why.** At the small MLPs of the VAE literature a step is mostly Python and per-op overhead: the
compiled step takes about 0.3x the time of a hand-written PyTorch step there (and about 0.7x at
784-500-20), against about 2x for the eager Pyro step.

**How.**

1. *Record*: ``make_fx`` runs the eager step body once on real tensors (under
   ``torch.random.fork_rng``; parameters and optimizer state are restored afterwards, so recording
   changes nothing) and records it as one aten graph, backward included: ``loss_fn(x, *args, **named)``,
   ``torch.autograd.grad``, the finiteness check, and the optimizer's step count. The graph's inputs are the
   param store's own tensors (the nets hold the same objects), the step counts, the 0-d tensors
   the pair reads (the KL warm-up factor, refilled before every step) and the minibatch (its named
   per-datapoint arguments too, in a fixed order).
2. *Noise as inputs* (:func:`pyro_vae.recorded.record`): each parameter-free draw (``empty`` +
   ``normal_``/``uniform_``, what ``Normal.rsample`` does; ``rand``/``randn``) is cut out of the graph
   and drawn eagerly before each replay by the same call, so the global torch RNG advances exactly
   as in an eager run: checkpoints and resume work unchanged (a resumed compiled run is bitwise
   equal to an uninterrupted one). ``F.one_hot``'s range check is kept as a graph output: a
   minibatch with a class index out of range is not applied and raises ``ValueError``.
3. *Compile*: inductor (``compile_fx``, no dynamo, no guards) fuses the graph into a few C++
   kernels; ``backend="replay"`` instead replays the graph op by op (bitwise equal to eager, no
   faster; for tests).
4. *Check*: before the first step the pair's sample sites (names, distributions, shapes) on two
   minibatches are compared (a structure that depends on the data is refused), then the graph's
   loss and gradients on the *second* minibatch are compared with the eager ones at the same RNG
   state (relative :data:`CHECK_RTOL`).
5. *Update*: torch's fused Adam or Adagrad kernel on :class:`~pyro_vae.optim.FusedOptim`'s own state tensors,
   with ``found_inf`` from the graph (a non-finite step is not applied, with no extra host read),
   the learning rate read from the optimizer at every step (back-off works). Under ``torchrun``
   the graph gives this process's gradients and finiteness; they are summed (maxed) over the
   processes (:func:`pyro_vae.distributed.sum_gradients`) before the step counts and the update.

**Limits.** One graph, for the full minibatch shape; the last, smaller minibatch of an epoch runs
the eager step on the same optimizer state. A pair whose step cannot be recorded (a Python read
of a tensor's value: ``if x.mean() > c``, ``.item()``; so Pyro's own ``Trace_ELBO`` objects; a
random op other than a parameter-free fill, such as ``torch.bernoulli``) or fails the check runs
eager, with one warning line saying why and where (:func:`pyro_vae.recorded.failure_reason`).
``elbo="enum"`` is recorded (:func:`pyro_vae.pyro_internals.compute_dice_elbo` has no host read). Python state that is not a tensor input (an annealed float attribute) is
frozen at its recorded value; the check catches it only if it changed before the check. Which
runs take this step: :mod:`.step_mode`. Compiling costs 10-60 s once per run (cached by inductor).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import pyro
import torch

from .. import distributed
from ..optim import FusedOptim, fused_adagrad_step, fused_adam_step
from ..recorded import (BACKENDS, cuda_devices, failure_reason, first_difference, index_guard, pair_params, record,
                        site_structure)
from .step import _total_norm, svi_step

__all__ = ["BACKENDS", "CHECK_RTOL", "UPDATES", "CompiledSVIStep", "CompiledStepWarning"]

CHECK_RTOL = 1e-5
"""Loss tolerance of the check, relative. Inductor reorders float32 sums: the prototype measured
relative differences of 7e-8 on the loss (1e-7 on gradients); 1e-5 leaves a 100x margin, while
a value frozen at capture gave 1e-2. Gradients are compared at ``10 * CHECK_RTOL`` of their norm."""


UPDATES = {torch.optim.Adam: (("exp_avg", "exp_avg_sq"), fused_adam_step),
           torch.optim.Adagrad: (("sum",), fused_adagrad_step)}
"""The optimizers the compiled step updates with: torch class -> (its per-parameter state
tensors besides ``step``, the fused kernel's update). Adam without amsgrad."""


class CompiledStepWarning(RuntimeWarning):
    """The one line saying why a compiled step runs eager for a pair."""


def _key(tensors) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) if torch.is_tensor(t) else t for t in tensors)


class CompiledSVIStep:
    """``svi_step`` with the step of one minibatch shape recorded and compiled (module docstring).

    Args:
        loss_fn: ``loss_fn(x, *args, **named)`` -> the minibatch's loss (an ``ELBOLoss``), nats
            summed over the minibatch.
        optim: the run's :class:`~pyro_vae.optim.FusedOptim` over ``torch.optim.Adam`` or
            ``torch.optim.Adagrad`` (:data:`UPDATES`).
        backend: ``"inductor"`` or ``"replay"`` (the recorded graph op by op, no compiler).
        inputs: ``(tensor, value)`` pairs: 0-d tensors that the pair reads (the KL warm-up factor,
            :meth:`~pyro_vae.training.KLSchedule.wrap`), filled with ``value()`` before every step,
            eager or compiled, and inputs of the recorded graph (not frozen constants).

    Call it as ``svi_step``: ``step(loss_fn, optim, x, *args, **named)`` -> ``(loss, applied)`` (a
    detached 0-d tensor and a bool: one host read). Minibatches of the recorded shapes, with the
    recorded names, replay the graph; any other call runs ``svi_step``. ``reason`` says why nothing
    was recorded (``None`` when the compiled step is in use); ``replays`` counts the compiled steps.
    """

    def __init__(self, loss_fn, optim: FusedOptim, backend: str = "inductor", inputs=()):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        # under torchrun the trainer's loss is DDP-wrapped: the step records the loss inside, and
        # sums the gradients over processes itself (distributed.sum_gradients) before the update
        self.outer, self.world = loss_fn, distributed.world_size()
        ddp = isinstance(loss_fn, torch.nn.parallel.DistributedDataParallel)
        self.loss_fn, self.optim, self.backend = loss_fn.module if ddp else loss_fn, optim, backend
        self.extra, self.fills = [t for t, _ in inputs], [value for _, value in inputs]
        self.fn, self.key, self.reason, self.replays, self.names = None, None, None, 0, ()
        self.recorded = None  # the RecordedGraph: its cut-out draws

    def record(self, batch: tuple, check: tuple, names: tuple = ()) -> CompiledSVIStep:
        """Record and compile the step for minibatches shaped like ``batch`` (``(x, *args,
        *named)``: the values of the named arguments ``names`` last), then check it on ``check``
        (another minibatch of that shape): the same sites with the same shapes, the same loss and
        gradients. A failure leaves the step eager, with one warning line saying why. Changes no
        parameter, state or RNG stream."""
        self._fill()
        self.names = tuple(names)
        try:
            self._record(batch)
            self._check(batch, check)
        except Exception as error:  # noqa: BLE001 -- any failure means: run eager, and say why
            self.fn, self.key = None, None
            self.reason = failure_reason(error)
        if self.world > 1 and not distributed.all_true(self.fn is not None) and self.fn is not None:
            self.fn, self.key = None, None  # every process takes the same step, or the collectives would hang
            self.reason = "another process could not record or check the step (its warning says why)"
        if self.reason is not None:
            warnings.warn(f"step='compiled': the SVI step of this pair cannot be compiled, it runs eager "
                          f"({self.reason})", CompiledStepWarning, stacklevel=2)
        return self

    def __call__(self, loss_fn, optim, x: torch.Tensor, *args, grad_scale: float = 1.0, **kwargs):
        """One SVI step, as :func:`~pyro_vae.training.step.svi_step`."""
        self._fill()
        if self.fn is not None and tuple(sorted(kwargs)) == tuple(sorted(self.names)) \
                and optim is self.optim and loss_fn is self.outer and grad_scale == float(self.world):
            batch = (x, *args, *(kwargs[name] for name in self.names))
            if _key(batch) == self.key:
                return self._replay(*batch)
        return svi_step(loss_fn, optim, x, *args, grad_scale=grad_scale, **kwargs)

    def _call_loss(self, *batch):
        """``loss_fn`` on a flat minibatch ``(x, *args, *named)``."""
        split = len(batch) - len(self.names)
        return self.loss_fn(*batch[:split], **dict(zip(self.names, batch[split:])))

    def _replay(self, *batch):
        if self.optim.optimizer is not self.torch_optim:
            raise RuntimeError("the FusedOptim rebuilt its torch optimizer after the step was recorded (new "
                               "parameters): the compiled step would update stale state")
        with torch.no_grad():
            out = self.fn(*self.inputs, *batch, *self.recorded.draw_noise())
            grads, found_inf, bad_index = list(out[4:]), out[2], out[3]
            if self.world > 1:  # the whole minibatch's gradient; a step is applied where every process's is finite
                flag = torch.maximum(found_inf, 2.0 * bad_index.to(found_inf.dtype))  # 2: a bad index, raised by all
                grads, flag = distributed.sum_gradients(grads, flag)
                found_inf, bad_index = flag.clamp(max=1.0), flag >= 2.0  # the fused kernels skip on exactly 1
                torch._foreach_add_(self.steps, 1.0 - found_inf)
            self.update(self.params, grads, *self.moments, self.steps, self.torch_optim.param_groups[0],
                        found_inf=found_inf)
        self.replays += 1
        applied = bool(found_inf == 0)
        if not applied and bool(bad_index):
            raise ValueError("a class index given to F.one_hot in this minibatch lies outside [0, num_classes) "
                             "(labels out of range?); the step was not applied")
        return out[0], applied

    def _fill(self) -> None:
        for tensor, value in zip(self.extra, self.fills):
            tensor.fill_(value())

    def _body(self, *flat):
        """The eager step body that ``make_fx`` records: ``(loss, finite, found_inf, bad_index, *grads)``;
        the optimizer's step counts advance by ``finite`` (as ``Adam(fused=True)`` with ``found_inf``);
        a class index out of range (:func:`~pyro_vae.recorded.index_guard`) makes the step not finite."""
        n = len(self.params)
        params, steps, args = flat[:n], flat[n:2 * n], flat[2 * n + len(self.extra):]
        loss = self._call_loss(*args)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        if any(g is None for g in grads):
            raise ValueError(f"{sum(g is None for g in grads)} of the {n} parameters get no gradient in the "
                             "recorded step (a net whose tensors are not the param store's?)")
        with torch.no_grad():
            bad_index = index_guard().to(loss.device)
            finite = torch.isfinite(loss.detach()) & torch.isfinite(_total_norm(list(grads))) & ~bad_index
            for s in steps if self.world == 1 else ():  # several processes: after they agree (_replay)
                s.add_(finite.to(s.dtype))
        return (loss.detach(), finite, (~finite).to(torch.float32), bad_index, *grads)

    def _record(self, batch: tuple) -> None:
        split = len(batch) - len(self.names)
        self.params = pair_params(self.loss_fn, *batch[:split], **dict(zip(self.names, batch[split:])))
        self.torch_optim = self.optim.register(self.params)
        group = self.torch_optim.param_groups[0]
        if type(self.torch_optim) not in UPDATES or group.get("amsgrad"):
            raise ValueError(f"the compiled step updates with Adam (no amsgrad) or Adagrad, not {self.torch_optim!r}")
        names, self.update = UPDATES[type(self.torch_optim)]
        states = [self.torch_optim.state[p] for p in self.params]
        for p, state in zip(self.params, states):
            if not state:  # as torch.optim.Adam(fused=True) initialises a parameter's state
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                for name in names:  # Adagrad initialises its own (its sums start at initial_accumulator_value)
                    state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        self.steps = [s["step"] for s in states]
        self.moments = [[s[name] for s in states] for name in names]
        self.inputs = [p.detach() for p in self.params] + self.steps + self.extra
        with self._restoring(batch), pyro.validation_enabled(False):
            self.recorded = record(self._body, *self.params, *self.steps, *self.extra, *batch)
        with self._restoring(batch):
            self.fn = self.recorded.compile(self.backend, [*self.inputs, *batch])
        self.key = _key(batch)

    def _check(self, batch: tuple, check: tuple) -> None:
        """The pair's sites on two minibatches, then the recorded graph against the eager loss and
        gradients on the second one at the same RNG state."""
        split = len(batch) - len(self.names)
        structures = [site_structure(self.loss_fn, *b[:split], **dict(zip(self.names, b[split:])))
                      for b in (batch, check)]
        if structures[0] != structures[1]:
            raise ValueError("the pair's sites differ between two minibatches of the same shape ("
                             f"{first_difference(*structures)}): its structure depends on the data")
        with self._restoring(batch):
            with torch.random.fork_rng(devices=cuda_devices(batch)), torch.no_grad():  # eager draws the same noise
                out = self.fn(*self.inputs, *check, *self.recorded.draw_noise())
            with pyro.validation_enabled(False), torch.enable_grad():
                loss = self._call_loss(*check)
                grads = torch.autograd.grad(loss, self.params)
        recorded, eager = float(out[0]), float(loss.detach())
        if not abs(recorded - eager) <= CHECK_RTOL * abs(eager):
            raise ValueError(f"the recorded step's loss on another minibatch is {recorded!r}, the eager step's "
                             f"{eager!r} (beyond rtol {CHECK_RTOL:g}): the pair reads something that is not an "
                             "input of the step (a Python number, a tensor of its own, a branch)")
        diff = _total_norm([g - r for g, r in zip(out[4:], grads)])
        if not float(diff) <= 10 * CHECK_RTOL * float(_total_norm(list(grads))):
            raise ValueError(f"the recorded step's gradients on another minibatch differ from the eager ones "
                             f"by {float(diff):g} in norm (beyond rtol {10 * CHECK_RTOL:g})")

    @contextmanager
    def _restoring(self, batch):
        """Run the block (which runs the step for real) and undo its effects on parameters, step
        counts and the RNG streams."""
        saved = [t.detach().clone() for t in (*self.params, *self.steps)]
        try:
            with torch.random.fork_rng(devices=cuda_devices(batch)):
                yield
        finally:
            with torch.no_grad():
                for t, s in zip((*self.params, *self.steps), saved):
                    t.copy_(s)
