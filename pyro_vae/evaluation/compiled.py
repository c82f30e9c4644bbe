"""The estimator's chunk recorded once and compiled (``estimate_log_likelihood(..., compiled=True)``).

**What.** :class:`CompiledChunk` computes what one chunk of
:func:`~pyro_vae.evaluation.estimate_log_likelihood` computes, the ``(K, B)`` log importance
weights of ``K`` particles for a minibatch of ``B`` datapoints
(:func:`~pyro_vae.importance.log_importance_weights`), with Pyro's Python work (tracing guide and
model through the effect handlers) done once instead of every chunk.

**How** (:mod:`pyro_vae.recorded`, as for the compiled SVI step): the chunk is recorded once as an
aten graph whose inputs are the param store's tensors and the minibatch; the guide's
reparameterized draws are cut out and drawn eagerly by the same calls before each replay, so with
a seed the compiled estimate uses the very draws of the eager one (equal up to float rounding);
inductor compiles the graph. Before first use, the pair's sites on two minibatches are compared
and the graph's weights on the second are checked against the eager ones at the same RNG state
(:data:`CHECK_RTOL`). A class index given to ``F.one_hot`` outside its range, which the eager
chunk refuses, is kept as a guard output (:meth:`CompiledChunk.take_guard`); the estimator reads
it with its other checks, once a minibatch, and raises at the minibatch that had one.

**When.** Chunks of the recorded shape replay the graph; the last, smaller chunk or minibatch runs
eager. A pair that cannot be recorded (a Python read of a tensor's value, a random op that is
not a parameter-free fill, such as ``torch.bernoulli``) or fails the check runs eager, with one
warning line saying why.

**Cost.** Recording, checking and compiling took 4.5-7 s once per estimate on this project's CPU
(one thread, inductor's cache warm); then the compiled estimator evaluated 1.6x (784-64-8) and
1.4x (784-500-20) the datapoint x sample pairs per second of the eager one, 1.40x and 1.22x those
of a hand-written PyTorch evaluator (``experiments/README.md``, ``benchmark.py``). That pays back
after about 1-1.5 million pairs, so ``compiled="auto"`` compiles estimates of at least
:data:`AUTO_MIN_WORK`.
"""

from __future__ import annotations

import warnings

import pyro
import torch

from ..importance import log_importance_weights
from ..recorded import cuda_devices, failure_reason, first_difference, index_guard, pair_params, record, site_structure

__all__ = ["AUTO_MIN_WORK", "CHECK_RTOL", "COMPILED", "CompiledChunk", "CompiledChunkWarning", "use_compiled"]

CHECK_RTOL = 1e-4
"""Tolerance of the check, relative to the largest absolute log weight of the minibatch: inductor
reorders float32 sums over pixels and latent dimensions."""

AUTO_MIN_WORK = 2_000_000
"""``compiled="auto"`` compiles estimates of at least this many datapoint x sample pairs (the
break-even measured on the CPU was about 1.0-1.5 million)."""


class CompiledChunkWarning(RuntimeWarning):
    """The one line saying why a compiled chunk runs eager for a pair."""


COMPILED = (True, False, "auto", "replay")
"""The values ``estimate_log_likelihood(compiled=...)`` takes (:func:`use_compiled`)."""


def use_compiled(compiled, work: int):
    """Whether an estimate compiles its chunk (``True``, ``False``, or ``"replay"``: the recorded
    graph op by op, for tests) for ``compiled`` in :data:`COMPILED`; ``"auto"``: when ``work`` =
    datapoints x samples is at least :data:`AUTO_MIN_WORK`."""
    if not (isinstance(compiled, bool) or (isinstance(compiled, str) and compiled in COMPILED)):
        raise ValueError(f"compiled must be True, False, 'auto' or 'replay', got {compiled!r}")
    return work >= AUTO_MIN_WORK if compiled == "auto" else compiled


def _flatten(x: torch.Tensor, args: tuple, kwargs: dict) -> tuple[list, tuple]:
    """The minibatch's tensors (graph inputs), and everything else as a hashable-by-identity key."""
    names = sorted(kwargs)
    values = [x, *args, *(kwargs[n] for n in names)]
    tensors = [v for v in values if torch.is_tensor(v)]
    rest = tuple((tuple(v.shape), v.dtype, v.device) if torch.is_tensor(v) else ("value", id(v)) for v in values)
    return tensors, (len(args), tuple(names), rest)


def _rebuild(tensors, layout: tuple, like: tuple):
    """``(x, args, kwargs)`` from the graph's tensor inputs and the original minibatch ``like``."""
    x, args, kwargs = like
    names, values, it = layout[1], [x, *args, *(kwargs[n] for n in layout[1])], iter(tensors)
    values = [next(it) if torch.is_tensor(v) else v for v in values]
    return values[0], tuple(values[1:1 + layout[0]]), dict(zip(names, values[1 + layout[0]:]))


class CompiledChunk:
    """One chunk of the estimator, recorded and compiled (module docstring).

    Args:
        model, guide: the pair.
        options: the keyword options of :func:`~pyro_vae.importance.log_importance_weights`
            (``max_plate_nesting``, ``data_plate``, ``enumerate``).
        backend: ``"inductor"``, or ``"replay"`` (the recorded graph op by op; for tests).

    ``chunk(num_particles, x, args, kwargs)`` returns the ``(K, B)`` log weights, or ``None``
    where the recorded shape does not apply (the caller runs the eager chunk). ``reason`` says why
    nothing was recorded; ``replays`` counts the compiled chunks.
    """

    def __init__(self, model, guide, options: dict, backend: str = "inductor"):
        self.model, self.guide, self.options, self.backend = model, guide, options, backend
        self.fn, self.key, self.reason, self.replays, self.guards = None, None, None, 0, []

    def weights(self, num_particles: int, x, args: tuple, kwargs: dict):
        """The eager chunk: :func:`~pyro_vae.importance.log_importance_weights`."""
        return log_importance_weights(self.model, self.guide, x, *args, num_particles=num_particles,
                                      **self.options, **kwargs)

    def record(self, num_particles: int, batch: tuple, check: tuple) -> CompiledChunk:
        """Record and compile the chunk of ``num_particles`` for minibatches shaped like ``batch``
        (``(x, args, kwargs)``), then check it on ``check`` (another of that shape); on failure
        the chunk stays eager, with one warning line. Touches neither the RNG streams nor the parameters."""
        try:
            self._record(num_particles, batch)
            self._check(num_particles, batch, check)
        except Exception as error:  # noqa: BLE001 -- any failure means: run eager, and say why
            self.fn, self.key, self.reason = None, None, failure_reason(error)
            warnings.warn(f"compiled estimate: the estimator's chunk of this pair cannot be compiled, it runs eager "
                          f"({self.reason})", CompiledChunkWarning, stacklevel=3)
        return self

    def __call__(self, num_particles: int, x, args: tuple, kwargs: dict):
        if self.fn is None:
            return None
        tensors, layout = _flatten(x, args, kwargs)
        if (num_particles, layout) != self.key:
            return None
        out = self.fn(*self.inputs, *tensors, *self.recorded.draw_noise())
        self.guards.append(out[1])
        self.replays += 1
        return out[0]

    def take_guard(self) -> torch.Tensor | None:
        """A 0-d bool tensor, whether a replay since the last call met a class index out of range
        (no host read: the caller reads it with its own checks); ``None`` without replays."""
        guards, self.guards = self.guards, []
        return torch.stack(guards).any() if guards else None

    def _record(self, num_particles: int, batch: tuple) -> None:
        tensors, layout = _flatten(*batch)
        devices = cuda_devices(tensors)
        with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False):
            params = pair_params(lambda *a: self.weights(num_particles, *a), *batch)

            def body(*flat):
                x, args, kwargs = _rebuild(flat[len(params):], layout, batch)
                w = self.weights(num_particles, x, args, kwargs)
                if w.subsampled:  # the eager chunk refuses it, naming the plate
                    raise ValueError("the data plate is subsampled")
                return w.log_weights, index_guard().to(x.device)

            with torch.no_grad():
                self.recorded = record(body, *params, *tensors)
        self.inputs = [p.detach() for p in params]
        with torch.random.fork_rng(devices=devices), torch.no_grad():  # an inference graph: no autograd wrapper
            self.fn = self.recorded.compile(self.backend, [*self.inputs, *tensors])
        self.key = (num_particles, layout)

    def _check(self, num_particles: int, batch: tuple, check: tuple) -> None:
        structures = [site_structure(lambda *a: self.weights(num_particles, *a), *b) for b in (batch, check)]
        if structures[0] != structures[1]:
            raise ValueError("the pair's sites differ between two minibatches of the same shape ("
                             f"{first_difference(*structures)}): its structure depends on the data")
        tensors, layout = _flatten(*check)
        if (num_particles, layout) != self.key:
            raise ValueError("the check minibatch is not of the recorded shape")
        devices = cuda_devices(tensors)
        with torch.no_grad(), pyro.validation_enabled(False):
            with torch.random.fork_rng(devices=devices):  # both from the same RNG state, which is left as it was
                recorded = self.fn(*self.inputs, *tensors, *self.recorded.draw_noise())[0]
            with torch.random.fork_rng(devices=devices):
                eager = self.weights(num_particles, *check).log_weights
        scale = max(1.0, float(eager.abs().max()))
        diff = float((recorded - eager).abs().max())
        if not diff <= CHECK_RTOL * scale:
            raise ValueError(f"the recorded chunk's log weights on another minibatch differ from the eager ones by "
                             f"{diff:g} nats (beyond {CHECK_RTOL:g} x {scale:g}): the pair reads something that is "
                             "not an input of the chunk (a Python number, a tensor of its own, a branch)")
