"""Interruption by signals: SIGINT and SIGTERM become a flag that the step loop reads.

The trainer checks the flag after every step; when it is set, it saves a checkpoint and raises
:class:`TrainingInterrupted`, whose message says how to resume.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path

__all__ = ["StopFlag", "TrainingInterrupted", "stop_on_signals"]


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped :func:`pyro_vae.train` after saving a checkpoint.

    Attributes:
        signal_number: the signal received (``signal.SIGINT`` or ``signal.SIGTERM``).
        checkpoint: the checkpoint written, or ``None`` when the run writes no files.
        step: SVI steps taken when it stopped.
    """

    def __init__(self, message: str, signal_number: int, checkpoint: Path | None, step: int):
        super().__init__(message)
        self.signal_number, self.checkpoint, self.step = signal_number, checkpoint, step


class StopFlag:
    """The signal received so far (``signal`` is ``None`` until SIGINT or SIGTERM arrives)."""

    def __init__(self):
        self.signal: int | None = None

    def raise_interrupted(self, checkpoint: Path | None, step: int, where: str, out: Path | None):
        """Raise :class:`TrainingInterrupted` for the signal received (SIGTERM when another
        process of a distributed run received it)."""
        signum = self.signal or signal.SIGTERM
        name = signal.Signals(signum).name
        if checkpoint is not None:
            message = (f"training interrupted by {name} at {where}; checkpoint saved to {checkpoint}; resume with: "
                       f"pyro-vae train --resume {out}  (Python: train(..., out=RunFolder({str(out)!r}, "
                       "resume=True)))")
        else:
            message = f"training interrupted by {name} at {where}; no run folder, nothing saved"
        raise TrainingInterrupted(message, signum, checkpoint, step)


@contextmanager
def stop_on_signals():
    """Yield a :class:`StopFlag` that SIGINT/SIGTERM set for the duration (a second SIGINT while
    the checkpoint is written raises ``KeyboardInterrupt`` at once). Only in the main thread;
    elsewhere the flag is never set. The previous handlers are restored on exit."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signal = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
