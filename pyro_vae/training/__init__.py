"""Training: SVI for any conforming model/guide pair, in parts that each hold one idea.

=================  ===========================================================================
module             what it holds
=================  ===========================================================================
``step``           the SVI step: loss, gradients, finiteness check, one optimizer update
``step_mode``      which step a run takes: ``step="auto"`` (default), ``"eager"``, ``"compiled"``
``compiled``       the same step recorded once and compiled (``train(..., step="compiled")``; :mod:`pyro_vae.recorded`)
``state``          the run state: position in the run, RNG states, what a checkpoint holds
``checkpoint``     the checkpoint file: written atomically, loaded without running code
``run_folder``     the run folder: config.json, metrics.jsonl, checkpoints; load_run
``pictures``       a finished run's pictures, drawn from whatever the model observes
``signals``        SIGINT/SIGTERM as a flag; :class:`TrainingInterrupted`
``logger``         progress bars, epoch lines, TensorBoard
``schedule``       KL warm-up and free bits (:class:`KLSchedule`)
``speed``          the compiled step's recording minibatches; compiled networks (``compile``)
``phases``         more objectives with their own optimizers in the same run (:class:`TrainingPhase`)
``pair_phases``    the phases of the shipped pairs that need them (VAE-GAN, WAE-GAN): :func:`pair_phases`
``trainer``        :class:`Trainer`: epochs of steps, then evaluation, logging, checkpoint
``api``            :func:`train`, the one-call entry point
=================  ===========================================================================

Inside the package: step, state, checkpoint -> run folder -> trainer -> api (each imports only
those to its left). The data set's tensors
stay on their device: each epoch draws a fresh binarization on the device when the data set asks
for it, shuffles indices there and slices minibatches there; losses are accumulated as device
tensors and read once per log interval and once per epoch.

Reliability: checkpoints every ``checkpoint_every`` steps and at the end of every epoch hold the
parameters, the optimizer state, every RNG state, the position inside the epoch, the settings and
the metrics so far, so ``RunFolder(..., resume=True)`` continues a run exactly (bitwise on the
CPU); SIGINT and SIGTERM save a checkpoint and stop with :class:`TrainingInterrupted`; a
non-finite loss or gradient stops the run at that step (or backs off the learning rate) without
applying it.

Distributed training (``torchrun``): when ``torch.distributed`` is initialized with several
processes, the loss is wrapped in ``DistributedDataParallel``; see :mod:`pyro_vae.distributed`.
"""

from ..optim import OPTIMIZERS, make_optimizer
from .api import train
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .pair_phases import pair_phases
from .phases import TrainingPhase
from .run_folder import RUN_FILES, RunFolder, load_run
from .schedule import KLSchedule
from .signals import TrainingInterrupted
from .state import TrainResult
from .step import ELBOLoss, NonFiniteLossError, svi_step
from .trainer import MAX_BACKOFFS, Trainer, TrainerOptions

__all__ = [
    "MAX_BACKOFFS",
    "OPTIMIZERS",
    "RUN_FILES",
    "CheckpointError",
    "ELBOLoss",
    "KLSchedule",
    "NonFiniteLossError",
    "RunFolder",
    "TrainResult",
    "Trainer",
    "TrainerOptions",
    "TrainingInterrupted",
    "TrainingPhase",
    "load_checkpoint",
    "load_run",
    "make_optimizer",
    "pair_phases",
    "read_checkpoint",
    "save_checkpoint",
    "svi_step",
    "train",
]
