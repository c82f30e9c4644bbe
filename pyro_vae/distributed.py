"""torch.distributed helpers: one process per device, started by ``torchrun``.

Every function here works without ``torch.distributed`` (one process): then the world has size 1,
this process is rank 0, reductions return their input and gathers a one-element list.

How :func:`pyro_vae.train` and :func:`pyro_vae.estimate_log_likelihood` use it:

* training: the ELBO loss module (see :class:`pyro_vae.training.ELBOLoss`, the counterpart of Pyro's
  ``ELBO.__call__(model, guide)`` module) is wrapped in ``DistributedDataParallel``. Every process
  draws the same data order (a generator seeded with ``seed``) and takes its slice of each global
  minibatch of ``batch_size`` points (``batch_size / world_size`` each); DDP averages gradients,
  and each process scales its loss by the world size first, so a step's gradient is the gradient
  of the whole minibatch's loss, as in one process at the same ``batch_size`` and learning rate.
  Each process draws its own latent noise (seeded ``seed + rank``). Metrics are summed over
  processes; only rank 0 writes files.
* evaluation: minibatch ``b`` of the data goes to rank ``b mod world_size``; with a seed, each
  minibatch draws from its own seed, so the gathered per-datapoint estimates equal a one-process
  run's with the same seed.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist

__all__ = ["all_true", "barrier", "any_true", "broadcast_object", "gather_objects", "init_from_env", "is_main", "rank", "sum_gradients", "sum_tensor",
           "world_size"]


def _active() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without torch.distributed)."""
    return tdist.get_world_size() if _active() else 1


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return tdist.get_rank() if _active() else 0


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0)."""
    return rank() == 0


def _collective_device() -> torch.device:
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_true(flag: torch.Tensor | bool) -> bool:
    """``True`` when ``flag`` holds on every process (one host sync)."""
    if not _active():
        return bool(flag)
    t = torch.as_tensor(flag, dtype=torch.int32).to(_collective_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return bool(t)


def any_true(flag: bool) -> bool:
    """``True`` when ``flag`` holds on some process."""
    if not _active():
        return bool(flag)
    t = torch.tensor(int(flag), dtype=torch.int32, device=_collective_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t)


def sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over processes (a new tensor; ``t`` itself with one process)."""
    if not _active():
        return t
    total = t.detach().clone().to(_collective_device())
    tdist.all_reduce(total, op=tdist.ReduceOp.SUM)
    return total


def sum_gradients(grads: list[torch.Tensor], found_inf: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The gradients summed over processes (one all-reduce of one flat buffer) and ``found_inf``
    (a 0-d float, 1 where this process's loss or gradient is not finite) maxed over them; the
    inputs themselves with one process. The compiled step's counterpart of DDP's all-reduce: each
    process's gradient is that of its share of the minibatch, so the sum is the whole minibatch's."""
    if not _active():
        return grads, found_inf
    device = _collective_device()
    flat = torch.cat([g.reshape(-1) for g in grads]).to(device)
    flag = found_inf.detach().clone().to(device)
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
    summed = [part.view_as(g).to(g.device) for part, g in zip(flat.split([g.numel() for g in grads]), grads)]
    return summed, flag.to(found_inf.device)


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (picklable objects)."""
    if not _active():
        return [obj]
    gathered = [None] * tdist.get_world_size()
    tdist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every process (``obj`` itself with one process)."""
    if not _active():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every process (nothing with one process)."""
    if _active():
        tdist.barrier()


def init_from_env(device: str | None = None) -> torch.device | None:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment).

    NCCL when CUDA is available and ``device`` is not ``cpu``, gloo otherwise; each process
    takes GPU ``LOCAL_RANK``. Returns that device, or ``None`` when not started by torchrun.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or tdist.is_initialized():
        return None
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        tdist.init_process_group("nccl")
        return torch.device("cuda", local)
    tdist.init_process_group("gloo")
    return torch.device("cpu")
