"""Logging of a run as it goes: a progress bar per epoch, one line per epoch, TensorBoard scalars,
and the stopwatch of its SVI steps.

Only the main process (rank 0) shows or writes anything. Numbers are ELBOs in nats per datapoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed

__all__ = ["RunLogger", "Stopwatch"]

TENSORBOARD_KEYS = ("train_elbo", "test_elbo", "valid_elbo")


class RunLogger:
    """Progress bars, epoch lines and TensorBoard events of one run.

    Args:
        label: the objective's name, shown in the bar (e.g. ``trace``).
        epochs: epochs in total; steps_per_epoch: SVI steps per epoch.
        progress: show the bars and epoch lines.
        tensorboard_dir: write TensorBoard events there when ``tensorboard`` is installed
            (``None``: no events).
    """

    def __init__(self, label: str, epochs: int, steps_per_epoch: int, progress: bool, tensorboard_dir: Path | None):
        self.label, self.epochs, self.steps_per_epoch = label, epochs, steps_per_epoch
        self.show = progress and distributed.is_main()
        self.writer = _tensorboard_writer(tensorboard_dir)
        self.bar = None

    def start_epoch(self, epoch: int, done: int) -> None:
        """Open the bar of ``epoch`` with ``done`` of its steps already taken (a resumed epoch)."""
        self.bar = tqdm(total=self.steps_per_epoch, initial=done, desc=f"epoch {epoch}/{self.epochs} [{self.label}]",
                        disable=not self.show, leave=False)

    def step(self, train_elbo: float | None = None) -> None:
        """One step taken; ``train_elbo`` (nats per datapoint) is shown when given."""
        self.bar.update(1)
        if train_elbo is not None:
            self.bar.set_postfix(elbo=f"{train_elbo:.2f}")

    def close_bar(self) -> None:
        """Close the epoch's progress bar (if one is open)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end_epoch(self, metrics: dict) -> None:
        """Print the epoch's line (train ELBO, test ELBO ± SE, skipped steps, seconds)."""
        self.close_bar()
        if self.show:
            train = metrics["train_elbo"]
            train = "n/a (every step skipped)" if train is None else f"{train:.2f}"
            test = (f", test ELBO {metrics['test_elbo']:.2f} ± {metrics['test_elbo_se']:.2f}"
                    if "test_elbo" in metrics else "")
            skipped = f", {metrics['skipped_steps']} non-finite steps skipped" if metrics["skipped_steps"] else ""
            tqdm.write(f"epoch {metrics['epoch']}: train ELBO {train}{test} nats/datapoint{skipped}, "
                       f"{metrics['train_seconds']:.1f} s")

    def scalars(self, metrics: dict, step: int) -> None:
        """The epoch's ELBOs as TensorBoard scalars at ``step``."""
        if self.writer is not None:
            for key in TENSORBOARD_KEYS:
                if metrics.get(key) is not None:
                    self.writer.add_scalar(key, metrics[key], step)

    def message(self, text: str) -> None:
        """A line that does not break the progress bar."""
        tqdm.write(text)

    def close(self) -> None:
        """Close the bar and the TensorBoard writer."""
        self.close_bar()
        if self.writer is not None:
            self.writer.close()


class Stopwatch:
    """Wall-clock of SVI steps on ``device``: each reading waits for the device's queued work
    (CUDA kernels run asynchronously), so seconds are the steps', not their launch's."""

    def __init__(self, device: torch.device):
        self.device, self.started = device, 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        """Start timing (after the device's pending work)."""
        self._sync()
        self.started = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the last start or lap."""
        self._sync()
        now = time.perf_counter()
        elapsed, self.started = now - self.started, now
        return elapsed


def _tensorboard_writer(log_dir: Path | None):
    if log_dir is None or not distributed.is_main():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(log_dir=str(log_dir))
