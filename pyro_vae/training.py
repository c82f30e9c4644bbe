"""Stochastic variational inference for any conforming model/guide pair.

:func:`train` runs SVI epochs over a :class:`~pyro_vae.data.Dataset` (or a plain tensor) whose
tensors stay on their device: each epoch draws a fresh binarization on the device when the data
set asks for it, shuffles indices there and slices minibatches there. Losses are accumulated as
device tensors and read once per log interval and once per epoch.

Reported numbers are per datapoint, in nats, as ELBOs (higher is better):

* ``train_elbo``: the mean over the epoch's minibatches of the training objective's estimate,
  taken while the parameters change (the usual running training bound);
* ``test_elbo`` (± ``test_elbo_se``) and ``valid_elbo``: a one-sample ELBO per test (validation)
  point after the epoch, with the same estimator whatever the training objective
  (:func:`pyro_vae.evaluate_elbo`);
* ``train_seconds``: wall-clock of the epoch's SVI steps only (evaluation excluded).

Reliability (see :func:`train`): checkpoints every ``checkpoint_every`` steps and at the end of
every epoch hold the parameters, the optimizer state, every RNG state, the position inside the
epoch, the settings and the metrics so far, so ``train(..., resume=True)`` continues a run
exactly (bitwise on the CPU); SIGINT and SIGTERM save a checkpoint and stop with
:class:`TrainingInterrupted`; a non-finite loss or gradient stops the run at that step (or backs
off the learning rate) without applying it.

Distributed training (``torchrun``): when ``torch.distributed`` is initialized with several
processes, :func:`train` wraps the loss in ``DistributedDataParallel``; see :mod:`pyro_vae.distributed`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import pyro.optim
import torch
from tqdm.auto import tqdm

from . import distributed as dist
from .check import check_model_guide
from .checkpoint import CheckpointError, get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .data import Dataset
from .evaluation import evaluate_elbo
from .importance import guess_max_plate_nesting
from .generate import reconstruct, sample_prior
from .objectives import get_elbo, scale_latents
from .plots import plot_elbo_curves, save_image_grid
from .optim import OPTIMIZERS, make_optimizer, scale_learning_rate

__all__ = ["OPTIMIZERS", "RUN_FILES", "NonFiniteLossError", "TrainResult", "TrainingInterrupted",
           "make_optimizer", "train"]

RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt")
"""Files every run folder gets (plus ``best.pt`` with a validation set, and PNGs for images)."""

SETTINGS_FIXED_ON_RESUME = (
    "elbo", "num_particles", "labels", "kl_warmup_steps", "free_bits", "optimizer", "lr", "batch_size",
    "seed", "dataset", "num_train", "num_test", "num_valid", "checkpoint_every",
)
"""Settings a resumed run must share with the checkpoint (``epochs`` and the device may change)."""

MAX_BACKOFFS = 10
"""A run with ``nonfinite_backoff`` stops after this many non-finite steps."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped :func:`train` after saving a checkpoint.

    Attributes:
        signal_number: the signal received (``signal.SIGINT`` or ``signal.SIGTERM``).
        checkpoint: the checkpoint written, or ``None`` when the run writes no files.
        step: SVI steps taken when it stopped.
    """

    def __init__(self, message: str, signal_number: int, checkpoint: Path | None, step: int):
        super().__init__(message)
        self.signal_number, self.checkpoint, self.step = signal_number, checkpoint, step


class NonFiniteLossError(FloatingPointError):
    """A non-finite loss or gradient: the step that produced it was not applied."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        history: one dict of metrics per epoch (see the module docstring for the keys).
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


class _Loss(torch.nn.Module):
    """The ELBO of a pair as a ``torch.nn.Module`` (the counterpart of Pyro's ``ELBOModule``
    for pairs that are methods of an ``nn.Module``), so that ``DistributedDataParallel`` can
    wrap it: ``module`` holds every parameter the pair registers with ``pyro.module``."""

    def __init__(self, module: torch.nn.Module | None, objective, model, guide):
        super().__init__()
        self.module, self.objective, self.model, self.guide = module, objective, model, guide

    def forward(self, x, *args):
        return self.objective.differentiable_loss(self.model, self.guide, x, *args)


def _svi_step(loss_fn, optim, x, *args, grad_scale: float = 1.0):
    """Loss and gradients on the batch ``x``, the optimizer step only if both are finite.

    Returns ``(loss, applied)``: the loss as a device tensor, and whether the step was applied.
    The finiteness check reads one boolean per step (one host sync; agreed across ranks when
    distributed), so that a bad step is never applied.
    """
    with pyro.poutine.trace(param_only=True) as capture:
        loss = loss_fn(x, *args)
        (loss * grad_scale if grad_scale != 1.0 else loss).backward()
    # one entry per tensor (a module registered under two names appears twice), as in Pyro's SVI
    params = list(dict.fromkeys(site["value"].unconstrained() for site in capture.trace.nodes.values()))
    grads = [p.grad for p in params if p.grad is not None]
    finite = torch.isfinite(loss.detach())
    if grads:
        finite = finite & torch.isfinite(_total_norm(grads))
    applied = dist.all_true(finite)
    if applied:
        optim(params)
    for p in params:
        p.grad = None
    return loss.detach(), applied


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together, in one fused pass where torch has it (>= 2.6)."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.stack([g.detach().norm() for g in grads]).norm()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare_out(out, overwrite: bool, resume: bool) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    if resume:
        if not (out / "checkpoint.pt").is_file():
            raise FileNotFoundError(f"cannot resume: {out} holds no checkpoint.pt (is it a run folder?)")
        return out
    existing = [name for name in RUN_FILES if (out / name).exists()]
    dist.barrier()  # every process has looked before rank 0 writes
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(existing)}); choose another folder, resume it "
            "(resume=True, --resume) or pass overwrite=True (--overwrite) to replace it"
        )
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "best.pt"):
            (out / name).unlink(missing_ok=True)
    return out


def _write_atomic(path: Path, text: str) -> None:
    """Write a small text file through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path}: {e} (disk full or not writable?)") from e


def _tensorboard_writer(out: Path | None):
    if out is None or not dist.is_main():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def _check_pair(model, guide, data: Dataset, elbo: str, labels: bool) -> int:
    """Run :func:`check_model_guide` on training data without touching the RNG streams; returns
    the pair's max plate nesting (so that the objective does not draw from the RNGs to guess it)."""
    if labels and data.train_labels is None:
        raise ValueError(f"labels=True but the data set {data.name!r} has no labels")
    with torch.random.fork_rng(devices=[data.device] if data.device.type == "cuda" else []):
        x = torch.bernoulli(data.train[:8]) if data.binarize else data.train
        args = (data.train_labels[: len(x)],) if labels else ()
        check_model_guide(model, guide, x, *args, elbo=elbo)
        return guess_max_plate_nesting(model, guide, x[:2], *(a[:2] for a in args))


def _write_pictures(model, guide, data: Dataset, out: Path, result, label: str, batch_size, labels) -> None:
    plot_elbo_curves({label: result}, out / "elbo.png", batch_size, title=data.name)
    if data.image_shape is None:
        return
    x = (data.test if data.test is not None else data.train)[:50]
    args = ((data.test_labels if data.test is not None else data.train_labels)[:50],) if labels else ()
    if data.test is None and data.binarize:
        x = torch.bernoulli(x)
    save_image_grid(sample_prior(model, x, *args), data.image_shape, out / "samples.png",
                    title="samples: decoder mean for z ~ p(z)" + (" (labels of the test images)" if labels else ""))
    n = min(30, len(x))
    recon_args = tuple(a[:n] for a in args)
    pairs = torch.stack([x[:n], reconstruct(model, guide, x[:n], *recon_args)], dim=1).reshape(2 * n, -1)
    save_image_grid(pairs, data.image_shape, out / "reconstructions.png", ncols=10,
                    title="test images (left) and reconstructions (right), z ~ q(z|x)")


@contextmanager
def _stop_on_signals(enabled: bool):
    """Turn SIGINT/SIGTERM into a flag that the step loop reads (a second SIGINT while the
    checkpoint is written raises ``KeyboardInterrupt`` at once). Only in the main thread."""
    flag = {"signal": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class _Position:
    """Where a run is: what a checkpoint needs, beyond parameters and optimizer, to continue exactly."""

    step: int = 0  # SVI steps taken (applied or skipped)
    epoch: int = 0  # epochs completed
    batch: int = 0  # minibatches done in the epoch under way (0 at an epoch boundary)
    epoch_data_rng: torch.Tensor | None = None  # data-order generator state at the epoch's start
    epoch_total: torch.Tensor | None = None  # sum of the epoch's losses so far
    interval_total: torch.Tensor | None = None
    interval_points: int = 0
    epoch_seconds: float = 0.0

    def state(self) -> dict:
        return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}


def _owner_module(model, guide, module):
    if module is not None:
        return module
    owners = {id(getattr(fn, "__self__", None)): getattr(fn, "__self__", None) for fn in (model, guide)}
    owners = [m for m in owners.values() if isinstance(m, torch.nn.Module)]
    return owners[0] if len(owners) == 1 else None


def _ddp_loss(loss: _Loss, device: torch.device):
    """Wrap the loss in DistributedDataParallel; every parameter in Pyro's param store must be a
    parameter of the pair's module (so DDP averages its gradient)."""
    if loss.module is None:
        raise ValueError("distributed training needs the nn.Module holding the pair's networks: make model and "
                         "guide methods of one nn.Module (as the shipped pairs are) or pass module=...")
    owned = {id(p) for p in loss.module.parameters()}
    stray = [name for name, p in pyro.get_param_store().named_parameters() if id(p) not in owned]
    if stray:
        raise ValueError(f"distributed training: parameters {stray[:5]} are in Pyro's param store but not in the "
                         "pair's nn.Module, so DistributedDataParallel would not average their gradients; "
                         "register them as nn.Parameters of the module")
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index or 0] if device.type == "cuda" else None
    return DistributedDataParallel(loss, device_ids=device_ids)


def train(
    model,
    guide,
    data: Dataset | torch.Tensor,
    *,
    elbo: str = "trace",
    num_particles: int = 1,
    labels: bool = False,
    kl_warmup_steps: int = 0,
    free_bits: float = 0.0,
    optimizer: str | pyro.optim.PyroOptim = "adam",
    lr: float = 1e-3,
    batch_size: int = 100,
    epochs: int = 1,
    seed: int | None = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_every: int = 0,
    nonfinite_backoff: float | None = None,
    config: dict | None = None,
    eval_batch_size: int = 1000,
    log_interval: int = 100,
    progress: bool = True,
    clear_params: bool = True,
    module: torch.nn.Module | None = None,
    jit: bool = False,
    compile: bool | str = False,
) -> TrainResult:
    """Train a model/guide pair with SVI.

    Args:
        model, guide: a conforming pair (see :mod:`pyro_vae.models.base`) whose parameters live
            on the same device as ``data``; called as ``fn(x_batch)`` (``fn(x_batch, y_batch)``
            with ``labels``). :func:`~pyro_vae.check_model_guide` checks it before the first step.
        data: a :class:`~pyro_vae.data.Dataset` (train/test/validation splits, dynamic
            binarization) or an ``(N, ...)`` tensor of training data (no test ELBO then).
        elbo: ``trace`` (Trace_ELBO), ``meanfield`` (TraceMeanField_ELBO) or ``iwae``.
        num_particles: samples per datapoint per step (averaged, or ``K`` for ``iwae``).
        labels: pass each batch's class labels (``data.train_labels``) as the second argument,
            for conditional pairs; the test ELBO uses ``data.test_labels``.
        kl_warmup_steps: ``N > 0`` scales every latent site (model and guide) by
            ``min(1, step / N)`` for step ``1, 2, ...`` (KL warm-up); not with ``iwae``.
        free_bits: nats per latent dimension for :class:`~pyro_vae.objectives.FreeBitsELBO`
            (``meanfield`` only); 0 is off.
        optimizer, lr: ``adam`` or ``adagrad`` and its learning rate (one fused torch optimizer
            over all parameters: :class:`~pyro_vae.optim.FusedOptim`); or a ``PyroOptim``
            instance (``lr`` is then ignored), which keeps its state across calls, e.g. for a
            learning-rate schedule run as several ``train(..., clear_params=False, seed=None)``.
        batch_size: datapoints per SVI step; each epoch visits every training point once. Under
            ``torchrun`` this is the global batch, split evenly over the processes.
        epochs: passes over the training set (in total, counting a resumed run's earlier ones).
        seed: seeds Pyro, torch, numpy and random, and the data order (``None``: draw the
            data-order seed from torch's RNG and leave the RNGs as they are).
        out: run folder for ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` (the latest
            good state), ``best.pt`` (best validation ELBO, when ``data.valid`` exists) and PNGs
            (samples, reconstructions, ELBO curves, written when the run completes);
            TensorBoard events too when ``tensorboard`` is installed. ``None`` writes nothing.
        overwrite: allow ``out`` to hold a previous run, which is then replaced.
        resume: continue the run saved in ``out`` (its ``checkpoint.pt``) up to ``epochs`` in
            total. Settings must match the checkpoint's (``CheckpointError`` names the ones that
            do not). On the CPU the result is bitwise equal to an uninterrupted run.
        checkpoint_every: also checkpoint every this many steps inside an epoch (0: only at the
            end of each epoch).
        nonfinite_backoff: ``None`` stops the run with :class:`NonFiniteLossError` at a step
            whose loss or gradient is not finite; a factor in (0, 1) instead skips that step,
            multiplies the learning rate by the factor and goes on (at most
            :data:`MAX_BACKOFFS` times). The bad step is never applied.
        config: extra entries for ``config.json`` (e.g. how to rebuild the model).
        eval_batch_size: datapoints per batch when evaluating the test/validation ELBO.
        log_interval: steps between updates of the progress bar's loss (one host sync each).
        progress: show a progress bar.
        clear_params: clear Pyro's param store first, so the nets start from their own
            initial weights rather than from a previous run's stored values.
        module: the ``nn.Module`` holding the pair's networks, for distributed training and
            ``compile``, when model and guide are not methods of one module.
        jit: compile the loss with ``torch.jit.trace`` (:class:`~pyro_vae.objectives.JitELBO`):
            Pyro's Python work runs once instead of every step. For pairs with static structure;
            checked against the eager loss before the first step. Not with ``kl_warmup_steps``.
        compile: ``torch.compile`` each network of the pair (the module's children) in place
            for the run, Pyro's bookkeeping staying eager; ``True`` or a ``torch.compile`` mode
            (``"reduce-overhead"`` uses CUDA graphs, ``"max-autotune"``). Needs a C++ compiler on
            the CPU (Triton on CUDA). Same parameter names, so checkpoints are unchanged.

    Returns:
        :class:`TrainResult` with the per-epoch history (earlier epochs included on resume).

    Raises:
        ValueError: bad settings (names, sizes) with the valid choices in the message.
        ModelGuideError: (a ``ValueError``) the pair breaks the contract; the message names
            the rule and the site.
        FileExistsError: ``out`` already holds a run and neither ``overwrite`` nor ``resume``.
        CheckpointError: a checkpoint cannot be written (full disk: the previous one is left
            intact) or, on resume, read or matched to this pair and these settings.
        NonFiniteLossError: a non-finite loss or gradient (the step is named, not applied).
        TrainingInterrupted: SIGINT/SIGTERM; the checkpoint was saved (when ``out`` is set).
    """
    if isinstance(data, torch.Tensor):
        data = Dataset(name="tensor", train=data, test=None, image_shape=None, likelihood=None)
    num_train = data.train.shape[0]
    if num_train == 0:
        raise ValueError("the training set is empty")
    if not 0 < batch_size <= num_train:
        raise ValueError(f"batch_size must be between 1 and the training set size {num_train}, got {batch_size}")
    world, rank = dist.world_size(), dist.rank()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the number of processes {world}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if kl_warmup_steps < 0 or checkpoint_every < 0:
        raise ValueError("kl_warmup_steps and checkpoint_every must be >= 0")
    if jit and kl_warmup_steps:
        raise ValueError("jit=True with kl_warmup_steps: torch.jit.trace would record the warm-up factor as a "
                         "constant; train with KL warm-up without jit")
    if kl_warmup_steps and elbo == "iwae":
        raise ValueError("KL warm-up scales the latent sites only, which has no importance-weighted "
                         "analogue: use elbo 'trace' or 'meanfield' with kl_warmup_steps")
    if nonfinite_backoff is not None and not 0 < nonfinite_backoff < 1:
        raise ValueError(f"nonfinite_backoff must be a factor in (0, 1), got {nonfinite_backoff}")
    if resume and out is None:
        raise ValueError("resume=True needs out: the run folder to continue")
    if resume and not (Path(out) / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"cannot resume: {out} holds no checkpoint.pt (is it a run folder?)")
    get_elbo(elbo, num_particles, free_bits)  # bad names and settings fail before anything runs
    if isinstance(optimizer, pyro.optim.PyroOptim):
        optim, optimizer = optimizer, type(optimizer).__name__
    else:
        optim = make_optimizer(optimizer, lr)
    device = data.device
    if clear_params:
        pyro.clear_param_store()
    objective = get_elbo(elbo, num_particles, free_bits, _check_pair(model, guide, data, elbo, labels), jit=jit)
    settings = dict(
        elbo=elbo, num_particles=num_particles, labels=labels, kl_warmup_steps=kl_warmup_steps,
        free_bits=free_bits, optimizer=optimizer, lr=lr, batch_size=batch_size,
        epochs=epochs, seed=seed, dataset=data.name, num_train=num_train,
        num_test=None if data.test is None else data.test.shape[0],
        num_valid=None if data.valid is None else data.valid.shape[0],
        checkpoint_every=checkpoint_every, device=str(device), world_size=world, jit=jit, compile=compile,
    )
    full_config = {**(config or {}), **settings}
    result = TrainResult()
    pos = _Position()
    best_valid = -math.inf
    data_rng = torch.Generator(device=device)
    if resume:
        state = _resume_state(Path(out) / "checkpoint.pt", model, guide, data, labels, settings)
        optim.set_state(state["optimizer"])
        pos = _Position(**state["position"])
        result.history, result.curve = list(state["history"]), list(state["curve"])
        result.skipped_steps = list(state.get("skipped_steps", []))
        result.train_seconds = sum(h["train_seconds"] for h in result.history)
        best_valid = state.get("best_valid_elbo", -math.inf)
        data_rng.set_state(state["data_rng"])
        set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        if rank >= len(state["rng"]):  # a run resumed on more processes: fresh noise streams
            pyro.set_rng_seed((seed or 0) + rank + pos.step)
        if pos.epoch >= epochs:
            raise ValueError(f"the run in {out} already has {pos.epoch} epochs; ask for more (epochs=N, "
                             f"--epochs N) to continue it")
    elif seed is not None:
        pyro.set_rng_seed(seed + rank)  # each process draws its own noise; rank 0 as a single process
        data_rng.manual_seed(seed)
    else:
        data_rng.manual_seed(int(torch.randint(2**62, (1,)).item()))
    out = _prepare_out(out, overwrite, resume)
    result.out = out
    main = out is not None and dist.is_main()
    if main:
        _write_atomic(out / "config.json", json.dumps(full_config, indent=2))
        _write_atomic(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in result.history))

    step_model, step_guide = model, guide
    if kl_warmup_steps:
        warmup = lambda: min(1.0, (pos.step + 1) / kl_warmup_steps)  # noqa: E731  read at each step
        step_model, step_guide = scale_latents(model, warmup), scale_latents(guide, warmup)
    loss_fn = _Loss(_owner_module(model, guide, module), objective, step_model, step_guide)
    steps_per_epoch = math.ceil(num_train / batch_size)
    if world > 1 and num_train % batch_size and num_train % batch_size < world:
        steps_per_epoch -= 1  # a last batch smaller than the number of processes is dropped
    if jit:
        _compile_jit(objective, step_model, step_guide, data, labels, batch_size, steps_per_epoch, world, rank)
    if world > 1:
        loss_fn = _ddp_loss(loss_fn, device)

    def checkpoint(name="checkpoint.pt", **extra):
        """Save the current state (every process takes part; rank 0 writes)."""
        rng_states = dist.gather_objects(get_rng_state())
        if not main:
            return None
        return save_checkpoint(
            out / name, optim, step=pos.step, epoch=pos.epoch, position=pos.state(), rng=rng_states,
            data_rng=data_rng.get_state(), config=full_config, history=result.history, curve=result.curve,
            skipped_steps=result.skipped_steps, best_valid_elbo=best_valid, finished=pos.epoch >= epochs, **extra)

    writer = _tensorboard_writer(out)
    # Pyro's per-step argument validation is off in the loop (about 1 ms a step on the CPU; a host
    # sync per distribution on a GPU): check_model_guide has validated the pair, and a non-finite
    # loss or gradient is still caught at its step.
    with _stop_on_signals(enabled=True) as stop, pyro.validation_enabled(False), \
            _compiled_networks(_owner_module(model, guide, module), compile):
        while pos.epoch < epochs:
            epoch = pos.epoch + 1
            _sync(device)
            start = time.perf_counter()
            if pos.batch == 0:
                pos.epoch_data_rng = data_rng.get_state()
                pos.epoch_total = torch.zeros((), device=device)
                pos.interval_total, pos.interval_points, pos.epoch_seconds = torch.zeros((), device=device), 0, 0.0
            else:  # resuming inside an epoch: redraw the epoch's data and order from its saved state
                data_rng.set_state(pos.epoch_data_rng)
                pos.epoch_total, pos.interval_total = pos.epoch_total.to(device), pos.interval_total.to(device)
            x_epoch = data.train_epoch(generator=data_rng)
            perm = torch.randperm(num_train, device=device, generator=data_rng)
            bar = tqdm(total=steps_per_epoch, initial=pos.batch, desc=f"epoch {epoch}/{epochs} [{elbo}]",
                       disable=not progress or not dist.is_main(), leave=False)
            for b in range(pos.batch, steps_per_epoch):
                index = perm[b * batch_size : (b + 1) * batch_size]
                points = index.shape[0]
                if world > 1:
                    index = index.tensor_split(world)[rank]
                args = (data.train_labels[index],) if labels else ()
                loss, applied = _svi_step(loss_fn, optim, x_epoch[index], *args, grad_scale=float(world))
                if not applied:
                    _nonfinite(loss, pos, epoch, b, result, optim, nonfinite_backoff, out)
                else:
                    pos.epoch_total = pos.epoch_total + loss
                    pos.interval_total = pos.interval_total + loss
                pos.interval_points += points
                pos.step += 1
                pos.batch = b + 1
                bar.update(1)
                if (b + 1) % log_interval == 0 or b + 1 == steps_per_epoch:
                    value = -float(dist.sum_tensor(pos.interval_total)) / max(pos.interval_points, 1)
                    result.curve.append({"step": pos.step, "samples_seen": pos.step * batch_size, "train_elbo": value})
                    bar.set_postfix(elbo=f"{value:.2f}")
                    pos.interval_total, pos.interval_points = torch.zeros((), device=device), 0
                interrupted = dist.any_true(stop["signal"] is not None)
                if b + 1 < steps_per_epoch and (interrupted or (checkpoint_every and pos.step % checkpoint_every == 0)):
                    _sync(device)
                    pos.epoch_seconds += time.perf_counter() - start
                    start = time.perf_counter()
                    path = checkpoint()
                    if interrupted:
                        bar.close()
                        _interrupt(stop["signal"] or signal.SIGTERM, path, pos, epoch, steps_per_epoch, out)
            bar.close()
            _sync(device)
            pos.epoch_seconds += time.perf_counter() - start
            result.train_seconds += pos.epoch_seconds
            epoch_points = min(steps_per_epoch * batch_size, num_train)
            metrics = {
                "epoch": epoch,
                "step": pos.step,
                "train_elbo": -float(dist.sum_tensor(pos.epoch_total)) / epoch_points,
                "train_seconds": pos.epoch_seconds,
                "total_train_seconds": result.train_seconds,
            }
            if data.test is not None:
                test_args = (data.test_labels,) if labels else ()
                metrics["test_elbo"], metrics["test_elbo_se"] = evaluate_elbo(
                    model, guide, data.test, eval_batch_size, *test_args, distributed=True)
            if data.valid is not None:
                valid_args = (data.valid_labels,) if labels else ()
                metrics["valid_elbo"], metrics["valid_elbo_se"] = evaluate_elbo(
                    model, guide, data.valid, eval_batch_size, *valid_args, distributed=True)
            result.history.append(metrics)
            pos.epoch, pos.batch = epoch, 0
            pos.epoch_data_rng = pos.epoch_total = pos.interval_total = None
            if progress and dist.is_main():
                test = f", test ELBO {metrics['test_elbo']:.2f} ± {metrics['test_elbo_se']:.2f}" if "test_elbo" in metrics else ""
                tqdm.write(f"epoch {epoch}: train ELBO {metrics['train_elbo']:.2f}{test} nats/datapoint, "
                           f"{pos.epoch_seconds:.1f} s")
            if out is not None:
                improved = metrics.get("valid_elbo", -math.inf) > best_valid
                if improved:
                    best_valid = metrics["valid_elbo"]
                path = checkpoint()
                if improved:
                    checkpoint("best.pt")
                if main:
                    _write_atomic(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in result.history))
                    if writer is not None:
                        for key in ("train_elbo", "test_elbo", "valid_elbo"):
                            if key in metrics:
                                writer.add_scalar(key, metrics[key], pos.step)
                if dist.any_true(stop["signal"] is not None) and pos.epoch < epochs:
                    _interrupt(stop["signal"] or signal.SIGTERM, path, pos, epoch, steps_per_epoch, out)
    if main:
        _write_pictures(model, guide, data, out, result, elbo, batch_size, labels)
    if writer is not None:
        writer.close()
    return result


def _compile_jit(objective, model, guide, data: Dataset, labels: bool, batch_size: int, steps_per_epoch: int,
                 world: int, rank: int) -> None:
    """Record the jit graphs of every minibatch shape this process will see (the full one and
    the last, smaller one) before the first step, so that recording draws no random numbers
    inside the run (a resumed run stays bitwise equal) and the loss is checked first."""
    last = min(batch_size, data.train.shape[0] - (steps_per_epoch - 1) * batch_size)
    for size in sorted({batch_size, last}):
        n = len(torch.arange(size).tensor_split(world)[rank]) if world > 1 else size
        batches = []
        for part in (slice(0, n), slice(-n, None)):  # record on the first n points, check on the last n
            x = data.train[part]
            x = (x > 0.5).to(x.dtype) if data.binarize else x
            batches.append((x, data.train_labels[part]) if labels else (x,))
        objective.compile(model, guide, *batches[0], check=batches[1])


@contextmanager
def _compiled_networks(module: torch.nn.Module | None, mode: bool | str):
    """``torch.compile`` every child module of the pair's ``module`` in place for the duration."""
    if not mode:
        yield
        return
    if module is None:
        raise ValueError("compile=True needs the nn.Module holding the pair's networks: make model and guide "
                         "methods of one nn.Module (as the shipped pairs are) or pass module=...")
    children = list(module.children())
    previous = [child._compiled_call_impl for child in children]
    for child in children:
        child.compile(**({} if mode is True else {"mode": mode}))
    try:
        yield
    finally:
        for child, impl in zip(children, previous):
            child._compiled_call_impl = impl


def _resume_state(path: Path, model, guide, data: Dataset, labels: bool, settings: dict) -> dict:
    """Load a checkpoint into the pair for resuming, after checking that it can be resumed."""
    x = data.test[:2] if data.test is not None else data.train[:2]
    if data.binarize:
        x = torch.bernoulli(x.clamp(0, 1), generator=torch.Generator(device=x.device).manual_seed(0))
    args = (((data.test_labels if data.test is not None else data.train_labels)[:2]),) if labels else ()
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        state = load_checkpoint(path, model, guide, x, *args)
    if "position" not in state:
        raise CheckpointError(f"{path} holds parameters only (written by an older pyro-vae or by "
                              "save_checkpoint directly): it cannot be resumed exactly")
    saved = state["config"]
    changed = [f"{k}: checkpoint {saved.get(k)!r}, now {settings[k]!r}" for k in SETTINGS_FIXED_ON_RESUME
               if saved.get(k) != settings[k]]
    if changed:
        raise CheckpointError(f"cannot resume {path}: the run was written with other settings ({'; '.join(changed)})")
    return state


def _nonfinite(loss, pos: _Position, epoch: int, b: int, result: TrainResult, optim, backoff, out) -> None:
    """A step whose loss or gradient was not finite (and was not applied): stop, or back off."""
    where = f"step {pos.step + 1} (epoch {epoch}, minibatch {b + 1})"
    kept = f"; the last good checkpoint {out / 'checkpoint.pt'} is intact" if out is not None and (out / "checkpoint.pt").exists() else ""
    if backoff is None or len(result.skipped_steps) >= MAX_BACKOFFS:
        why = "" if backoff is None else f" for the {MAX_BACKOFFS + 1}th time (nonfinite_backoff gives up)"
        raise NonFiniteLossError(
            f"non-finite loss or gradient at {where}{why}: loss {float(loss)}; the step was not applied{kept}. "
            "Lower the learning rate, or pass nonfinite_backoff (--nonfinite-backoff) to skip such steps")
    scale_learning_rate(optim, backoff)
    factor = backoff ** (len(result.skipped_steps) + 1)
    result.skipped_steps.append({"step": pos.step + 1, "epoch": epoch, "lr_factor": factor})
    tqdm.write(f"non-finite loss or gradient at {where}: step skipped, learning rate now x{factor:g}")


def _interrupt(signum: int, path, pos: _Position, epoch: int, steps_per_epoch: int, out) -> None:
    name = signal.Signals(signum).name
    where = f"step {pos.step} (epoch {epoch}, minibatch {pos.batch}/{steps_per_epoch})"
    if path is not None:
        message = (f"training interrupted by {name} at {where}; checkpoint saved to {path}; resume with: "
                   f"pyro-vae train --resume {out}  (Python: train(..., out={str(out)!r}, resume=True))")
    else:
        message = f"training interrupted by {name} at {where}; no run folder, nothing saved"
    raise TrainingInterrupted(message, signum, path, pos.step)
