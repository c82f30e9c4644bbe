"""The ``pyro-vae`` command line (also ``python -m pyro_vae``).

Subcommands:

* ``pyro-vae demo``: the main job. Trains the MNIST VAE briefly with Trace_ELBO and with
  TraceMeanField_ELBO, estimates log p(x) on test images, prints a comparison table and
  writes pictures (a few minutes on a 2-core CPU).
* ``pyro-vae train``: one SVI run into a run folder (``--out``); ``--resume RUN_DIR`` continues
  one from its checkpoint. Under ``torchrun`` it trains with DistributedDataParallel.
* ``pyro-vae evaluate RUN_DIR``: importance-sampled log p(x) of a trained run on its test set
  (under ``torchrun``, the test set's minibatches are shared out over the processes).
* ``pyro-vae latent RUN_DIR``: interpolation, traversal, anomaly (and, for a 2-D latent space,
  manifold) pictures of a trained run.
* ``pyro-vae models``: the shipped model/guide pairs and their options.

Every number printed is in nats per datapoint; ELBOs and log-likelihoods are higher-is-better.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyro
import torch

from . import __version__
from .checkpoint import CheckpointError, load_checkpoint
from .data import DATASETS, DataNotFoundError, load_dataset
from .evaluation import estimate_log_likelihood
from .latent import latent_manifold, latent_pictures
from .likelihoods import LIKELIHOODS
from .models import MODELS, build_model, model_options
from .objectives import ELBO_NAMES
from .plots import plot_elbo_curves, plot_log_likelihood_diagnostics, save_image_grid
from .distributed import init_from_env, is_main, world_size
from .training import OPTIMIZERS, NonFiniteLossError, TrainingInterrupted, train

__all__ = ["build_parser", "load_run", "main"]

DEFAULT_HIDDEN = {"frey-face": 200}  # 500 for the MNIST-like data sets (Kingma & Welling 2013)


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available on this machine")
    return device


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="data root (default: $PYRO_VAE_DATA, else ~/.cache/pyro-vae)")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="never download missing data files (default: download, checksums verified)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--num-test", type=int, default=None, help="evaluate on the first N test points only")


def _add_train_args(p: argparse.ArgumentParser, epochs: int) -> None:
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
    p.add_argument("--num-flows", type=int, default=None, help="iaf: number of autoregressive transforms")
    p.add_argument("--stochastic-layers", type=int, default=None, help="hierarchical: number of latent layers")
    p.add_argument("--num-particles", type=int, default=1,
                   help="samples per datapoint per step (K for --elbo iwae)")
    p.add_argument("--optimizer", default="adam", choices=tuple(OPTIMIZERS))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--epochs", type=int, default=None, help=f"passes over the training set (default {epochs}; "
                   "with --resume: the total to reach)")
    p.add_argument("--latent-dim", type=int, default=None, help="default: the model's (20; 50 for hierarchical)")
    p.add_argument("--hidden-dim", type=int, default=None,
                   help="default: the model's (500; 200 for hierarchical), 200 on Frey Face")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=None, help="train on the first N training points only")
    p.add_argument("--valid-size", type=int, default=0, metavar="N",
                   help="hold out the last N training points as a validation set: valid_elbo each epoch and "
                        "best.pt, the checkpoint with the best one (binarized-mnist has its own)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--jit", action="store_true",
                   help="compile the loss with torch.jit.trace (static pairs; checked against the eager loss first)")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the networks (optional MODE: reduce-overhead uses CUDA graphs, max-autotune)")
    _add_data_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-vae", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a VAE with SVI into a run folder")
    _add_train_args(p, epochs=10)
    p.set_defaults(default_epochs=10)
    p.add_argument("--elbo", default="trace", choices=ELBO_NAMES,
                   help="trace: Trace_ELBO; meanfield: TraceMeanField_ELBO; iwae: importance weighted")
    p.add_argument("--out", default=None, help="run folder (default: runs/DATASET-ELBO-zLATENT-seedSEED)")
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

    p = sub.add_parser("evaluate", help="importance-sampled log p(x) of a trained run on its test set")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--num-samples", type=int, default=5000, help="K importance samples per datapoint")
    p.add_argument("--batch-size", type=int, default=100, help="datapoints per batch")
    p.add_argument("--particle-chunk-size", type=int, default=None, help="particles vectorized at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None, help="JSON report (default: RUN_DIR/evaluation.json)")
    p.add_argument("--no-progress", action="store_true")
    _add_data_args(p)

    p = sub.add_parser("latent", help="latent-space pictures of a trained run (interpolation, traversal, anomalies)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--num-samples", type=int, default=100, help="K for the anomaly scores (-log p(x))")
    p.add_argument("--output", type=Path, default=None, help="folder for the PNGs (default: RUN_DIR/latent)")
    p.add_argument("--seed", type=int, default=0)
    _add_data_args(p)

    sub.add_parser("models", help="list the shipped model/guide pairs and their options")

    p = sub.add_parser("demo", help="main job: Trace_ELBO vs TraceMeanField_ELBO on MNIST, a table and pictures")
    _add_train_args(p, epochs=3)
    p.set_defaults(default_epochs=3)
    p.add_argument("--num-samples", type=int, default=1000, help="K for the log p(x) estimate")
    p.add_argument("--num-eval", type=int, default=1000, help="test points for the log p(x) estimate")
    p.add_argument("--out", default="runs/demo", help="folder for the two runs and the comparison")
    p.set_defaults(overwrite=True)
    return parser


def _model_config(args, dataset) -> dict:
    """Options for ``build_model``: the data set's facts where the family takes them, and every
    option the user set (an option the family does not take is an error there)."""
    accepted = model_options(args.model)
    config = {"likelihood": dataset.likelihood, "image_shape": dataset.image_shape,
              "hidden_dim": args.hidden_dim or DEFAULT_HIDDEN.get(dataset.name)}
    config = {k: v for k, v in config.items() if k in accepted and v is not None}
    explicit = {"latent_dim": args.latent_dim, "num_flows": args.num_flows,
                "stochastic_layers": args.stochastic_layers, "beta": args.beta if args.beta != 1.0 else None}
    config.update({k: v for k, v in explicit.items() if v is not None})
    if "image_shape" in config:
        config["image_shape"] = list(config["image_shape"])
    return config


CLI_RESUME_FLAGS = ("epochs", "device", "data_dir", "download", "no_progress", "jit", "compile")
"""Flags that may go with ``train --resume``; every other setting comes from the run's config.json."""


def _run_training(args, dataset, device, elbo: str, out) -> tuple:
    model_config = _model_config(args, dataset)
    pyro.set_rng_seed(args.seed)  # the initial weights depend on the seed alone
    vae = build_model(args.model, dataset.data_dim, **model_config).to(device)
    cli = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
           if k not in ("command", "resume", "default_epochs", "overwrite")}
    config = {"model": args.model, "model_config": model_config, "data_dim": dataset.data_dim,
              "image_shape": dataset.image_shape, "cli": cli}
    result = train(
        vae.model, vae.guide, dataset, elbo=elbo, num_particles=args.num_particles, labels=vae.needs_labels,
        kl_warmup_steps=args.kl_warmup, free_bits=args.free_bits,
        optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
        seed=args.seed, out=out, overwrite=args.overwrite, config=config, progress=not args.no_progress,
        resume=getattr(args, "resume", None) is not None, checkpoint_every=getattr(args, "checkpoint_every", 0),
        nonfinite_backoff=getattr(args, "nonfinite_backoff", None), jit=args.jit, compile=args.compile,
    )
    return vae, result


def _resume_args(args) -> argparse.Namespace:
    """The settings of the run in ``args.resume`` (its config.json), with the flags that may change."""
    run = args.resume
    config_path = run / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"cannot resume: {config_path} is missing (is {run} a run folder?)")
    config = json.loads(config_path.read_text())
    if "cli" not in config:
        raise ValueError(f"cannot resume {run}: its config.json was not written by `pyro-vae train`; "
                         "resume it from Python with train(..., out=RUN_DIR, resume=True)")
    defaults = vars(build_parser().parse_args(["train"]))
    given = [k for k, v in vars(args).items()
             if k in defaults and k not in CLI_RESUME_FLAGS + ("resume", "command") and v != defaults[k]]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"--resume takes the run's settings from {config_path}; drop {flags} "
                         f"(only {', '.join('--' + k.replace('_', '-') for k in CLI_RESUME_FLAGS)} go with --resume)")
    resumed = argparse.Namespace(**{**defaults, **config["cli"]})
    resumed.epochs = args.epochs if args.epochs is not None else config["epochs"]
    for key in ("device", "data_dir"):
        if getattr(args, key) is not None:
            setattr(resumed, key, getattr(args, key))
    resumed.download, resumed.no_progress = args.download, args.no_progress
    resumed.jit, resumed.compile = args.jit, args.compile  # speed only: the same numbers either way
    resumed.resume, resumed.out, resumed.overwrite, resumed.command = run, str(run), False, "train"
    return resumed


def _binarize(dataset: str, likelihood: str | None) -> bool:
    """Grey-level likelihoods on MNIST-like data get the grey levels (no binarization)."""
    return likelihood in (None, "bernoulli") or dataset not in ("mnist", "fashion-mnist")


def _load_data(args, device, name: str, seed: int = 0):
    likelihood = getattr(args, "likelihood", None)
    dataset = load_dataset(name, args.data_dir, device=device, download=args.download, seed=seed,
                           binarize=_binarize(name, likelihood), valid_size=getattr(args, "valid_size", 0))
    if likelihood is not None:
        dataset.likelihood = likelihood
    return dataset.subset(getattr(args, "num_train", None), args.num_test)


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", data_dir=None, download=False):
    """Rebuild a trained run: ``(vae, dataset, config)`` with the checkpoint's parameters loaded."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {config_path} is missing")
    config = json.loads(config_path.read_text())
    likelihood = config["model_config"].get("likelihood")
    dataset = load_dataset(config["dataset"], data_dir, device=device, download=download,
                           binarize=_binarize(config["dataset"], likelihood))
    vae = build_model(config["model"], config["data_dim"], **config["model_config"]).to(device)
    state = load_checkpoint(run_dir / "checkpoint.pt", vae.model, vae.guide, dataset.test[:2],
                            *_labels(vae, dataset, 2))
    if state.get("finished") is False and is_main():
        print(f"note: {run_dir} is an unfinished run ({state['epoch']} of {config['epochs']} epochs done); "
              f"finish it with: pyro-vae train --resume {run_dir}", file=sys.stderr)
    return vae, dataset, config


def _labels(vae, dataset, num: int | None = None) -> tuple:
    """``(test_labels[:num],)`` for a pair that takes labels, else ``()``."""
    return (dataset.test_labels[:num],) if vae.needs_labels else ()


def _evaluate(vae, x, num_samples, batch_size, seed, progress, *args, chunk=None):
    """log p(x) estimate; under torchrun the minibatches are shared out over the processes."""
    ks = tuple(k for k in (1, 5, 50) if k < num_samples)
    return estimate_log_likelihood(vae.model, vae.guide, x, num_samples, batch_size, *args, bound_ks=ks,
                                   particle_chunk_size=chunk, seed=seed, progress=progress and is_main(),
                                   distributed=True)


def _save_estimate(estimate, images, image_shape, report: Path) -> Path:
    """Write the JSON report and, beside it, the diagnostics picture (same name, ``.png``)."""
    estimate.save(report)
    picture = report.with_suffix(".png")
    plot_log_likelihood_diagnostics(estimate, images, image_shape, picture)
    return picture


def cmd_train(args) -> int:
    if args.resume is not None:
        args = _resume_args(args)
    device = _device(args.device)
    dataset = _load_data(args, device, args.dataset)
    out = args.out or f"runs/{args.dataset}-{args.model}-{args.elbo}-seed{args.seed}"
    vae, result = _run_training(args, dataset, device, args.elbo, out)
    if is_main():
        print(f"run folder: {result.out}")
    if args.evaluate_samples:
        estimate = _evaluate(vae, dataset.test, args.evaluate_samples, 100, args.seed, not args.no_progress,
                             *_labels(vae, dataset))
        if is_main():
            _save_estimate(estimate, dataset.test, dataset.image_shape, Path(out) / "evaluation.json")
            print(estimate.format())
    return 0


def cmd_evaluate(args) -> int:
    device = _device(args.device)
    vae, dataset, config = load_run(args.run_dir, device, args.data_dir, args.download)
    x = dataset.test if args.num_test is None else dataset.test[: args.num_test]
    if not is_main():  # under torchrun: evaluate this process's minibatches, rank 0 reports
        _evaluate(vae, x, args.num_samples, args.batch_size, args.seed, False, *_labels(vae, dataset, len(x)),
                  chunk=args.particle_chunk_size)
        return 0
    processes = f", {world_size()} processes" if world_size() > 1 else ""
    print(f"evaluating {args.run_dir} ({config['dataset']}, {config['model']}, trained with "
          f"{config['elbo']}) on {len(x)} test points, K = {args.num_samples}, device {device}{processes}")
    estimate = _evaluate(vae, x, args.num_samples, args.batch_size, args.seed, not args.no_progress,
                         *_labels(vae, dataset, len(x)), chunk=args.particle_chunk_size)
    output = args.output or args.run_dir / "evaluation.json"
    picture = _save_estimate(estimate, x, dataset.image_shape, output)
    print(estimate.format())
    print(f"report: {output}\npicture: {picture}")
    return 0


def cmd_latent(args) -> int:
    device = _device(args.device)
    vae, dataset, config = load_run(args.run_dir, device, args.data_dir, args.download)
    if dataset.image_shape is None:
        raise ValueError(f"{config['dataset']} is not an image data set")
    x = dataset.test if args.num_test is None else dataset.test[: args.num_test]
    labels = _labels(vae, dataset, len(x))
    out = args.output or args.run_dir / "latent"
    paths = latent_pictures(vae.model, vae.guide, x, dataset.image_shape, out, labels=labels[0] if labels else None,
                            num_samples=args.num_samples, seed=args.seed)
    if vae.latent_dim == 2 and not vae.needs_labels and config["model"] != "hierarchical":
        images = latent_manifold(vae.model, vae.guide, x[:1], n=20)
        paths["manifold"] = save_image_grid(images, dataset.image_shape, out / "manifold.png", ncols=20,
                                            title="learned 2-D manifold: E[x|z] on a grid of Normal quantiles")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def cmd_models(args) -> int:
    for name, cls in MODELS.items():
        options = ", ".join(f"{k}={v!r}" for k, v in model_options(name).items())
        print(f"{name:<13} {cls.description}\n{'':<13} options: {options}"
              + (f"\n{'':<13} takes class labels y (model(x, y), guide(x, y))" if cls.needs_labels else ""))
    print("\nEvery model: --beta (beta-VAE), --kl-warmup STEPS (KL warm-up), --free-bits NATS (with --elbo "
          "meanfield), --likelihood NAME.")
    return 0


def cmd_demo(args) -> int:
    device = _device(args.device)
    dataset = _load_data(args, device, args.dataset)
    out = Path(args.out)
    rows, results = [], {}
    for elbo in ("trace", "meanfield"):
        print(f"== training with --elbo {elbo} ({'Trace_ELBO' if elbo == 'trace' else 'TraceMeanField_ELBO'})")
        vae, result = _run_training(args, dataset, device, elbo, out / elbo)
        estimate = _evaluate(vae, dataset.test[: args.num_eval], args.num_samples, 100, args.seed,
                             not args.no_progress, *_labels(vae, dataset, args.num_eval))
        _save_estimate(estimate, dataset.test, dataset.image_shape, out / elbo / "evaluation.json")
        results[elbo] = result
        rows.append((elbo, result.final, estimate))
    plot_elbo_curves(results, out / "elbo_comparison.png", args.batch_size, title=f"{dataset.name}: objectives")
    k = args.num_samples
    header = (f"{'objective':<10} {'epochs':>6} {'train s':>8} {'test ELBO ± SE':>18} "
              f"{f'log p(x), K={k} ± SE':>22} {'k-hat>0.7':>9}")
    lines = [
        f"\n{dataset.name}: {len(dataset.train)} train / {len(dataset.test)} test points, latent "
        f"{vae.latent_dim}, batch {args.batch_size}, {args.optimizer} lr {args.lr}, device {device}",
        f"nats per datapoint, higher is better; log p(x) on the first {min(args.num_eval, len(dataset.test))} "
        "test points",
        header, "-" * len(header),
    ]
    for elbo, final, est in rows:
        bad = est.pareto_k_counts().get("k>0.7", "-")
        lines.append(
            f"{elbo:<10} {final['epoch']:>6} {final['total_train_seconds']:>8.1f} "
            f"{final['test_elbo']:>9.2f} ± {final['test_elbo_se']:<6.2f} "
            f"{est.mean:>13.2f} ± {est.stderr:<6.2f} {bad:>9}"
        )
    lines.append(f"\npictures and reports: {out}/ (elbo_comparison.png, */samples.png, "
                 "*/reconstructions.png, */evaluation.json)")
    table = "\n".join(lines)
    print(table)
    (out / "summary.txt").write_text(table + "\n")
    return 0


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input or an I/O error, 3 a non-finite
    loss, 128 + signal number when SIGINT/SIGTERM stopped training after saving a checkpoint)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "epochs", 0) is None and getattr(args, "resume", None) is None:
        args.epochs = args.default_epochs
    try:
        if args.command in ("train", "evaluate"):
            device = init_from_env(args.device)  # under torchrun: join the process group
            if device is not None:
                args.device = str(device)
        commands = {"train": cmd_train, "evaluate": cmd_evaluate, "latent": cmd_latent, "models": cmd_models,
                    "demo": cmd_demo}
        return commands[args.command](args)
    except (ValueError, FileExistsError, FileNotFoundError, DataNotFoundError, CheckpointError, OSError) as e:
        print(f"pyro-vae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"pyro-vae {args.command}: error: {e}", file=sys.stderr)
        return 3
    except TrainingInterrupted as e:
        if is_main():
            print(f"pyro-vae {args.command}: {e}", file=sys.stderr)
        return 128 + e.signal_number
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
