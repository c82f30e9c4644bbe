"""What recording a pair's SVI step needs to know about the pair, found by running it once: the
parameters it reads, the sites it visits, and, when recording fails, why in one line.

Used by :class:`~pyro_vae.training.compiled.CompiledSVIStep`; none of these touch the RNG streams.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pyro
import torch

from ..check.idioms import SiteRecorder
from ..pyro_internals import MessageHook, unconstrained_param

__all__ = ["pair_params", "site_structure"]


def _cuda(tensors) -> list:
    return sorted({t.device for t in tensors if torch.is_tensor(t) and t.device.type == "cuda"}, key=str)


def pair_params(loss_fn, *args, **kwargs) -> list[torch.Tensor]:
    """The unconstrained leaf tensors that ``loss_fn(*args, **kwargs)`` reads from Pyro's param
    store, in first-use order (as ``svi_step`` collects them); registers new ones. Runs the loss
    once (with autograd on: an objective may insist that its loss depends on a parameter), without
    touching the RNG streams."""
    with torch.random.fork_rng(devices=_cuda(args)), pyro.poutine.trace(param_only=True) as tr:
        loss_fn(*args, **kwargs)
    return list(dict.fromkeys(unconstrained_param(site["value"]) for site in tr.trace.nodes.values()))


def site_structure(loss_fn, *args, **kwargs) -> list[tuple]:
    """``(name, distribution, value shape, observed)`` of each sample site, in the order that one
    run of ``loss_fn(*args, **kwargs)`` (model and guide, as the objective runs them) visits them;
    touches neither the RNG streams nor the parameters' gradients."""
    recorder = SiteRecorder()
    with torch.random.fork_rng(devices=_cuda(args)), MessageHook(recorder):
        loss_fn(*args, **kwargs)
    return [(m["name"], type(m["fn"]).__name__, tuple(m["value"].shape) if torch.is_tensor(m["value"]) else (),
             bool(m["is_observed"])) for m in recorder.messages]


def _first_difference(a: list[tuple], b: list[tuple]) -> str:
    for site_a, site_b in zip(a, b):
        if site_a != site_b:
            return f"site {site_a[0]!r} ({site_a[1]}, shape {site_a[2]}) vs {site_b[0]!r} ({site_b[1]}, shape {site_b[2]})"
    longer = a if len(a) > len(b) else b
    return f"site {longer[min(len(a), len(b))][0]!r} appears on one minibatch only"


_VALUE_READ = "trying to get value out of a tracing tensor"


def _reason(error: Exception) -> str:
    """One line: why recording or checking failed (for a Python read of a traced value, where)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if _VALUE_READ in text:
        text = (f"the step reads a tensor's value in Python{_where_read(error)} (.item(), float(), bool(), a "
                "branch on a tensor), which a recorded graph would freeze")
    return f"{type(error).__name__}: {text}"


def _where_read(error: Exception) -> str:
    """`` at pyro/infer/util.py:52 (torch_item) from pyro/infer/trace_elbo.py:73 (...)``: the two
    innermost frames outside torch."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f"{os.sep}torch{os.sep}" not in f.filename]
    return " at " + " from ".join(f"{_short(f.filename)}:{f.lineno} ({f.name})" for f in frames[::-1][:2]) \
        if frames else ""


def _short(filename: str) -> str:
    """A source path from its package down (``pyro/infer/util.py``), else its file name."""
    parts = Path(filename).parts
    start = max((i for i, part in enumerate(parts) if part in ("pyro", "pyro_vae")), default=len(parts) - 1)
    return "/".join(parts[start:])
