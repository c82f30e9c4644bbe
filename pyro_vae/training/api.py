"""The one-call entry point: :func:`train` checks a pair and its settings, then runs a :class:`Trainer`.

Reported numbers are per datapoint, in nats, as ELBOs (higher is better):

* ``train_elbo``: the mean over the epoch's minibatches of the training objective's estimate,
  taken while the parameters change (the usual running training bound);
* ``test_elbo`` (± ``test_elbo_se``) and ``valid_elbo``: a one-sample ELBO per test (validation)
  point after the epoch, with the same estimator whatever the training objective
  (:func:`pyro_vae.evaluate_elbo`);
* ``train_seconds``: wall-clock of the epoch's SVI steps only (evaluation excluded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pyro
import pyro.optim
import torch

from .. import distributed
from ..check import check_model_guide
from ..check.named import check_named_arguments
from ..check.objective_rules import rules_of
from ..data import Dataset
from ..importance import guess_max_plate_nesting
from ..models import MODELS
from ..models.external import data_facts, shipped_record
from ..objectives import elbo_label, get_elbo
from ..optim import make_optimizer
from . import step_mode
from .phases import TrainingPhase, check_phases
from .run_folder import RunFolder
from .schedule import KLSchedule
from .speed import compile_targets
from .state import TrainResult
from .step import owner_module
from .step_mode import STEP_MODES, choose_step, remaining_steps
from .trainer import Trainer, TrainerOptions

__all__ = ["train"]


def train(
    model,
    guide,
    data: Dataset | torch.Tensor,
    *,
    elbo: str | pyro.infer.ELBO = "trace",
    num_particles: int = 1,
    labels: bool = False,
    schedule: KLSchedule | None = None,
    optimizer: str | pyro.optim.PyroOptim = "adam",
    lr: float = 1e-3,
    batch_size: int = 100,
    epochs: int = 1,
    seed: int | None = 0,
    out: str | Path | RunFolder | None = None,
    nonfinite_backoff: float | None = None,
    config: dict | None = None,
    eval_batch_size: int = 1000,
    log_interval: int = 100,
    progress: bool = True,
    clear_params: bool = True,
    module: torch.nn.Module | None = None,
    compile: bool | str = False,
    data_plate: str = "data",
    step: str = "auto",
    phases: Sequence[TrainingPhase] = (),
) -> TrainResult:
    """Train a model/guide pair with SVI.

    Args:
        model, guide: a conforming pair (see :mod:`pyro_vae.models.base`) whose parameters live
            on the same device as ``data``; called as ``fn(x_batch)`` (``fn(x_batch, y_batch)``
            with ``labels``). :func:`~pyro_vae.check_model_guide` checks it before the first step.
        data: a :class:`~pyro_vae.data.Dataset` (train/test/validation splits, dynamic
            binarization) or an ``(N, ...)`` tensor of training data (no test ELBO then). The
            data set's named per-datapoint tensors (``train_named``, ``test_named``, ...: labels
            ``y``, masks, conditioning inputs) are passed to model and guide by keyword, sliced
            with each minibatch (``model(x, y=y_batch)``); both must take each name (else a
            ``ValueError`` before any step). Not with ``compile``.
        elbo: ``trace`` (Trace_ELBO), ``meanfield`` (TraceMeanField_ELBO), ``iwae``, ``enum``
            (TraceEnum_ELBO, for enumerated discrete latents), or a gradient estimator by name
            (``stl``, ``iwae-stl``, ``dreg``, ``miwae``, ``piwae``, ``ciwae``:
            :mod:`~pyro_vae.objectives.gradients`); or a ``pyro.infer.ELBO`` instance (see
            :func:`~pyro_vae.objectives.get_elbo`), recorded in ``config.json`` by its class path
            and settings.
        num_particles: samples per datapoint per step (averaged, or ``K`` for ``iwae`` and
            ``dreg``; per group for ``miwae`` and ``piwae``, which draw two groups).
        labels: pass each batch's class labels (``data.train_labels``) as the second argument,
            for conditional pairs; the test ELBO uses ``data.test_labels``.
        schedule: KL warm-up and free bits (:class:`~pyro_vae.training.KLSchedule`); ``None``: neither.
        optimizer, lr: ``adam`` or ``adagrad`` and its learning rate (one fused torch optimizer
            over all parameters: :class:`~pyro_vae.optim.FusedOptim`); or a ``PyroOptim``
            instance (``lr`` is then ignored), which keeps its state across calls, e.g. for a
            learning-rate schedule run as several ``train(..., clear_params=False, seed=None)``.
        batch_size: datapoints per SVI step; each epoch visits every training point once. Under
            ``torchrun`` this is the global batch, split evenly over the processes.
        epochs: passes over the training set (in total, counting a resumed run's earlier ones).
        seed: seeds Pyro, torch, numpy and random, and the data order (``None``: draw the
            data-order seed from torch's RNG and leave the RNGs as they are).
        out: the run folder: a path, or a :class:`~pyro_vae.training.RunFolder` for
            ``overwrite``, ``resume`` (continue from its ``checkpoint.pt``; bitwise equal to an
            uninterrupted run on the CPU) and ``checkpoint_every``. It receives ``config.json``,
            ``metrics.jsonl``, ``checkpoint.pt``, ``best.pt`` (with ``data.valid``), PNGs when the
            run completes, and TensorBoard events when ``tensorboard`` is installed. ``None``
            writes nothing.
        nonfinite_backoff: ``None`` stops the run with :class:`NonFiniteLossError` at a step
            whose loss or gradient is not finite; a factor in (0, 1) instead skips that step,
            multiplies the learning rate by the factor and goes on (at most
            :data:`~pyro_vae.training.trainer.MAX_BACKOFFS` times). The bad step is never applied.
        config: extra entries for ``config.json``. How to rebuild the pair is recorded there for
            ``pyro-vae evaluate|latent`` when it is known: a shipped pair (built by its class or
            :func:`~pyro_vae.build_model`) is recorded by itself; for another pair give
            ``config={"pair": "package.module:make_pair"}``, a factory as for ``pyro-vae train
            --pair`` (see :mod:`pyro_vae.models.external`).
        eval_batch_size: datapoints per batch when evaluating the test/validation ELBO.
        log_interval: steps between updates of the progress bar's loss (one host sync each).
        progress: show a progress bar.
        clear_params: clear Pyro's param store first, so the nets start from their own
            initial weights rather than from a previous run's stored values.
        module: the ``nn.Module`` holding the pair's networks, for distributed training and
            ``compile``, when model and guide are not methods of one module.
        compile: ``torch.compile`` each network the pair calls (the outermost submodules of its
            module that a run of guide and model calls) in place for the run, Pyro's bookkeeping
            staying eager; a pair with parameters no called network holds is refused; ``True`` or a ``torch.compile`` mode
            (``"reduce-overhead"`` uses CUDA graphs, ``"max-autotune"``). Needs a C++ compiler on
            the CPU (Triton on CUDA). Same parameter names, so checkpoints are unchanged.
        data_plate: the name of the pair's plate over datapoints (``pyro.plate(data_plate, batch)``),
            as for :func:`~pyro_vae.check_model_guide` and :func:`~pyro_vae.estimate_log_likelihood`:
            the checker, the ``iwae`` objective and the test/validation ELBO use it.
        step: ``"auto"`` (default): ``"compiled"`` for a run with at least
            :data:`~pyro_vae.training.step_mode.AUTO_MIN_STEPS` steps left whose settings allow it,
            else ``"eager"`` (:mod:`pyro_vae.training.step_mode`; ``config.json`` records the choice
            as ``step_used`` and why as ``step_reason``). ``"eager"``:
            :func:`~pyro_vae.training.svi_step`. ``"compiled"``: the whole step (loss, gradients,
            finiteness check) recorded once as one graph, compiled by inductor and followed by
            torch's fused Adam or Adagrad (:mod:`pyro_vae.training.compiled`): several times faster
            at small nets, after 10-60 s of compiling; losses equal to eager up to float rounding,
            resumes bitwise. Any objective, KL warm-up, free bits and named arguments; checked
            against the eager step first (sites and shapes on two minibatches, loss and gradients);
            a pair that cannot be recorded runs eager with one warning saying why.
            ``optimizer="adam"`` or ``"adagrad"``, no ``compile`` (else ``ValueError``); under
            ``torchrun`` too. ``"compiled:replay"`` replays the recorded graph without a compiler
            (bitwise equal to eager, not faster; for tests).
        phases: more objectives in the same run, each with its own optimizer, on the parameters it
            owns (:class:`~pyro_vae.training.TrainingPhase`; a GAN's: :func:`~pyro_vae.training.pair_phases`);
            the pair's objective updates the rest. Checked first (:func:`~pyro_vae.training.phases.check_phases`).

    Returns:
        :class:`~pyro_vae.training.TrainResult` with the per-epoch history (earlier epochs
        included on resume).

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
    schedule, folder = schedule or KLSchedule(), RunFolder.of(out)
    label = elbo_label(elbo)  # a name, or an ELBO object's class path and settings (config.json, progress)
    options = TrainerOptions(elbo=label, batch_size=batch_size, epochs=epochs, labels=labels, seed=seed,
                             nonfinite_backoff=nonfinite_backoff, eval_batch_size=eval_batch_size,
                             log_interval=log_interval, progress=progress, compile=compile,
                             data_plate=data_plate, step=step)
    _check_settings(data, options, elbo, schedule, folder, optimizer)
    # bad names and settings fail before anything runs
    get_elbo(elbo, num_particles, schedule.free_bits, data_plate=data_plate)
    optim, optimizer = ((optimizer, type(optimizer).__name__) if isinstance(optimizer, pyro.optim.PyroOptim)
                        else (make_optimizer(optimizer, lr), optimizer))
    if clear_params:
        pyro.clear_param_store()
    max_plate_nesting, example = _check_pair(model, guide, data, elbo, labels, schedule.free_bits, data_plate)
    objective = get_elbo(elbo, num_particles, schedule.free_bits, max_plate_nesting, data_plate=data_plate)
    module = owner_module(model, guide, module)
    check_phases(phases, model, guide, objective, example, data.named("train", slice(2)), distributed.world_size(),
                 required=tuple(getattr(module, "phase_params", ())))
    networks = compile_targets(module, model, guide, *example) if compile else []
    num_particles = num_particles if isinstance(elbo, str) else elbo.num_particles
    settings = _settings(data, options, label, num_particles, schedule, rules_of(elbo, schedule.free_bits).free_bits,
                         optimizer, lr, folder)
    if phases:
        settings["phases"] = [phase.record() for phase in phases]
    saved = _saved_run(folder, model, guide, data, labels, settings, epochs)
    options = _resolve_step(options, settings, saved, data.train.shape[0], optim, compile, len(phases))
    trainer = Trainer(model, guide, data, objective, optim, options, folder=folder,
                      config={**pair_record(module, data, config), **(config or {}), **settings}, module=module,
                      networks=networks, checkpoint=saved, schedule=schedule, phases=phases)
    return trainer.fit()


def _saved_run(folder: RunFolder | None, model, guide, data: Dataset, labels: bool, settings: dict,
               epochs: int) -> dict | None:
    """The checkpoint entries a resumed run continues from (``None`` for a fresh run)."""
    if folder is None or not folder.resume:
        return None
    saved = folder.load_for_resume(model, guide, data, labels, settings)
    if saved["position"]["epoch"] >= epochs:
        raise ValueError(f"the run in {folder.path} already has {saved['position']['epoch']} epochs; ask for "
                         "more (epochs=N, --epochs N) to continue it")
    return saved


def _check_settings(data: Dataset, options: TrainerOptions, elbo, schedule: KLSchedule,
                    folder: RunFolder | None, optimizer) -> None:
    """Refuse bad sizes and combinations before anything runs, naming the setting."""
    if options.step not in STEP_MODES:
        raise ValueError(f"step must be one of {', '.join(STEP_MODES)}, got {options.step!r}")
    num_train, batch_size, world = data.train.shape[0], options.batch_size, distributed.world_size()
    if num_train == 0:
        raise ValueError("the training set is empty")
    if not 0 < batch_size <= num_train:
        raise ValueError(f"batch_size must be between 1 and the training set size {num_train}, got {batch_size}")
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the number of processes {world}")
    if options.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {options.epochs}")
    schedule.check(rules_of(elbo).name)
    backoff = options.nonfinite_backoff
    if backoff is not None and not 0 < backoff < 1:
        raise ValueError(f"nonfinite_backoff must be a factor in (0, 1), got {backoff}")
    if data.train_named and options.compile:
        raise ValueError(f"named per-datapoint arguments ({', '.join(data.train_named)}) do not go with compile "
                         "yet: train without them")
    if folder is not None:
        folder.check_resumable()


def _resolve_step(options: TrainerOptions, settings: dict, saved: dict | None, num_train: int,
                  optimizer: pyro.optim.PyroOptim, compile, phases: int = 0) -> TrainerOptions:
    """The options with ``step`` resolved to the mode the run takes (``settings`` gets ``step_used``
    and ``step_reason``), and a ``step_note`` for the one line the run prints: a long ``auto`` run
    that stays eager, or a resume that changes the step mode (equal up to float rounding, not bitwise)."""
    position = saved["position"] if saved is not None else {"epoch": 0, "batch": 0}
    left = remaining_steps(num_train, options.batch_size, options.epochs, position["epoch"],
                           distributed.world_size()) - position.get("batch", 0)
    before = None if saved is None else saved["config"].get("step_used", saved["config"].get("step", "eager"))
    mode, reason = choose_step(options.step, remaining_steps=left, optimizer=optimizer, compile=compile, phases=phases,
                               device_type=settings["device"].split(":")[0], resumed_from=before)
    settings.update(step_used=mode, step_reason=reason)
    note = reason if options.step == "auto" and mode == "eager" and left >= step_mode.AUTO_MIN_STEPS else ""
    if before is not None and before != mode:
        note = (f"{note}; " if note else "") + (
            f"resumed with step {mode!r}, the run so far used {before!r}: the continuation equals an uninterrupted "
            "run up to float rounding, not bitwise")
    return replace(options, step=mode, step_note=note)


def _check_pair(model, guide, data: Dataset, elbo: str, labels: bool, free_bits: float,
                data_plate: str) -> tuple[int, tuple]:
    """Run :func:`check_model_guide` on training data without touching the RNG streams; returns
    the pair's max plate nesting (so that the objective does not draw from the RNGs to guess it)
    and a two-point example input ``(x, *args)``."""
    if labels and data.train_labels is None:
        raise ValueError(f"labels=True but the data set {data.name!r} has no labels")
    check_named_arguments(model, guide, data.train_named)
    with torch.random.fork_rng(devices=[data.device] if data.device.type == "cuda" else []):
        x = torch.bernoulli(data.train[:8]) if data.binarize else data.train
        args, named = (data.train_labels[: len(x)],) if labels else (), data.named("train", slice(len(x)))
        check_model_guide(model, guide, x, *args, elbo=elbo, free_bits=free_bits, data_plate=data_plate, **named)
        example = (x[:2], *(a[:2] for a in args))
        return guess_max_plate_nesting(model, guide, *example, **data.named("train", slice(2))), example


def _settings(data: Dataset, options: TrainerOptions, elbo: str, num_particles: int, schedule: KLSchedule,
              free_bits: float, optimizer: str, lr: float, folder: RunFolder | None) -> dict:
    """The resolved settings written to ``config.json`` (a resumed run must match most of them);
    ``free_bits``: the objective's, whether the schedule or an ELBO object carries them."""
    return dict(
        elbo=elbo, num_particles=num_particles, labels=options.labels, kl_warmup_steps=schedule.warmup_steps,
        free_bits=free_bits, optimizer=optimizer, lr=lr, batch_size=options.batch_size,
        epochs=options.epochs, seed=options.seed, dataset=data.name, num_train=data.train.shape[0],
        num_test=None if data.test is None else data.test.shape[0],
        num_valid=None if data.valid is None else data.valid.shape[0],
        checkpoint_every=folder.checkpoint_every if folder is not None else 0, device=str(data.device),
        world_size=distributed.world_size(), compile=options.compile, step=options.step,
        named_arguments=sorted(data.train_named),
        data_plate=options.data_plate, binarize=data.binarize, likelihood=data.likelihood,
        image_shape=None if data.image_shape is None else list(data.image_shape),
    )


def pair_record(module, data: Dataset, config: dict | None) -> dict:
    """What ``config.json`` needs for :func:`~pyro_vae.training.load_run` to rebuild the pair:
    a shipped pair's family and options, or nothing (``config`` may name a ``pair`` factory)."""
    if config and "pair" in config:
        return {"data_dim": data.data_dim, "pair_facts": data_facts(data)}
    if config and "model_config" in config:
        return {"data_dim": data.data_dim}
    return shipped_record(module, MODELS) or {"data_dim": data.data_dim}
