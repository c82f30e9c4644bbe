"""Stochastic variational inference for any conforming model/guide pair.

:func:`train` runs SVI epochs over a :class:`~pyro_vae.data.Dataset` (or a plain tensor) whose
tensors stay on their device: each epoch draws a fresh binarization on the device when the data
set asks for it, shuffles indices there and slices minibatches there. Losses are accumulated as
device tensors and read once per log interval and once per epoch.

Reported numbers are per datapoint, in nats, as ELBOs (higher is better):

* ``train_elbo``: the mean over the epoch's minibatches of the training objective's estimate,
  taken while the parameters change (the usual running training bound);
* ``test_elbo`` (± ``test_elbo_se``): a one-sample ELBO per test point after the epoch, with
  the same estimator whatever the training objective (:func:`pyro_vae.evaluate_elbo`);
* ``train_seconds``: wall-clock of the epoch's SVI steps only (evaluation excluded).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer.util import zero_grads
from tqdm.auto import tqdm

from .check import check_model_guide
from .checkpoint import save_checkpoint
from .data import Dataset
from .evaluation import evaluate_elbo
from .generate import reconstruct, sample_prior
from .objectives import get_elbo, scale_latents
from .plots import plot_elbo_curves, save_image_grid

__all__ = ["OPTIMIZERS", "RUN_FILES", "TrainResult", "make_optimizer", "train"]

OPTIMIZERS = ("adam", "adagrad")
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt")
"""Files every run folder gets (plus PNGs when the data are images)."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        history: one dict of metrics per epoch (see the module docstring for the keys).
        curve: the training objective's ELBO averaged over each ``log_interval`` steps, as
            ``{"step", "samples_seen", "train_elbo"}`` dicts (nats per datapoint).
        out: the run folder, or ``None`` when nothing was written.
        train_seconds: total wall-clock of SVI steps, evaluation excluded.
    """

    history: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    out: Path | None = None
    train_seconds: float = 0.0

    @property
    def final(self) -> dict:
        """Metrics of the last epoch."""
        return self.history[-1] if self.history else {}


def make_optimizer(name: str, lr: float) -> pyro.optim.PyroOptim:
    """A Pyro optimizer by name (``adam`` or ``adagrad``) with learning rate ``lr``."""
    if lr <= 0 or not math.isfinite(lr):
        raise ValueError(f"learning rate must be positive, got {lr}")
    if name == "adam":
        return pyro.optim.Adam({"lr": lr})
    if name == "adagrad":
        return pyro.optim.Adagrad({"lr": lr})
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def _svi_step(elbo, optim, model, guide, x, *args) -> torch.Tensor:
    """One SVI step on the batch ``x``; returns the loss as a device tensor (no host sync)."""
    with poutine.trace(param_only=True) as capture:
        loss = elbo.differentiable_loss(model, guide, x, *args)
        loss.backward()
    params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
    optim(params)
    zero_grads(params)
    return loss.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare_out(out, overwrite: bool) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(existing)}); choose another folder or pass "
            "overwrite=True (--overwrite) to replace it"
        )
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    return out


def _tensorboard_writer(out: Path | None):
    if out is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def _check_pair(model, guide, data: Dataset, elbo: str, labels: bool) -> None:
    """Run :func:`check_model_guide` on training data without touching the RNG streams."""
    if labels and data.train_labels is None:
        raise ValueError(f"labels=True but the data set {data.name!r} has no labels")
    with torch.random.fork_rng(devices=[data.device] if data.device.type == "cuda" else []):
        x = torch.bernoulli(data.train[:8]) if data.binarize else data.train
        args = (data.train_labels[: len(x)],) if labels else ()
        check_model_guide(model, guide, x, *args, elbo=elbo)


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
    recon_args = tuple(a[:30] for a in args)
    pairs = torch.stack([x[:30], reconstruct(model, guide, x[:30], *recon_args)], dim=1).reshape(60, -1)
    save_image_grid(pairs, data.image_shape, out / "reconstructions.png", ncols=10,
                    title="test images (left) and reconstructions (right), z ~ q(z|x)")


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
    config: dict | None = None,
    eval_batch_size: int = 1000,
    log_interval: int = 100,
    progress: bool = True,
    clear_params: bool = True,
) -> TrainResult:
    """Train a model/guide pair with SVI.

    Args:
        model, guide: a conforming pair (see :mod:`pyro_vae.models.base`) whose parameters live
            on the same device as ``data``; called as ``fn(x_batch)`` (``fn(x_batch, y_batch)``
            with ``labels``). :func:`~pyro_vae.check_model_guide` checks it before the first step.
        data: a :class:`~pyro_vae.data.Dataset` (train/test splits, dynamic binarization) or an
            ``(N, ...)`` tensor of training data (no test ELBO then).
        elbo: ``trace`` (Trace_ELBO), ``meanfield`` (TraceMeanField_ELBO) or ``iwae``.
        num_particles: samples per datapoint per step (averaged, or ``K`` for ``iwae``).
        labels: pass each batch's class labels (``data.train_labels``) as the second argument,
            for conditional pairs; the test ELBO uses ``data.test_labels``.
        kl_warmup_steps: ``N > 0`` scales every latent site (model and guide) by
            ``min(1, step / N)`` for step ``1, 2, ...`` (KL warm-up); not with ``iwae``.
        free_bits: nats per latent dimension for :class:`~pyro_vae.objectives.FreeBitsELBO`
            (``meanfield`` only); 0 is off.
        optimizer, lr: ``adam`` or ``adagrad`` and its learning rate; or a ``PyroOptim``
            instance (``lr`` is then ignored), which keeps its state across calls, e.g. for a
            learning-rate schedule run as several ``train(..., clear_params=False, seed=None)``.
        batch_size: datapoints per SVI step; each epoch visits every training point once.
        epochs: passes over the training set.
        seed: seeds Pyro, torch, numpy and random (``None``: leave the RNGs as they are).
        out: run folder for ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` and PNGs
            (samples, reconstructions, ELBO curves); TensorBoard events too when
            ``tensorboard`` is installed. ``None`` writes nothing.
        overwrite: allow ``out`` to hold a previous run, which is then replaced.
        config: extra entries for ``config.json`` (e.g. how to rebuild the model).
        eval_batch_size: datapoints per batch when evaluating the test ELBO.
        log_interval: steps between updates of the progress bar's loss (one host sync each).
        progress: show a progress bar.
        clear_params: clear Pyro's param store first, so the nets start from their own
            initial weights rather than from a previous run's stored values.

    Returns:
        :class:`TrainResult` with the per-epoch history.

    Raises:
        ValueError: bad settings (names, sizes) with the valid choices in the message.
        ModelGuideError: (a ``ValueError``) the pair breaks the contract; the message names
            the rule and the site.
        FileExistsError: ``out`` already holds a run and ``overwrite`` is false.
    """
    if isinstance(data, torch.Tensor):
        data = Dataset(name="tensor", train=data, test=None, image_shape=None, likelihood=None)
    num_train = data.train.shape[0]
    if num_train == 0:
        raise ValueError("the training set is empty")
    if not 0 < batch_size <= num_train:
        raise ValueError(f"batch_size must be between 1 and the training set size {num_train}, got {batch_size}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if kl_warmup_steps < 0:
        raise ValueError(f"kl_warmup_steps must be >= 0, got {kl_warmup_steps}")
    if kl_warmup_steps and elbo == "iwae":
        raise ValueError("KL warm-up scales the latent sites only, which has no importance-weighted "
                         "analogue: use elbo 'trace' or 'meanfield' with kl_warmup_steps")
    objective = get_elbo(elbo, num_particles, free_bits)
    if isinstance(optimizer, pyro.optim.PyroOptim):
        optim, optimizer = optimizer, type(optimizer).__name__
    else:
        optim = make_optimizer(optimizer, lr)
    device = data.device
    if clear_params:
        pyro.clear_param_store()
    _check_pair(model, guide, data, elbo, labels)
    out = _prepare_out(out, overwrite)
    if seed is not None:
        pyro.set_rng_seed(seed)
    step = 0
    step_model, step_guide = model, guide
    if kl_warmup_steps:
        warmup = lambda: min(1.0, (step + 1) / kl_warmup_steps)  # noqa: E731  read at each step
        step_model, step_guide = scale_latents(model, warmup), scale_latents(guide, warmup)

    settings = dict(
        elbo=elbo, num_particles=num_particles, labels=labels, kl_warmup_steps=kl_warmup_steps,
        free_bits=free_bits, optimizer=optimizer, lr=lr, batch_size=batch_size,
        epochs=epochs, seed=seed, dataset=data.name, num_train=num_train,
        num_test=None if data.test is None else data.test.shape[0], device=str(device),
    )
    if out is not None:
        (out / "config.json").write_text(json.dumps({**(config or {}), **settings}, indent=2))
    writer = _tensorboard_writer(out)
    result = TrainResult(out=out)
    steps_per_epoch = math.ceil(num_train / batch_size)
    for epoch in range(1, epochs + 1):
        _sync(device)
        start = time.perf_counter()
        x_epoch = data.train_epoch()
        perm = torch.randperm(num_train, device=device)
        total = torch.zeros((), device=device)
        interval_total, interval_points = torch.zeros((), device=device), 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{epochs} [{elbo}]", disable=not progress,
                   leave=False)
        for b in range(steps_per_epoch):
            index = perm[b * batch_size : (b + 1) * batch_size]
            args = (data.train_labels[index],) if labels else ()
            loss = _svi_step(objective, optim, step_model, step_guide, x_epoch[index], *args)
            total = total + loss
            interval_total = interval_total + loss
            interval_points += min(batch_size, num_train - b * batch_size)
            step += 1
            bar.update(1)
            if (b + 1) % log_interval == 0 or b + 1 == steps_per_epoch:
                value = -float(interval_total) / interval_points  # the one host sync per interval
                result.curve.append({"step": step, "samples_seen": step * batch_size, "train_elbo": value})
                bar.set_postfix(elbo=f"{value:.2f}")
                interval_total, interval_points = torch.zeros((), device=device), 0
        bar.close()
        _sync(device)
        epoch_seconds = time.perf_counter() - start
        result.train_seconds += epoch_seconds
        metrics = {
            "epoch": epoch,
            "step": step,
            "train_elbo": -float(total) / num_train,
            "train_seconds": epoch_seconds,
            "total_train_seconds": result.train_seconds,
        }
        if data.test is not None:
            test_args = (data.test_labels,) if labels else ()
            metrics["test_elbo"], metrics["test_elbo_se"] = evaluate_elbo(
                model, guide, data.test, eval_batch_size, *test_args)
        result.history.append(metrics)
        if progress:
            test = f", test ELBO {metrics['test_elbo']:.2f} ± {metrics['test_elbo_se']:.2f}" if "test_elbo" in metrics else ""
            tqdm.write(f"epoch {epoch}: train ELBO {metrics['train_elbo']:.2f}{test} nats/datapoint, "
                       f"{epoch_seconds:.1f} s")
        if out is not None:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            if writer is not None:
                for key in ("train_elbo", "test_elbo"):
                    if key in metrics:
                        writer.add_scalar(key, metrics[key], step)
    if out is not None:
        save_checkpoint(out / "checkpoint.pt", optim, step=step, epoch=epochs)
        _write_pictures(model, guide, data, out, result, elbo, batch_size, labels)
    if writer is not None:
        writer.close()
    return result
