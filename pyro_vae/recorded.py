"""A function of a Pyro pair recorded once as an aten graph and replayed: the compiled SVI step
(:mod:`pyro_vae.training.compiled`) and the compiled chunk of the estimator
(:mod:`pyro_vae.evaluation.compiled`) are both built on :func:`record`.

* *Recording*: ``make_fx`` runs the function once on real tensors (Pyro's effect handlers are
  plain Python that runs during this one call) and keeps the aten ops, backward included.
* *Noise as inputs*: each parameter-free draw (``empty`` + ``normal_``/``uniform_``, what
  ``Normal.rsample`` does; ``torch.rand``/``randn``, a relaxed categorical's Gumbel noise) is cut
  out of the graph and drawn eagerly before each replay by the same call
  (:meth:`RecordedGraph.draw_noise`), so the global torch RNG advances exactly as in an eager run.
  Any other random op is refused: its draws would not follow the eager order.
* *Index guards*: ``F.one_hot(y, num_classes)`` checks in eager that every class index is in
  ``[0, num_classes)`` by reading the values in Python, which a recorded graph would freeze. While
  recording it is replaced by the same comparison against ``arange(num_classes)``, and the range
  check becomes a tensor, :func:`index_guard`, which the recorded function returns so that the
  replay can refuse a minibatch with a bad index instead of computing on a zero row.
* *What the pair is*: :func:`pair_params` (the parameters a call reads), :func:`site_structure`
  (the sites it visits, compared between two minibatches), :func:`failure_reason` (why recording
  failed, in one line). None of these touch the RNG streams.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .check.idioms import SiteRecorder
from .pyro_internals import MessageHook, unconstrained_param

__all__ = ["BACKENDS", "RecordedGraph", "cuda_devices", "failure_reason", "first_difference", "index_guard",
           "inductor_compile", "make_aten_graph", "pair_params", "record", "site_structure"]

BACKENDS = ("inductor", "replay")
"""``"inductor"``: compiled into fused kernels; ``"replay"``: the recorded graph op by op (bitwise
equal to eager, no faster; for tests)."""

_aten = torch.ops.aten
_FILLS = {_aten.normal_.default: (0.0, 1.0), _aten.uniform_.default: (0.0, 1.0)}
_FRESH = {_aten.rand.default: _aten.uniform_.default, _aten.randn.default: _aten.normal_.default}
_EMPTY = {_aten.empty.memory_format, _aten.empty_strided.default}
_ONE_HOT = (F.one_hot, torch._C._nn.one_hot)


def make_aten_graph(fn, *inputs):
    """``fn(*inputs)`` run once for real and recorded as an aten-level ``torch.fx.GraphModule``
    over flat positional inputs (``make_fx``, real tracing mode, backward included); raises
    ``RuntimeError`` on a Python read of a value that depends on an input (``.item()``, ``bool``)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(fn)(*inputs)
    gm.graph._codegen = torch.fx.graph.CodeGen()  # flat positional inputs, no pytree spec
    gm.recompile()
    return gm


def inductor_compile(gm, example_inputs: list):
    """The aten graph ``gm`` compiled by inductor (``torch._inductor.compile_fx``, no dynamo, no
    guards) for inputs shaped like ``example_inputs``; random ops left in the graph call aten's
    generator (``fallback_random``). Returns a callable taking the inputs positionally."""
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx

    with config.patch(fallback_random=True):
        return compile_fx(gm, example_inputs)


class _IndexGuards(TorchFunctionMode):
    """While recording: ``F.one_hot`` with a given ``num_classes`` as a comparison, its range check kept."""

    def __init__(self):
        super().__init__()
        self.flags: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ONE_HOT:
            labels, classes = args[0], (args[1] if len(args) > 1 else kwargs.get("num_classes", -1))
            if classes > 0 and not labels.dtype.is_floating_point:
                self.flags.append(((labels < 0) | (labels >= classes)).any())
                return (labels.unsqueeze(-1) == torch.arange(classes, device=labels.device)).to(torch.int64)
        return func(*args, **kwargs)


_ACTIVE: list[_IndexGuards] = []


def index_guard() -> torch.Tensor:
    """While :func:`record` records: a 0-d bool tensor, true where a class index given to
    ``F.one_hot`` so far lies outside ``[0, num_classes)``; outside recording, ``False``."""
    flags = _ACTIVE[-1].flags if _ACTIVE else []
    return torch.stack(flags).any() if flags else torch.zeros((), dtype=torch.bool)


@dataclass
class _Draw:
    """One draw cut out of the graph: ``torch.empty(shape, dtype, device).fill_(*bounds)``."""

    shape: tuple
    dtype: torch.dtype
    device: torch.device
    fill: object  # aten.normal_ or aten.uniform_
    bounds: tuple

    def draw(self) -> torch.Tensor:
        buffer = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        return buffer.normal_(*self.bounds) if self.fill is _aten.normal_.default else buffer.uniform_(*self.bounds)


@dataclass
class RecordedGraph:
    """An aten graph of ``fn(*inputs)`` whose inputs are ``(*inputs, *noise)``.

    Attributes:
        graph: the ``torch.fx.GraphModule``.
        noise: the cut-out draws, in the order the eager function draws them.
    """

    graph: torch.fx.GraphModule
    noise: list = field(default_factory=list)

    def draw_noise(self) -> list[torch.Tensor]:
        """The cut-out draws, drawn eagerly in the recorded order (the eager function's RNG use)."""
        return [d.draw() for d in self.noise]

    def compile(self, backend: str, inputs: list):
        """A callable ``f(*inputs, *noise)``: inductor-compiled for inputs shaped like ``inputs``, or
        the graph itself (``backend="replay"``)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "replay":
            return self.graph
        example = [t.detach() if torch.is_tensor(t) else t for t in inputs]
        return inductor_compile(self.graph, example + [torch.zeros(d.shape, dtype=d.dtype, device=d.device)
                                                       for d in self.noise])


def record(fn, *inputs) -> RecordedGraph:
    """``fn(*inputs)`` run once for real and recorded (module docstring); ``fn`` may return
    :func:`index_guard` among its outputs. Raises ``RuntimeError`` on a Python read of a traced
    value, ``ValueError`` on a random op that is not a parameter-free fill."""
    def guarded(*flat):
        with _IndexGuards() as guards:
            _ACTIVE.append(guards)
            try:
                return fn(*flat)
            finally:
                _ACTIVE.pop()

    recorded = RecordedGraph(make_aten_graph(guarded, *inputs))
    _cut_out_noise(recorded)
    random = sorted({str(n.target) for n in recorded.graph.graph.nodes if n.op == "call_function"
                     and torch.Tag.nondeterministic_seeded in getattr(n.target, "tags", ())})
    if random:
        raise ValueError(f"random ops other than parameter-free normal/uniform fills "
                         f"({', '.join(random)}): their draws would not follow the eager order")
    return recorded


def _cut_out_noise(recorded: RecordedGraph) -> None:
    """Replace each ``normal_``/``uniform_`` fill of a fresh ``empty`` buffer, and each
    ``rand``/``randn``, by a graph input."""
    graph = recorded.graph.graph
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    for node in list(graph.nodes):
        if node.target in _FRESH and not node.kwargs.get("generator"):
            last = _noise_input(recorded, node, last, tuple(node.args[0]), _FRESH[node.target], (0.0, 1.0),
                                node.kwargs)
            continue
        buf = node.args[0] if node.target in _FILLS else None
        if buf is None or buf.target not in _EMPTY or len(buf.users) != 1 or node.kwargs.get("generator"):
            continue  # not a fill, or a fill of a live tensor: stays (and is refused as random)
        a, b = (list(node.args[1:]) + list(_FILLS[node.target]))[:2]
        a = node.kwargs.get("mean", node.kwargs.get("from", a))
        b = node.kwargs.get("std", node.kwargs.get("to", b))
        last = _noise_input(recorded, node, last, tuple(buf.args[0]), node.target, (a, b), buf.kwargs)
        graph.erase_node(buf)
    graph.lint()
    recorded.graph.recompile()


def _noise_input(recorded: RecordedGraph, node, last, shape: tuple, fill, bounds: tuple, kwargs: dict):
    """Replace the draw ``node`` by a new graph input after ``last`` (returned)."""
    graph = recorded.graph.graph
    with graph.inserting_after(last):
        last = graph.placeholder(f"noise_{len(recorded.noise)}")
    node.replace_all_uses_with(last)
    graph.erase_node(node)
    recorded.noise.append(_Draw(shape, kwargs.get("dtype") or torch.get_default_dtype(),
                                kwargs.get("device") or torch.device("cpu"), fill, bounds))
    return last


def cuda_devices(tensors) -> list:
    """The CUDA devices of the tensors among ``tensors`` (for ``fork_rng``)."""
    return sorted({t.device for t in tensors if torch.is_tensor(t) and t.device.type == "cuda"}, key=str)


def pair_params(loss_fn, *args, **kwargs) -> list[torch.Tensor]:
    """The unconstrained leaf tensors that ``loss_fn(*args, **kwargs)`` reads from Pyro's param
    store, in first-use order (as ``svi_step`` collects them); registers new ones. Runs the loss
    once (with autograd on: an objective may insist that its loss depends on a parameter), without
    touching the RNG streams."""
    with torch.random.fork_rng(devices=cuda_devices(args)), pyro.poutine.trace(param_only=True) as tr:
        loss_fn(*args, **kwargs)
    return list(dict.fromkeys(unconstrained_param(site["value"]) for site in tr.trace.nodes.values()))


def site_structure(loss_fn, *args, **kwargs) -> list[tuple]:
    """``(name, distribution, value shape, observed)`` of each sample site, in the order that one
    run of ``loss_fn(*args, **kwargs)`` (model and guide, as the objective runs them) visits them;
    touches neither the RNG streams nor the parameters' gradients."""
    recorder = SiteRecorder()
    with torch.random.fork_rng(devices=cuda_devices(args)), MessageHook(recorder):
        loss_fn(*args, **kwargs)
    return [(m["name"], type(m["fn"]).__name__, tuple(m["value"].shape) if torch.is_tensor(m["value"]) else (),
             bool(m["is_observed"])) for m in recorder.messages]


def first_difference(a: list[tuple], b: list[tuple]) -> str:
    """Where two :func:`site_structure` lists first differ, in words."""
    for site_a, site_b in zip(a, b):
        if site_a != site_b:
            return f"site {site_a[0]!r} ({site_a[1]}, shape {site_a[2]}) vs {site_b[0]!r} ({site_b[1]}, shape {site_b[2]})"
    longer = a if len(a) > len(b) else b
    return f"site {longer[min(len(a), len(b))][0]!r} appears on one minibatch only"


_RECORDER = os.path.join("pyro_vae", "recorded.py")  # the index guards' torch-function mode: not the reader
_VALUE_READ = "trying to get value out of a tracing tensor"


def failure_reason(error: Exception) -> str:
    """One line: why recording or checking failed (for a Python read of a traced value, where)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if _VALUE_READ in text:
        text = (f"the step reads a tensor's value in Python{_where_read(error)} (.item(), float(), bool(), a "
                "branch on a tensor), which a recorded graph would freeze")
    return f"{type(error).__name__}: {text}"


def _where_read(error: Exception) -> str:
    """`` at pyro/infer/util.py:52 (torch_item) from pyro/infer/trace_elbo.py:73 (...)``: the two
    innermost frames outside torch."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if f"{os.sep}torch{os.sep}" not in f.filename and not f.filename.endswith(_RECORDER)]
    return " at " + " from ".join(f"{_short(f.filename)}:{f.lineno} ({f.name})" for f in frames[::-1][:2]) \
        if frames else ""


def _short(filename: str) -> str:
    """A source path from its package down (``pyro/infer/util.py``), else its file name."""
    parts = Path(filename).parts
    start = max((i for i, part in enumerate(parts) if part in ("pyro", "pyro_vae")), default=len(parts) - 1)
    return "/".join(parts[start:])
