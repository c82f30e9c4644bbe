"""How an estimate is cut into pieces: minibatches of datapoints (their arguments, seeds and
processes) and chunks of particles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..distributed import gather_objects, rank, world_size

__all__ = ["MinibatchPlan", "particles_per_chunk", "slice_args"]

_PAIRS_PER_CHUNK = 1 << 16  # particles x datapoints per vectorized chunk (auto chunk size)


def slice_args(args: tuple, kwargs: dict, num_points: int, index: slice) -> tuple[tuple, dict]:
    """Slice every tensor argument whose first dimension runs over the ``num_points`` datapoints
    (labels ``(N,)``, say) with ``index``; other arguments pass unchanged."""

    def cut(a):
        return a[index] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == num_points else a

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def particles_per_chunk(requested: int | None, num_samples: int, batch: int,
                        group_sizes: Sequence[int]) -> int:
    """Particles drawn at once for a minibatch of ``batch`` datapoints: ``requested``, or about
    65536 particle x datapoint pairs; at most ``num_samples``; a multiple of every IWAE ``k`` in
    ``group_sizes`` unless that exceeds ``num_samples``.

    Raises:
        ValueError: a ``requested`` size below ``num_samples`` that is no multiple of every ``k``.
    """
    step = math.lcm(*group_sizes) if group_sizes else 1
    size = requested if requested is not None else max(1, _PAIRS_PER_CHUNK // batch)
    size = min(size, num_samples)
    if size >= step:
        size -= size % step
    elif requested is not None and size < num_samples:
        raise ValueError(
            f"particle_chunk_size={requested} must be a multiple of every IWAE k in {group_sizes} "
            f"(lcm {step})"
        )
    else:
        size = min(step, num_samples)
    return size


@dataclass(frozen=True)
class MinibatchPlan:
    """Minibatch ``b`` holds datapoints ``b * batch_size`` up to ``(b + 1) * batch_size`` (fewer
    in the last one), draws from ``seeds[b]`` and is evaluated by process ``b mod world``.

    Attributes:
        num_points: ``N``, the number of datapoints.
        batch_size: datapoints per minibatch.
        seeds: one seed per minibatch, or ``None`` to leave the RNGs as they are.
        mine: the minibatches this process evaluates, in data order.
        world: number of processes (1 without ``torch.distributed``).
    """

    num_points: int
    batch_size: int
    seeds: list[int] | None
    mine: list[int]
    world: int

    @classmethod
    def make(cls, num_points: int, batch_size: int, seed: int | None, distributed: bool) -> MinibatchPlan:
        """The plan for ``num_points`` datapoints; the minibatch seeds derive from ``seed``, and with
        ``distributed`` the minibatches are shared among the ``torchrun`` processes."""
        count = len(range(0, num_points, batch_size))
        seeds = None
        if seed is not None:
            seeds = torch.randint(2**32, (count,), generator=torch.Generator().manual_seed(seed)).tolist()
        world, this_rank = (world_size(), rank()) if distributed else (1, 0)
        return cls(num_points, batch_size, seeds, list(range(this_rank, count, world)), world)

    def index(self, b: int) -> slice:
        """The rows of minibatch ``b``."""
        start = b * self.batch_size
        return slice(start, min(start + self.batch_size, self.num_points))

    def num_mine(self) -> int:
        """Number of datapoints in this process's minibatches."""
        return sum(min(self.batch_size, self.num_points - b * self.batch_size) for b in self.mine)

    def gather(self, results: dict[str, list], bounds: dict[int, list]) -> tuple[dict, dict]:
        """Every process's per-minibatch lists (``results[key][i]``, ``bounds[k][i]``: minibatch
        ``mine[i]``), back in data order on every process; unchanged in one process."""
        if self.world == 1:
            return results, bounds
        parts = gather_objects((self.mine, results, bounds))
        order = sorted((b, r, i) for r, (batches, _, _) in enumerate(parts) for i, b in enumerate(batches))
        results = {key: [parts[r][1][key][i] for _, r, i in order] if parts[0][1][key] else []
                   for key in results}
        bounds = {k: [parts[r][2][k][i] for _, r, i in order] for k in bounds}
        return results, bounds
