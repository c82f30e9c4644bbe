"""Checkpoints of Pyro's param store, written atomically and loaded without running code.

A checkpoint is a ``torch.save`` of plain tensors and numbers only::

    {"format": "pyro-vae-checkpoint/1",
     "params": {param name: unconstrained tensor},      # Pyro's param store
     "optimizer": {param name: optimizer state_dict},   # PyroOptim.get_state()
     "step": int, "epoch": int}

and is loaded with ``torch.load(..., weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import torch
from pyro import poutine

__all__ = ["CheckpointError", "load_checkpoint", "register_params", "save_checkpoint"]

FORMAT = "pyro-vae-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, corrupt, or does not match the model/guide pair."""


def save_checkpoint(path: str | Path, optim=None, step: int = 0, epoch: int = 0) -> Path:
    """Write the current param store (and optimizer state) to ``path`` atomically."""
    path = Path(path)
    store = pyro.get_param_store()
    state = {
        "format": FORMAT,
        "params": {name: p.detach().cpu().clone() for name, p in store.named_parameters()},
        "optimizer": optim.get_state() if optim is not None else {},
        "step": int(step),
        "epoch": int(epoch),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def register_params(model, guide, *args, **kwargs) -> None:
    """Run guide and model once (no gradients) so that their ``pyro.module``/``pyro.param``
    parameters exist in the param store."""
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        poutine.replay(model, trace=guide_trace)(*args, **kwargs)


def load_checkpoint(path: str | Path, model, guide, *args, **kwargs) -> dict:
    """Load parameters saved by :func:`save_checkpoint` into the pair's param store entries.

    ``args``/``kwargs`` are an example input for the pair (a small batch), used once to register
    its parameters. Returns the checkpoint dict (``optimizer``, ``step``, ``epoch``).

    Raises:
        CheckpointError: unreadable/corrupt file, a file that is not a pyro-vae checkpoint
            (including pickles that would execute code), or parameter names/shapes that do not
            match the pair.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # corrupt zip, truncated file, or refused pickle
        raise CheckpointError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint (format {FORMAT!r})")
    register_params(model, guide, *args, **kwargs)
    current = dict(pyro.get_param_store().named_parameters())
    saved = state["params"]
    missing, unexpected = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match the model/guide pair: parameters missing from the "
            f"checkpoint {missing[:5]}, parameters the pair does not have {unexpected[:5]}"
        )
    for name, value in saved.items():
        if current[name].shape != value.shape:
            raise CheckpointError(
                f"checkpoint {path}: parameter {name!r} has shape {tuple(value.shape)}, the pair's "
                f"has {tuple(current[name].shape)} (a different latent/hidden size?)"
            )
    with torch.no_grad():
        for name, value in saved.items():
            current[name].copy_(value)
    return state
