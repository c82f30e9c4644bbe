"""The ``pyro-vae`` command line (also ``python -m pyro_vae``).

One module per command:

* ``pyro-vae demo`` (:mod:`.demo`): the main job. Trains the MNIST VAE briefly with Trace_ELBO
  and with TraceMeanField_ELBO, estimates log p(x) on test images, prints a comparison table and
  writes pictures (a few minutes on a 2-core CPU).
* ``pyro-vae train`` (:mod:`.train`): one SVI run into a run folder (``--out``); ``--resume
  RUN_DIR`` continues one from its checkpoint. Under ``torchrun`` it trains with DDP.
* ``pyro-vae evaluate RUN_DIR`` (:mod:`.evaluate`): importance-sampled log p(x) of a trained run
  on its test set (under ``torchrun``, the minibatches are shared out over the processes).
* ``pyro-vae compare RUN_A RUN_B`` (:mod:`.compare`): the paired difference of two runs'
  log p̂(x) (and IWAE bounds) on the same test points, with its paired standard error.
* ``pyro-vae latent RUN_DIR`` (:mod:`.latent`): interpolation, traversal, anomaly (and, for a
  2-D latent space, manifold) pictures of a trained run.
* ``pyro-vae models`` (:mod:`.models`): the shipped model/guide pairs and their options.

The options shared by several commands and by the experiment scripts are in :mod:`.args`.
Every number printed is in nats per datapoint; ELBOs and log-likelihoods are higher-is-better.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .. import __version__
from ..data import DataNotFoundError
from ..distributed import init_from_env, is_main
from ..training import CheckpointError, NonFiniteLossError, TrainingInterrupted, load_run
from . import compare, demo, evaluate, latent, models, train

__all__ = ["build_parser", "load_run", "main"]

COMMANDS = (train, evaluate, compare, latent, models, demo)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (``pyro-vae COMMAND --help`` lists a command's options)."""
    parser = argparse.ArgumentParser(prog="pyro-vae", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"pyro-vae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input or an I/O error, 3 a non-finite
    loss, 128 + signal number when SIGINT/SIGTERM stopped training after saving a checkpoint)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "epochs", 0) is None and getattr(args, "resume", None) is None:
        args.epochs = args.default_epochs
    try:
        if args.command in ("train", "evaluate"):
            device = init_from_env(args.device)  # under torchrun: join the process group
            if device is not None:
                args.device = str(device)
        return args.handler(args, parser)
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
