"""Argument groups shared by the commands and by the experiment scripts, and what they resolve to.

Each ``add_*`` function adds one group of options to an ``argparse`` parser; the matching
helpers (:func:`resolve_device`, :func:`load_data`, :func:`labels_by_name`, :func:`model_config`)
turn the parsed options into a device, a data set and the options of a shipped pair.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..data import DATASETS, Dataset, binarize_for, load_dataset
from ..likelihoods import LIKELIHOODS
from ..models import MODELS, model_options
from ..objectives import ELBO_NAMES
from ..optim import OPTIMIZERS
from ..training.step_mode import AUTO_MIN_STEPS, STEP_MODES

__all__ = ["DEFAULT_HIDDEN", "JIT_REMOVED", "STEP_CHOICES", "add_data_args", "add_experiment_args", "add_model_args",
           "add_optimization_args", "add_step_args", "add_train_args", "labels_by_name", "load_data", "model_config",
           "resolve_device"]

DEFAULT_HIDDEN = {"frey-face": 200}  # 500 for the MNIST-like data sets (Kingma & Welling 2013)
STEP_CHOICES = tuple(mode for mode in STEP_MODES if mode != "compiled:replay")  # replay: for tests, from Python
"""The values of ``--step``."""
JIT_REMOVED = ("--jit was removed: the compiled SVI step replaces it and is the default (--step auto); "
               "--step compiled forces it, --eager turns it off")
"""What the hidden ``--jit`` exits with (the ``torch.jit.trace`` path it turned on is gone)."""


def resolve_device(name: str | None) -> torch.device:
    """``name`` as a device (``None``: CUDA when available, else the CPU); a clear error when CUDA
    is asked for but absent."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available on this machine")
    return device


def add_data_args(p: argparse.ArgumentParser) -> None:
    """``--data-dir``, ``--no-download``, ``--device`` and ``--num-test``."""
    p.add_argument("--data-dir", default=None,
                   help="data root (default: $PYRO_VAE_DATA, else ~/.cache/pyro-vae)")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="never download missing data files (default: download, checksums verified)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--num-test", type=int, default=None, help="evaluate on the first N test points only")


def add_experiment_args(p: argparse.ArgumentParser, out: str, quick: str, device: bool = True, seed: bool = True,
                        step: bool = True) -> None:
    """The options the experiment scripts share: ``--device`` (a name, default ``cuda`` when
    available), ``--data-dir``, ``--seed``, ``--step`` / ``--eager`` (:func:`add_step_args`), ``--out``
    (default ``out``) and ``--quick`` (``quick`` says what it shrinks); ``device``, ``seed`` and
    ``step`` leave theirs out."""
    if device:
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=None, help="data root (default: $PYRO_VAE_DATA, else ~/.cache/pyro-vae)")
    if seed:
        p.add_argument("--seed", type=int, default=0)
    if step:
        add_step_args(p)
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--quick", action="store_true", help=quick)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The pair and its options: ``--dataset``, ``--model``, ``--likelihood``, ``--beta``,
    ``--kl-warmup``, ``--free-bits``, ``--spectral-regularization``, ``--num-flows``, ``--stochastic-layers``, ``--latent-groups``, sizes."""
    p.add_argument("--dataset", default="mnist", choices=DATASETS)
    p.add_argument("--model", default="mlp", choices=list(MODELS), help="model/guide pair (see: pyro-vae models)")
    p.add_argument("--likelihood", default=None, choices=list(LIKELIHOODS),
                   help="observation model (default: the data set's; a grey-level likelihood on MNIST or "
                        "Fashion-MNIST turns binarization off)")
    p.add_argument("--beta", type=float, default=1.0, help="KL weight (beta-VAE), latent sites scaled in model and guide")
    p.add_argument("--kl-warmup", type=int, default=0, metavar="STEPS",
                   help="raise the KL weight linearly from 1/STEPS to 1 over STEPS steps")
    p.add_argument("--free-bits", type=float, default=0.0, metavar="NATS",
                   help="free bits per latent dimension (needs --elbo meanfield)")
    p.add_argument("--spectral-regularization", type=float, default=0.0, metavar="LAMBDA",
                   help="add LAMBDA times the sum of every layer's largest singular value, per datapoint, to the "
                        "gradient (NVAE's regularizer; objectives.SpectralRegularizedELBO); the ELBO reported stays "
                        "the ELBO")
    p.add_argument("--num-flows", type=int, default=None, help="iaf: number of autoregressive transforms")
    p.add_argument("--stochastic-layers", type=int, default=None,
                   help="hierarchical, ladder: number of latent layers")
    p.add_argument("--latent-groups", type=int, default=None, dest="groups", help="nvae: number of latent groups")
    p.add_argument("--latent-dim", type=int, default=None, help="default: the model's (20; 50 for hierarchical)")
    p.add_argument("--hidden-dim", type=int, default=None,
                   help="default: the model's (500; 200 for hierarchical), 200 on Frey Face")


def add_optimization_args(p: argparse.ArgumentParser, epochs: int) -> None:
    """``--num-particles``, ``--optimizer``, ``--lr``, ``--batch-size``, ``--epochs`` (default
    ``epochs``), ``--seed``, ``--num-train``, ``--valid-size``, ``--no-progress``, ``--compile``,
    ``--step`` / ``--eager``."""
    p.add_argument("--num-particles", type=int, default=1,
                   help="samples per datapoint per step (K for --elbo iwae and dreg; per group for miwae and piwae, "
                        "which draw 2 groups)")
    p.add_argument("--optimizer", default="adam", choices=tuple(OPTIMIZERS))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--epochs", type=int, default=None, help=f"passes over the training set (default {epochs}; "
                   "with --resume: the total to reach)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=None, help="train on the first N training points only")
    p.add_argument("--valid-size", type=int, default=0, metavar="N",
                   help="hold out the last N training points as a validation set: valid_elbo each epoch and "
                        "best.pt, the checkpoint with the best one (binarized-mnist has its own)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the networks (optional MODE: reduce-overhead uses CUDA graphs, max-autotune)")
    add_step_args(p)


def add_step_args(p: argparse.ArgumentParser) -> None:
    """``--step auto|eager|compiled`` (:data:`STEP_CHOICES`, default ``auto``), ``--eager`` (the same
    as ``--step eager``) and a hidden ``--jit`` that exits with :data:`JIT_REMOVED`."""
    p.add_argument("--step", default="auto", choices=STEP_CHOICES,
                   help=f"auto (default): the compiled step for CPU runs of {AUTO_MIN_STEPS}+ steps whose settings "
                        "allow it (a resumed run keeps its mode), else eager; compiled: record the whole SVI step "
                        "once and compile it with inductor (faster steps after a 10-60 s compile; adam or adagrad; "
                        "see pyro_vae.training.step_mode)")
    p.add_argument("--eager", dest="step", action="store_const", const="eager",
                   help="the eager SVI step whatever the run's length (same as --step eager)")
    p.add_argument("--jit", action=_RemovedFlag, message=JIT_REMOVED)


class _RemovedFlag(argparse.Action):
    """A removed flag, hidden from ``--help``: giving it exits with ``message`` (``parser.error``);
    it leaves nothing in the parsed namespace."""

    def __init__(self, option_strings, dest, message: str):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.message = message

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(self.message)


def add_train_args(p: argparse.ArgumentParser, epochs: int) -> None:
    """Everything a training command takes: the pair, the optimization, the data."""
    add_model_args(p)
    add_optimization_args(p, epochs)
    add_data_args(p)
    p.set_defaults(default_epochs=epochs)


def add_elbo_arg(p: argparse.ArgumentParser) -> None:
    """``--elbo NAME`` (:data:`~pyro_vae.objectives.ELBO_NAMES`; default: the pair's own)."""
    p.add_argument("--elbo", default=None, choices=ELBO_NAMES,
                   help="trace: Trace_ELBO; meanfield: TraceMeanField_ELBO; iwae: importance weighted; enum: "
                        "enumerated discrete latents; stl, iwae-stl, dreg, miwae, piwae, ciwae: gradient estimators "
                        "(default: the pair's own objective, trace for most; m2 enum; vq its VQ-VAE loss)")


def load_data(args, device: torch.device, name: str, seed: int = 0):
    """The data set ``name`` as the options ask (likelihood, validation split, subsets)."""
    likelihood = getattr(args, "likelihood", None)
    dataset = load_dataset(name, args.data_dir, device=device, download=args.download, seed=seed,
                           binarize=binarize_for(name, likelihood), valid_size=getattr(args, "valid_size", 0))
    if likelihood is not None:
        dataset.likelihood = likelihood
    return dataset.subset(getattr(args, "num_train", None), args.num_test)


def labels_by_name(dataset: Dataset, name: str | None) -> Dataset:
    """``dataset`` with its labels also passed by keyword ``name`` (:meth:`~pyro_vae.data.Dataset.with_labels_as`),
    for ``pyro-vae train --labels-as NAME``; ``None``: ``dataset`` as it is."""
    return dataset if name is None else dataset.with_labels_as(name)


def model_config(args, dataset) -> dict:
    """Options for ``build_model``: the data set's facts where the family takes them, and every
    option the user set (an option the family does not take is an error there)."""
    accepted = model_options(args.model)
    config = {"likelihood": dataset.likelihood, "image_shape": dataset.image_shape,
              "hidden_dim": args.hidden_dim or DEFAULT_HIDDEN.get(dataset.name)}
    config = {k: v for k, v in config.items() if k in accepted and v is not None}
    explicit = {"latent_dim": args.latent_dim, "num_flows": args.num_flows,
                "stochastic_layers": args.stochastic_layers, "groups": getattr(args, "groups", None), "beta": args.beta if args.beta != 1.0 else None}
    config.update({k: v for k, v in explicit.items() if v is not None})
    if "image_shape" in config:
        config["image_shape"] = list(config["image_shape"])
    return config
