"""The trainer: SVI epochs over a data set, each epoch ending with evaluation, logging and a checkpoint.

:meth:`Trainer.fit` reads like the algorithm::

    for each epoch:
        for each minibatch (drawn on the device, in an order from the run's own generator):
            one SVI step (training.step.svi_step; training.compiled with step="compiled")
            every log_interval steps: one host read of the running loss
            every checkpoint_every steps, or on SIGINT/SIGTERM: a checkpoint
        test (and validation) ELBO, metrics line, metrics.jsonl, checkpoint (and best.pt)

Its pieces each live in their own module: the step (:mod:`.step`), the run state (:mod:`.state`), the run
folder (:mod:`.run_folder`), signals (:mod:`.signals`), logging (:mod:`.logger`). :func:`pyro_vae.train` builds one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch

from .. import distributed
from ..data import Dataset
from ..evaluation import evaluate_elbo
from ..optim import scale_learning_rate
from .checkpoint import save_checkpoint
from .compiled import CompiledSVIStep
from .logger import RunLogger, Stopwatch
from .phases import PhaseRunner
from .pictures import write_pictures
from .run_folder import RunFolder
from .schedule import KLSchedule
from .signals import stop_on_signals
from .speed import compiled_networks, recording_batches
from .state import RunState, TrainResult, get_rng_state
from .step import ELBOLoss, NonFiniteLossError, ddp_loss, explain_nonfinite, svi_step
from .step_mode import BACKEND_OF, steps_per_epoch

__all__ = ["MAX_BACKOFFS", "Trainer", "TrainerOptions"]

MAX_BACKOFFS = 10
"""A run with ``nonfinite_backoff`` stops after this many non-finite steps."""


@dataclass
class TrainerOptions:
    """How a :class:`Trainer` runs (see :func:`pyro_vae.train` for each entry; ``elbo`` is the
    objective's name, shown in the progress bar)."""

    elbo: str = "trace"
    batch_size: int = 100
    epochs: int = 1
    labels: bool = False
    seed: int | None = 0
    nonfinite_backoff: float | None = None
    eval_batch_size: int = 1000
    log_interval: int = 100
    progress: bool = True
    compile: bool | str = False
    data_plate: str = "data"
    step: str = "eager"
    step_note: str = ""


class Trainer:
    """SVI for a checked model/guide pair on a data set.

    Args:
        model, guide: the pair (the steps run it with ``schedule`` applied; evaluation and
            pictures use it as given).
        data: the data set; its tensors stay on their device.
        objective: the ELBO (see :func:`pyro_vae.objectives.get_elbo`).
        optim: a ``PyroOptim``.
        options: :class:`TrainerOptions`.
        folder: the run folder, or ``None`` to write nothing.
        config: the settings written to ``config.json`` and into every checkpoint.
        module: the ``nn.Module`` holding the pair's networks (for DDP), or ``None``.
        networks: the modules to ``torch.compile`` with ``options.compile``
            (:func:`~pyro_vae.training.speed.compile_targets`).
        checkpoint: the entries of the checkpoint to continue from (``folder.resume`` must be
            set), or ``None`` for a fresh run.
        schedule: the KL schedule (:class:`~pyro_vae.training.KLSchedule`).
        phases: more objectives with their own optimizers (:class:`~pyro_vae.training.TrainingPhase`),
            each run after the pair's step on the parameters it owns.

    The trainer checks nothing about the pair or the settings: :func:`pyro_vae.train` does that
    (:func:`~pyro_vae.check_model_guide`, sizes, names) and then builds one.
    """

    def __init__(self, model, guide, data: Dataset, objective, optim, options: TrainerOptions, *,
                 folder: RunFolder | None, config: dict, module=None, networks: list = (),
                 checkpoint: dict | None = None, schedule: KLSchedule = KLSchedule(), phases=()):
        if (checkpoint is not None) != (folder is not None and folder.resume):
            raise ValueError("a Trainer resumes exactly when its run folder says resume=True and a checkpoint "
                             "is given")
        self.model, self.guide, self.data, self.optim, self.networks = model, guide, data, optim, list(networks)
        self.options, self.folder, self.config, self.module = options, folder, config, module
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.device, self.num_train = data.device, data.train.shape[0]
        self.writes = folder is not None and distributed.is_main()
        self.clock = Stopwatch(self.device)
        self.state, self.phases = RunState(), PhaseRunner(phases, model, guide, self.device)
        if checkpoint is not None:
            optim.set_state(checkpoint["optimizer"])
            self.phases.restore(checkpoint.get("phases"))
            self.state.restore(checkpoint, self.rank, options.seed, self.device)
        else:
            self.state.seed(options.seed, self.rank)
        self.steps_per_epoch = steps_per_epoch(self.num_train, options.batch_size, self.world)
        steps, compiled = (lambda: self.state.position.step), options.step != "eager"
        weight = torch.ones((), device=self.device) if compiled and schedule.warmup_steps else None
        step_model, step_guide = schedule.wrap(model, guide, steps, weight)
        self.loss_fn = ELBOLoss(module, objective, step_model, step_guide)
        if self.world > 1:
            self.loss_fn = ddp_loss(self.loss_fn, self.device)
        self.svi_step = svi_step  # step="compiled": one graph for the full minibatch, recorded and checked now
        if compiled:
            inputs = [(weight, lambda: schedule.weight(steps()))] if weight is not None else []
            names = tuple(data.train_named)
            self.svi_step = CompiledSVIStep(self.loss_fn, optim, BACKEND_OF[options.step], inputs).record(
                *recording_batches(data, options.labels, options.batch_size // self.world, names), names)
            if self.svi_step.reason is not None:  # it fell back to eager: config.json says so
                self.config.update(step_used="eager", step_reason=self.svi_step.reason)
        self._prepare_folder()
        self.logger = RunLogger(options.elbo, options.epochs, self.steps_per_epoch, options.progress,
                                folder.path / "tensorboard" if self.writes else None)
        if options.step_note and distributed.is_main():
            self.logger.message(options.step_note)

    def _prepare_folder(self) -> None:
        self.state.result.out = None if self.folder is None else self.folder.path
        if self.folder is None:
            return
        self.folder.prepare()
        if self.writes:
            self.folder.write_config(self.config)
            self.folder.write_metrics(self.state.result.history)

    def fit(self) -> TrainResult:
        """For each epoch, for each minibatch, one SVI step; at the end of each epoch evaluate,
        log and checkpoint. Returns the :class:`TrainResult` (earlier epochs included on resume)."""
        # Pyro's per-step argument validation is off in the loop (about 1 ms a step on the CPU; a host
        # sync per distribution on a GPU): check_model_guide has validated the pair, and a non-finite
        # loss or gradient is still caught at its step.
        with stop_on_signals() as self.stop, pyro.validation_enabled(False), \
                compiled_networks(self.networks, self.options.compile):
            while self.state.position.epoch < self.options.epochs:
                self._train_epoch()
                self._end_epoch()
        if self.writes:
            for line in write_pictures(self.folder.path, self.model, self.guide, self.data, self.state.result,
                                       self.options.elbo, self.options.batch_size, self.options.labels):
                self.logger.message(line)
        self.logger.close()
        return self.state.result

    def _train_epoch(self) -> None:
        """The SVI steps of one epoch (the rest of it, when resumed inside an epoch)."""
        pos, rng = self.state.position, self.state.data_rng
        self.clock.start()
        pos.start_epoch(rng, self.device)
        if pos.epoch_points is None:  # a checkpoint of pyro-vae <= 0.1.0 counted every step's points
            pos.epoch_points = min(pos.batch * self.options.batch_size, self.num_train)
        draws = self.state.epoch_generator(self.device)
        x_epoch = self.data.train_epoch(generator=draws)
        perm = torch.randperm(self.num_train, device=self.device, generator=draws)
        self.logger.start_epoch(pos.epoch + 1, pos.batch)
        for b in range(pos.batch, self.steps_per_epoch):
            self._step(x_epoch, perm, b)
            last = b + 1 == self.steps_per_epoch
            self.logger.step(self._log_curve() if (b + 1) % self.options.log_interval == 0 or last else None)
            interrupted = distributed.any_true(self.stop.signal is not None)
            every = self.folder.checkpoint_every if self.folder is not None else 0
            if not last and (interrupted or (every and pos.step % every == 0)):
                self.state.position.epoch_seconds += self.clock.lap()
                path = self._checkpoint()
                if interrupted:
                    self.logger.close_bar()
                    self.stop.raise_interrupted(path, pos.step, self._where(pos.epoch + 1), self.state.result.out)
        self.logger.close_bar()
        self.state.position.epoch_seconds += self.clock.lap()

    def _step(self, x_epoch: torch.Tensor, perm: torch.Tensor, b: int) -> None:
        """SVI step on minibatch ``b`` of the epoch (this process's share of it under torchrun)."""
        pos, batch_size = self.state.position, self.options.batch_size
        index = perm[b * batch_size : (b + 1) * batch_size]
        points = index.shape[0]
        if self.world > 1:
            index = index.tensor_split(self.world)[self.rank]
        args, named = (self.data.train_labels[index],) if self.options.labels else (), self.data.named("train", index)
        updates = {"updates": self.phases.pair_updates()} if self.phases.phases else {}
        loss, applied = self.svi_step(self.loss_fn, self.optim, x_epoch[index], *args, grad_scale=float(self.world),
                                      **updates, **named)
        if not applied:
            self._on_nonfinite(loss, b, x_epoch[index], *args, **named)
            pos.epoch_skipped += 1
        else:  # the phases (a discriminator's step) follow an applied step of the pair only
            self.phases.step(pos.step, self._where(pos.epoch + 1), x_epoch[index], *args, **named)
            pos.epoch_total = pos.epoch_total + loss
            pos.interval_total = pos.interval_total + loss
            pos.interval_points += points
            pos.epoch_points += points
        pos.step += 1
        pos.batch = b + 1

    def _log_curve(self) -> float | None:
        """Close a log interval: its mean training ELBO over the applied steps (nats per datapoint), or ``None``."""
        pos = self.state.position
        if pos.interval_points == 0:
            return None
        value = -float(distributed.sum_tensor(pos.interval_total)) / pos.interval_points
        self.state.result.curve.append(
            {"step": pos.step, "samples_seen": pos.step * self.options.batch_size, "train_elbo": value})
        pos.interval_total, pos.interval_points = torch.zeros((), device=self.device), 0
        return value

    def _end_epoch(self) -> None:
        """Evaluate, record the epoch's metrics, log them and checkpoint."""
        pos, result = self.state.position, self.state.result
        result.train_seconds += pos.epoch_seconds
        metrics = self._epoch_metrics()
        result.history.append(metrics)
        pos.end_epoch()
        self.logger.end_epoch(metrics)
        if self.folder is None:
            return
        improved = metrics.get("valid_elbo", -math.inf) > self.state.best_valid
        if improved:
            self.state.best_valid = metrics["valid_elbo"]
        path = self._checkpoint()
        if improved:
            self._checkpoint("best.pt")
        if self.writes:
            self.folder.write_metrics(result.history)
            self.logger.scalars(metrics, pos.step)
        if distributed.any_true(self.stop.signal is not None) and pos.epoch < self.options.epochs:
            self.stop.raise_interrupted(path, pos.step, self._where(pos.epoch), result.out)

    def _epoch_metrics(self) -> dict:
        """The epoch's training ELBO (the mean over its applied steps; ``None`` when all were skipped),
        its skipped steps, and its test/validation ELBO."""
        pos, options = self.state.position, self.options
        total = -float(distributed.sum_tensor(pos.epoch_total))
        metrics = {
            "epoch": pos.epoch + 1,
            "step": pos.step,
            "train_elbo": total / pos.epoch_points if pos.epoch_points else None,
            "skipped_steps": pos.epoch_skipped,
            "train_seconds": pos.epoch_seconds,
            "total_train_seconds": self.state.result.train_seconds,
            "compiled_steps": getattr(self.svi_step, "replays", 0),  # so far in this process: 0 when eager
            **self.phases.end_epoch(),
        }
        for split in ("test", "valid"):
            x = getattr(self.data, split)
            if x is not None:
                args = (getattr(self.data, f"{split}_labels"),) if options.labels else ()
                metrics[f"{split}_elbo"], metrics[f"{split}_elbo_se"] = self._evaluate(x, args, self.data.named(split))
        return metrics

    def _evaluate(self, x: torch.Tensor, args: tuple, named: dict) -> tuple[float, float]:
        """The one-sample ELBO of ``x`` per datapoint: mean and standard error (nats)."""
        return evaluate_elbo(self.model, self.guide, x, self.options.eval_batch_size, *args, distributed=True,
                             data_plate=self.options.data_plate, **named)

    def _checkpoint(self, name: str = "checkpoint.pt"):
        """Save the current state (every process takes part; the main process writes)."""
        rng_states = distributed.gather_objects(get_rng_state())
        pos = self.state.position
        entries = self.state.checkpoint_entries(rng_states, self.config, self.options.epochs)
        return None if not self.writes else save_checkpoint(
            self.folder.path / name, self.optim, step=pos.step, epoch=pos.epoch, phases=self.phases.state(), **entries)

    def _on_nonfinite(self, loss: torch.Tensor, b: int, x: torch.Tensor, *args, **named) -> None:
        """A step whose loss or gradient was not finite (and was not applied): stop, or back off.
        The message names the site whose log-density is not finite, when a rerun finds one."""
        pos, skipped, backoff = self.state.position, self.state.result.skipped_steps, self.options.nonfinite_backoff
        where = f"step {pos.step + 1} (epoch {pos.epoch + 1}, minibatch {b + 1})"
        kept = (f"; the last good checkpoint {self.folder.checkpoint} is intact"
                if self.folder is not None and self.folder.checkpoint.exists() else "")
        if backoff is None or len(skipped) >= MAX_BACKOFFS:
            why = "" if backoff is None else f" for the {MAX_BACKOFFS + 1}th time (nonfinite_backoff gives up)"
            cause = explain_nonfinite(self.model, self.guide, x, *args, **named)
            advice = (f"; {cause}" if "relaxed" in cause else
                      f"{'; ' + cause if cause else ''}. Lower the learning rate, or pass nonfinite_backoff "
                      "(--nonfinite-backoff) to skip such steps")
            raise NonFiniteLossError(
                f"non-finite loss or gradient at {where}{why}: loss {float(loss)}; the step was not applied{kept}"
                f"{advice}")
        scale_learning_rate(self.optim, backoff)
        factor = backoff ** (len(skipped) + 1)
        skipped.append({"step": pos.step + 1, "epoch": pos.epoch + 1, "lr_factor": factor})
        self.logger.message(f"non-finite loss or gradient at {where}: step skipped, learning rate now x{factor:g}")

    def _where(self, epoch: int) -> str:
        pos = self.state.position
        return f"step {pos.step} (epoch {epoch}, minibatch {pos.batch}/{self.steps_per_epoch})"
