"""``pyro-vae models``: the shipped model/guide pairs and their options."""

from __future__ import annotations

import argparse

from ..models import MODELS, model_options

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Add this command's parser to the ``pyro-vae`` subcommands ``sub``."""
    p = sub.add_parser("models", help="list the shipped model/guide pairs and their options")
    p.set_defaults(handler=run)
    return p


def run(args, parser) -> int:
    """Print the shipped pairs, their options and defaults."""
    for name, cls in MODELS.items():
        options = ", ".join(f"{k}={v!r}" for k, v in model_options(name).items())
        print(f"{name:<13} {cls.description}\n{'':<13} options: {options}"
              + (f"\n{'':<13} takes class labels y (model(x, y), guide(x, y))" if cls.needs_labels else ""))
    print("\nEvery model: --beta (beta-VAE), --kl-warmup STEPS (KL warm-up), --free-bits NATS (with --elbo "
          "meanfield), --likelihood NAME.")
    return 0
