"""The checkpoint file: Pyro's param store and optimizer state, written atomically, loaded without running code.

A checkpoint is a ``torch.save`` of plain tensors, numbers, strings, lists and dicts only::

    {"format": "pyro-vae-checkpoint/2",
     "params": {param name: unconstrained tensor},      # Pyro's param store
     "optimizer": {param name: optimizer state_dict},   # PyroOptim.get_state()
     "step": int, "epoch": int,                         # steps taken, epochs completed
     ... whatever else the caller adds (the trainer adds RNG states, the position inside the
     epoch, the run's settings and its metrics so far: see pyro_vae.training.state)}

It is written to ``NAME.tmp``, flushed to disk, then renamed over ``NAME``, so a crash or a full
disk never leaves a half-written checkpoint under the real name, and it is loaded with
``torch.load(..., weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pyro
import torch
from pyro import poutine

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint",
    "register_params",
    "save_checkpoint",
]

FORMAT = "pyro-vae-checkpoint/2"
READABLE_FORMATS = ("pyro-vae-checkpoint/1", FORMAT)


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, corrupt, unwritable, or does not match the model/guide pair."""


def save_checkpoint(path: str | Path, optim=None, step: int = 0, epoch: int = 0, **extra) -> Path:
    """Write the current param store (and optimizer state) to ``path`` atomically.

    ``extra`` entries (tensors, numbers, strings, lists, dicts) are saved beside them.

    Raises:
        CheckpointError: the file cannot be written (full disk, file-size limit, no permission);
            the temporary file is removed and a previous checkpoint at ``path`` is left intact.
    """
    path = Path(path)
    store = pyro.get_param_store()
    state = {
        "format": FORMAT,
        "params": {name: p.detach().cpu().clone() for name, p in store.named_parameters()},
        "optimizer": optim.get_state() if optim is not None else {},
        "step": int(step),
        "epoch": int(epoch),
        **extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        kept = f"the previous checkpoint {path} is intact" if path.exists() else "no checkpoint was written"
        raise CheckpointError(f"could not write checkpoint {path}: {e} (disk full or not writable?); {kept}") from e
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint file without executing code and without touching the param store.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: a truncated or corrupt file, a pickle that is not plain data (e.g.
            one that would run a command: refused, not run), or not a pyro-vae checkpoint.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:  # torch's weights_only refusal (or a damaged pickle)
        raise CheckpointError(
            f"cannot load checkpoint {path}: it is not a pyro-vae checkpoint, or it was tampered with: it holds "
            "Python objects other than tensors, numbers, strings, lists and dicts, which could run code when "
            "loaded. Nothing was loaded and nothing was run. Use a checkpoint written by pyro-vae "
            "(save_checkpoint, train(out=...))") from e
    except Exception as e:  # corrupt zip, truncated file
        reason = str(e).split("\n\n")[0].strip()
        raise CheckpointError(f"cannot load checkpoint {path}: {type(e).__name__}: {reason}") from e
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint (format {FORMAT!r})")
    return state


def register_params(model, guide, *args, **kwargs) -> None:
    """Run guide and model once (no gradients) so that their ``pyro.module``/``pyro.param``
    parameters exist in the param store."""
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        poutine.replay(model, trace=guide_trace)(*args, **kwargs)


def load_checkpoint(path: str | Path, model, guide, *args, **kwargs) -> dict:
    """Load parameters saved by :func:`save_checkpoint` into the pair's param store entries.

    ``args``/``kwargs`` are an example input for the pair (a small batch), used once to register
    its parameters. Returns the checkpoint dict (``optimizer``, ``step``, ``epoch``, ...).

    Raises:
        CheckpointError: unreadable/corrupt file, a file that is not a pyro-vae checkpoint
            (including pickles that would execute code), or parameter names/shapes that do not
            match the pair.
    """
    path = Path(path)
    state = read_checkpoint(path)
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
