"""Resumable runs for the experiment scripts (a helper module, not a script).

Each run of a study (one N_z of AEVB, one objective and seed of the estimator comparison, one
cell of Burda's Table 1) trains into its own run folder under ``--runs-dir``: it resumes from its
``checkpoint.pt`` when one is there (``RunFolder(..., resume=True)``), checkpoints every
``--checkpoint-every`` steps, and a finished run is only reloaded. ``--time-limit`` stops the
script cleanly: SIGTERM to itself when the time is up, so that the run in progress saves a
checkpoint and the results so far are written; rerun the same command to continue.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pyro_vae

__all__ = ["Deadline", "DeadlineReached", "add_run_args", "epochs_done", "is_finished", "load_finished", "run_folder",
           "runs_dir_for", "train_or_load"]


class DeadlineReached(KeyboardInterrupt):
    """``--time-limit`` (or a SIGTERM) arrived outside a training loop."""


def add_run_args(p, checkpoint_every: int = 2000) -> None:
    """``--runs-dir``, ``--checkpoint-every`` and ``--time-limit``."""
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="where the run folders (checkpoints) go; default: runs/<name of --out> under the current "
                        "folder (git-ignored). Rerunning the same command resumes unfinished runs and reloads "
                        "finished ones")
    p.add_argument("--checkpoint-every", type=int, default=checkpoint_every, metavar="STEPS",
                   help="checkpoint inside an epoch every STEPS SVI steps (and at the end of every epoch)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly (checkpoint, results so far) after this many seconds; rerun to continue")


def runs_dir_for(args) -> Path:
    """``--runs-dir``, or ``runs/<name of --out>`` (``<out>/runs`` with ``--quick``)."""
    if args.runs_dir is not None:
        return args.runs_dir
    return args.out / "runs" if args.quick else Path("runs") / args.out.name


def run_folder(path: Path, checkpoint_every: int) -> pyro_vae.RunFolder:
    """The run folder at ``path``: resumed when it holds a checkpoint, fresh otherwise (a folder
    with a config but no checkpoint, i.e. killed before its first checkpoint, is started again)."""
    resume = (path / "checkpoint.pt").is_file()
    if resume and (path / "config.json").is_file():  # a resumed run keeps its own interval (train refuses another)
        checkpoint_every = json.loads((path / "config.json").read_text()).get("checkpoint_every", checkpoint_every)
    return pyro_vae.RunFolder(path, resume=resume, overwrite=not resume, checkpoint_every=checkpoint_every)


def epochs_done(path: Path) -> int:
    """Completed epochs recorded in ``path/metrics.jsonl`` (0 when absent)."""
    metrics = path / "metrics.jsonl"
    return sum(1 for line in metrics.read_text().splitlines() if line.strip()) if metrics.is_file() else 0


def history(path: Path) -> list[dict]:
    """The per-epoch metrics recorded in ``path/metrics.jsonl``."""
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        return []
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    for h in lines:  # metrics.jsonl writes a non-finite number as null, named in non_finite: back to a float
        h.update({k: float(v) for k, v in h.pop("non_finite", {}).items()})
    return lines


def is_finished(path: Path, epochs: int) -> bool:
    """Whether the run in ``path`` has all ``epochs`` done (its checkpoint holds the end of the last one)."""
    return (path / "checkpoint.pt").is_file() and epochs_done(path) >= epochs


def load_finished(path: Path, model, guide, x) -> dict:
    """Load a finished run's parameters (its ``checkpoint.pt``) into the pair, from an empty param
    store; ``x`` is a small example batch. Returns the checkpoint's entries (``optimizer``, ...)."""
    import pyro

    from pyro_vae.training.checkpoint import load_checkpoint

    pyro.clear_param_store()
    return load_checkpoint(path / "checkpoint.pt", model, guide, x)


def train_or_load(model, guide, data, folder: Path, checkpoint_every: int, epochs: int, **train_args):
    """``pyro_vae.train`` into ``folder`` (fresh, or resumed from its checkpoint); a run that already
    has its ``epochs`` is only loaded (``train`` refuses to resume a finished run). Returns the
    checkpoint's entries for a loaded run, else ``None``."""
    if is_finished(folder, epochs):
        return load_finished(folder, model, guide, data.test[:2] if data.test is not None else data.train[:2])
    pyro_vae.train(model, guide, data, epochs=epochs, out=run_folder(folder, checkpoint_every), **train_args)
    return None


class Deadline:
    """``--time-limit``: ``passed()`` between runs; ``guard()`` around a run sends SIGTERM to this
    process when the time is up (``train`` then checkpoints and raises ``TrainingInterrupted``;
    outside ``train`` the handler raises :class:`DeadlineReached`)."""

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()

    def passed(self) -> bool:
        return self.left() <= 0

    @contextmanager
    def guard(self):
        def handler(signum, frame):
            raise DeadlineReached(f"stopped by {signal.Signals(signum).name}")

        previous = signal.signal(signal.SIGTERM, handler)
        timer = None
        if self.end is not None:
            timer = threading.Timer(max(0.0, self.left()), os.kill, (os.getpid(), signal.SIGTERM))
            timer.daemon = True
            timer.start()
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
            signal.signal(signal.SIGTERM, previous)
