"""Seeded estimates that leave the caller's random streams as they were.

Pyro's distributions draw from the global generators (torch's CPU generator, the CUDA generator of
the data's device; some user code also from Python's ``random`` and numpy's global state). An
estimate with a ``seed`` therefore runs inside :func:`forked_rng`, which saves those states and
restores them on the way out, and seeds each minibatch with :func:`seed_minibatch` inside it: the
estimate is reproducible, and the caller's next draws are the ones it would have made without the
estimate.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["forked_rng", "seed_minibatch"]


@contextlib.contextmanager
def forked_rng(device: torch.device) -> Iterator[None]:
    """Save the global RNG states that an estimate on ``device`` draws from (torch's CPU
    generator, ``device``'s CUDA generator when it is a CUDA device, Python's ``random``, numpy's
    global state) and restore them on exit, also when the estimate raises."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def seed_minibatch(seed: int, device: torch.device) -> None:
    """Seed the generators an estimate on ``device`` draws from with ``seed`` (the same streams as
    ``pyro.set_rng_seed(seed)`` gives there, without touching the other CUDA devices)."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
