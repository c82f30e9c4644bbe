"""The run state: where a run is (step, epoch, minibatch), its RNG states, and what a checkpoint holds.

A trainer checkpoint is the file format of :mod:`pyro_vae.training.checkpoint` (parameters and
optimizer state) plus the entries :meth:`RunState.checkpoint_entries` lists::

    position        RunPosition.state(): step, epoch, minibatch, the epoch's data-order RNG state
                    and its partial loss sums (so a run resumed inside an epoch continues exactly)
    rng             [get_rng_state() of each process]  (torch, CUDA, Pyro/numpy/random)
    data_rng        the data-order generator's state
    config          the run's settings (config.json)
    history, curve  the metrics so far (TrainResult.history, TrainResult.curve)
    skipped_steps   the non-finite steps skipped so far
    best_valid_elbo the best validation ELBO so far (nats per datapoint)
    finished        whether every asked-for epoch is done
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch

from .. import distributed
from .checkpoint import CheckpointError

__all__ = ["RunPosition", "RunState", "TrainResult", "get_rng_state", "set_rng_state"]


def get_rng_state() -> dict:
    """Every RNG state a run draws from: torch (CPU), CUDA (all devices, if initialized),
    Python's ``random`` and numpy's global generator, as tensors and plain values only (so the
    state can be saved in a checkpoint that loads with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNG states saved by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainResult:
    """What :func:`pyro_vae.train` returns.

    Attributes:
        history: one dict of metrics per epoch: ``epoch``, ``step``, ``train_elbo`` (the mean
            over the epoch's applied steps; ``None`` if every step was skipped), ``skipped_steps``
            (non-finite steps not applied), ``train_seconds``, ``total_train_seconds``, and with a test (validation) set
            ``test_elbo``, ``test_elbo_se`` (``valid_elbo``, ``valid_elbo_se``); ELBOs in nats per
            datapoint, times in seconds of SVI steps (evaluation excluded).
        curve: the training objective's ELBO averaged over each ``log_interval`` steps, as
            ``{"step", "samples_seen", "train_elbo"}`` dicts (nats per datapoint).
        out: the run folder, or ``None`` when nothing was written.
        train_seconds: total wall-clock of SVI steps, evaluation excluded.
        skipped_steps: steps not applied because of a non-finite loss or gradient
            (``nonfinite_backoff``), as ``{"step", "epoch", "lr_factor"}`` dicts.
    """

    history: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    out: Path | None = None
    train_seconds: float = 0.0
    skipped_steps: list[dict] = field(default_factory=list)

    @property
    def final(self) -> dict:
        """Metrics of the last epoch."""
        return self.history[-1] if self.history else {}


@dataclass
class RunPosition:
    """Where a run is: what a checkpoint needs, beyond parameters and optimizer, to continue exactly.

    Loss sums are device tensors (nats, summed over minibatches) so that the step loop never
    reads them; they are read once per log interval and once per epoch.
    """

    step: int = 0  # SVI steps taken (applied or skipped)
    epoch: int = 0  # epochs completed
    batch: int = 0  # minibatches done in the epoch under way (0 at an epoch boundary)
    epoch_data_rng: torch.Tensor | None = None  # data-order generator state at the epoch's start
    epoch_total: torch.Tensor | None = None  # sum of the epoch's losses so far (applied steps only)
    interval_total: torch.Tensor | None = None  # sum of the losses since the last log line
    interval_points: int = 0  # datapoints of the applied steps since the last log line
    epoch_seconds: float = 0.0
    epoch_points: int | None = 0  # datapoints of the epoch's applied steps (None: an older checkpoint)
    epoch_skipped: int = 0  # the epoch's non-finite steps, skipped

    def state(self) -> dict:
        """The position as plain values and CPU tensors (for a checkpoint)."""
        return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}

    def start_epoch(self, data_rng: torch.Generator, device: torch.device) -> None:
        """Begin the next epoch, or continue the one a resumed checkpoint stopped inside: then
        the data-order generator goes back to the epoch's start, so the epoch's data are redrawn."""
        if self.batch == 0:
            self.epoch_data_rng = data_rng.get_state()
            self.epoch_total = torch.zeros((), device=device)
            self.interval_total, self.interval_points, self.epoch_seconds = torch.zeros((), device=device), 0, 0.0
            self.epoch_points, self.epoch_skipped = 0, 0
        else:
            data_rng.set_state(self.epoch_data_rng)
            self.epoch_total, self.interval_total = self.epoch_total.to(device), self.interval_total.to(device)

    def end_epoch(self) -> None:
        """Mark the epoch under way as complete."""
        self.epoch, self.batch = self.epoch + 1, 0
        self.epoch_data_rng = self.epoch_total = self.interval_total = None


class RunState:
    """Everything a run carries from step to step: position, data-order RNG, result so far.

    The data-order generator lives on the CPU whatever the device, so that a checkpoint resumes
    on another device (CPU -> CUDA and back); :meth:`epoch_generator` gives the generator an
    epoch's draws on the data's device come from.
    """

    def __init__(self):
        self.position = RunPosition()
        self.result = TrainResult()
        self.best_valid = -math.inf
        self.data_rng = torch.Generator()

    def epoch_generator(self, device: torch.device) -> torch.Generator:
        """The generator of this epoch's binarization and order on ``device``: the data-order
        generator itself on the CPU, else a generator on ``device`` seeded from it (one draw)."""
        if device.type == "cpu":
            return self.data_rng
        seed = int(torch.randint(2**62, (1,), generator=self.data_rng))
        return torch.Generator(device=device).manual_seed(seed)

    def seed(self, seed: int | None, rank: int) -> None:
        """A fresh run: seed Pyro (each process its own noise, ``seed + rank``) and the data order
        (the same on every process); ``seed=None`` draws the data-order seed from torch's RNG on
        the main process and shares it with the others."""
        if seed is not None:
            pyro.set_rng_seed(seed + rank)
            self.data_rng.manual_seed(seed)
        else:
            drawn = int(torch.randint(2**62, (1,)).item())
            self.data_rng.manual_seed(distributed.broadcast_object(drawn))

    def restore(self, saved: dict, rank: int, seed: int | None, device: torch.device) -> None:
        """Continue from a checkpoint's entries (see the module docstring) on ``device``."""
        self.position = RunPosition(**saved["position"])
        result = self.result
        result.history, result.curve = list(saved["history"]), list(saved["curve"])
        result.skipped_steps = list(saved.get("skipped_steps", []))
        result.train_seconds = sum(h["train_seconds"] for h in result.history)
        self.best_valid = saved.get("best_valid_elbo", -math.inf)
        if saved["data_rng"].numel() != self.data_rng.get_state().numel():
            raise CheckpointError("the checkpoint holds the data-order state of a CUDA generator (written by "
                                  "pyro-vae 0.1.0 on a GPU); resume it with that version on a GPU")
        self.data_rng.set_state(saved["data_rng"])
        rng = saved["rng"][rank] if rank < len(saved["rng"]) else saved["rng"][0]
        set_rng_state(rng)
        if device.type == "cuda" and "cuda" not in rng:  # written on the CPU: CUDA noise from the restored state
            torch.cuda.manual_seed_all(int(torch.randint(2**62, (1,))))
        if rank >= len(saved["rng"]):  # a run resumed on more processes: fresh noise streams
            pyro.set_rng_seed((seed or 0) + rank + self.position.step)

    def checkpoint_entries(self, rng_states: list[dict], config: dict, epochs: int) -> dict:
        """The trainer's entries of a checkpoint (beside parameters, optimizer, step and epoch)."""
        pos, result = self.position, self.result
        return dict(position=pos.state(), rng=rng_states, data_rng=self.data_rng.get_state(), config=config,
                    history=result.history, curve=result.curve, skipped_steps=result.skipped_steps,
                    best_valid_elbo=self.best_valid, finished=pos.epoch >= epochs)
