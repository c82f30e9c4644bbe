"""``pyro-vae train``: one SVI run into a run folder; ``--resume RUN_DIR`` continues one.

Class labels reach a pair in one of two ways: positionally (``model(x, y)``) when its module sets
``needs_labels`` (the shipped ``conditional`` model), or by keyword with ``--labels-as NAME``
(``model(x, NAME=labels)``, for a pair that declares ``def model(x, y=None)``), sliced with each
minibatch; the run folder records which, so that ``evaluate`` and ``--resume`` pass them the same
way. Under ``torchrun`` it trains with DistributedDataParallel (see :mod:`pyro_vae.distributed`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyro
import torch

from ..distributed import is_main
from ..models import build_model
from ..models.external import build_from_factory, data_facts
from ..objectives import SpectralRegularizedELBO, get_elbo
from ..training import KLSchedule, RunFolder, train
from ..training.pair_phases import pair_phases
from .args import add_elbo_arg, add_train_args, labels_by_name, load_data, model_config, resolve_device
from .evaluate import estimate, save_estimate, test_labels

__all__ = ["CLI_RESUME_FLAGS", "REMOVED_CLI_SETTINGS", "add_parser", "build_pair", "pair_objective", "pair_phases",
           "run", "train_from_args"]

CLI_RESUME_FLAGS = ("epochs", "device", "data_dir", "download", "no_progress", "compile", "step")
"""Flags that may go with ``train --resume``; every other setting comes from the run's config.json."""
REMOVED_CLI_SETTINGS = ("jit",)
"""Settings of removed flags that the config.json of an older run may hold (``jit``: the
``torch.jit.trace`` loss, a speed setting with the same numbers): ``--resume`` ignores them."""


def add_parser(sub) -> argparse.ArgumentParser:
    """Add this command's parser to the ``pyro-vae`` subcommands ``sub``."""
    p = sub.add_parser("train", help="train a VAE with SVI into a run folder")
    add_train_args(p, epochs=10)
    add_elbo_arg(p)
    p.add_argument("--pair", default=None, metavar="MODULE:FACTORY",
                   help="train your own pair instead of --model: a function that returns it (an nn.Module with "
                        "model and guide, or (model, guide, module)) given data_dim, image_shape, likelihood, "
                        "num_classes (those it takes) and --latent-dim/--hidden-dim when given; recorded in the "
                        "run folder for evaluate, latent and --resume")
    p.add_argument("--labels-as", default=None, metavar="NAME",
                   help="pass the data set's class labels to model and guide by keyword NAME, sliced with each "
                        "minibatch (model(x, NAME=labels), for a pair that declares def model(x, NAME=None)); "
                        "recorded in the run folder, so evaluate and --resume pass them the same way. Default: "
                        "labels go positionally, model(x, y), to a pair whose module sets needs_labels only")
    p.add_argument("--out", default=None, help="run folder (default: runs/DATASET-MODEL-ELBO-seedSEED)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--evaluate-samples", type=int, default=0, metavar="K",
                   help="after training, estimate log p(x) on the test set with K importance samples")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its checkpoint (to --epochs in total when given); "
                        "its settings come from RUN_DIR/config.json")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS steps (default: at the end of each epoch only)")
    p.add_argument("--nonfinite-backoff", type=float, default=None, metavar="FACTOR",
                   help="on a non-finite loss or gradient, skip the step and multiply the learning rate by "
                        "FACTOR (default: stop the run there)")
    p.set_defaults(handler=run)
    return p


def train_from_args(args, dataset, device, elbo: str, out):
    """Build the pair the options name (its initial weights depend on ``--seed`` alone) and
    train it into ``out``; returns ``(vae, TrainResult)``."""
    cli = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
           if k not in ("command", "resume", "default_epochs", "overwrite", "handler")}
    cli["elbo"] = elbo  # the demo trains both objectives from one set of options
    vae, pair = build_pair(args, dataset)
    vae = vae.to(device)
    labels_as = getattr(args, "labels_as", None)
    if labels_as is not None and vae.needs_labels:
        raise ValueError(f"--labels-as {labels_as} passes the labels by keyword, but this pair's module sets "
                         "needs_labels, which passes them positionally as well: drop --labels-as (or needs_labels)")
    run_config = {**pair, "data_dim": dataset.data_dim, "image_shape": dataset.image_shape, "labels_as": labels_as,
                  "cli": cli}
    folder = RunFolder(out, overwrite=args.overwrite, resume=getattr(args, "resume", None) is not None,
                       checkpoint_every=getattr(args, "checkpoint_every", 0))
    objective, free_bits = pair_objective(vae, elbo), args.free_bits
    if getattr(args, "spectral_regularization", 0.0):  # the wrapped objective carries the free bits
        module = vae if isinstance(vae, torch.nn.Module) else getattr(vae, "module", None)
        if module is None:
            raise ValueError("--spectral-regularization needs the nn.Module holding the pair's networks: make the "
                             "--pair factory return one (or (model, guide, module))")
        inner = get_elbo(objective, args.num_particles, free_bits, data_plate="data") if isinstance(objective, str) \
            else objective
        objective, free_bits = SpectralRegularizedELBO(inner, module, args.spectral_regularization), 0.0
    objective, free_bits, phases = pair_phases(vae, objective, args.num_particles, free_bits)
    result = train(
        vae.model, vae.guide, dataset, elbo=objective, num_particles=args.num_particles, labels=vae.needs_labels,
        schedule=KLSchedule(warmup_steps=args.kl_warmup, free_bits=free_bits),
        optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
        out=folder, config=run_config, progress=not args.no_progress, module=getattr(vae, "module", None),
        nonfinite_backoff=getattr(args, "nonfinite_backoff", None), compile=args.compile,
        step=getattr(args, "step", "auto"), phases=phases,
    )
    return vae, result


def pair_objective(vae, elbo: str | None) -> str:
    """The objective to train ``vae`` with: ``elbo`` by name, or (``None``) the pair's own
    ``default_elbo`` (``"trace"`` where it has none; ``m2``: ``"enum"``, ``vq``: ``"vq"``). A name
    that cannot train the pair is refused by the checker before any step."""
    return elbo if elbo is not None else getattr(vae, "default_elbo", "trace")


def build_pair(args, dataset) -> tuple:
    """The pair the options name, seeded by ``--seed`` alone: a shipped ``--model`` or a ``--pair``
    factory; returns ``(vae, record)`` where ``record`` says in config.json how to rebuild it."""
    if getattr(args, "pair", None) is None:
        config = model_config(args, dataset)
        pyro.set_rng_seed(args.seed)
        return build_model(args.model, dataset.data_dim, **config), {"model": args.model, "model_config": config}
    shipped = {"model": "mlp", "num_flows": None, "stochastic_layers": None, "beta": 1.0}
    clash = [k for k, default in shipped.items() if getattr(args, k, default) != default]
    if clash:
        raise ValueError(f"--pair builds your own pair: drop {', '.join('--' + k.replace('_', '-') for k in clash)} "
                         "(options of the shipped pairs; --latent-dim and --hidden-dim go to the factory)")
    options = {k: getattr(args, k) for k in ("latent_dim", "hidden_dim") if getattr(args, k, None) is not None}
    facts = data_facts(dataset)
    pyro.set_rng_seed(args.seed)
    return build_from_factory(args.pair, facts, options), {"pair": args.pair, "pair_facts": facts,
                                                           "pair_options": options}


def resume_args(args, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The settings of the run in ``args.resume`` (its config.json), with the flags that may change."""
    run_dir = args.resume
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"cannot resume: {config_path} is missing (is {run_dir} a run folder?)")
    config = json.loads(config_path.read_text())
    if "cli" not in config:
        raise ValueError(f"cannot resume {run_dir}: its config.json was not written by `pyro-vae train`; "
                         "resume it from Python with train(..., out=RunFolder(RUN_DIR, resume=True))")
    defaults = vars(parser.parse_args(["train"]))
    given = [k for k, v in vars(args).items()
             if k in defaults and k not in CLI_RESUME_FLAGS + ("resume", "command", "handler") and v != defaults[k]]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"--resume takes the run's settings from {config_path}; drop {flags} "
                         f"(only {', '.join('--' + k.replace('_', '-') for k in CLI_RESUME_FLAGS)} go with --resume)")
    saved = {k: v for k, v in config["cli"].items() if k not in REMOVED_CLI_SETTINGS}
    resumed = argparse.Namespace(**{**defaults, **saved})
    resumed.epochs = args.epochs if args.epochs is not None else config["epochs"]
    for key in ("device", "data_dir"):
        if getattr(args, key) is not None:
            setattr(resumed, key, getattr(args, key))
    resumed.download, resumed.no_progress = args.download, args.no_progress
    resumed.compile = args.compile  # speed only: the same numbers either way
    resumed.step = args.step  # speed only: the same numbers up to float rounding
    resumed.resume, resumed.out, resumed.overwrite, resumed.command = run_dir, str(run_dir), False, "train"
    return resumed


def run(args, parser: argparse.ArgumentParser) -> int:
    """Train (or resume), print the run folder, and estimate log p(x) with ``--evaluate-samples``."""
    if args.resume is not None:
        args = resume_args(args, parser)
    device = resolve_device(args.device)
    dataset = labels_by_name(load_data(args, device, args.dataset), args.labels_as)
    model = args.model if args.pair is None else args.pair.rpartition(":")[2]
    out = args.out or f"runs/{args.dataset}-{model}-{args.elbo or 'default'}-seed{args.seed}"
    vae, result = train_from_args(args, dataset, device, args.elbo, out)
    if is_main():
        print(f"run folder: {result.out}")
    if args.evaluate_samples:
        ll = estimate(vae, dataset.test, args.evaluate_samples, 100, args.seed, not args.no_progress,
                      *test_labels(vae, dataset), **dataset.named("test"))
        if is_main():
            save_estimate(ll, dataset.test, dataset.image_shape, Path(out) / "evaluation.json")
            print(ll.format())
    return 0
