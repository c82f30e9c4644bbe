"""``pyro-vae latent RUN_DIR``: interpolation, traversal, anomaly (and 2-D manifold) pictures of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..latent import latent_manifold, latent_pictures
from ..models import SingleLatentVAE
from ..plots import save_image_grid
from ..training import load_run
from .args import add_data_args, resolve_device
from .evaluate import test_labels

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Add this command's parser to the ``pyro-vae`` subcommands ``sub``."""
    p = sub.add_parser("latent", help="latent-space pictures of a trained run (interpolation, traversal, anomalies)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--num-samples", type=int, default=100, help="K for the anomaly scores (-log p(x))")
    p.add_argument("--output", type=Path, default=None, help="folder for the PNGs (default: RUN_DIR/latent)")
    p.add_argument("--seed", type=int, default=0)
    add_data_args(p)
    p.set_defaults(handler=run)
    return p


def run(args, parser) -> int:
    """Write the latent-space pictures of the run in ``args.run_dir``."""
    device = resolve_device(args.device)
    vae, dataset, config = load_run(args.run_dir, device, args.data_dir, args.download)
    if dataset.image_shape is None:
        raise ValueError(f"{config['dataset']} is not an image data set")
    if dataset.test_named:
        raise ValueError(f"{args.run_dir} passes its labels by keyword ({', '.join(dataset.test_named)}; train "
                         "--labels-as), which the latent pictures do not do yet: draw them from Python with "
                         "pyro_vae.latent")
    x = dataset.test if args.num_test is None else dataset.test[: args.num_test]
    labels = test_labels(vae, dataset, len(x))
    out = args.output or args.run_dir / "latent"
    paths = latent_pictures(vae.model, vae.guide, x, dataset.image_shape, out, labels=labels[0] if labels else None,
                            num_samples=args.num_samples, seed=args.seed)
    if isinstance(vae, SingleLatentVAE) and vae.latent_dim == 2 and not vae.needs_labels:  # one site z
        images = latent_manifold(vae.model, vae.guide, x[:1], n=20)
        paths["manifold"] = save_image_grid(images, dataset.image_shape, out / "manifold.png", ncols=20,
                                            title="learned 2-D manifold: E[x|z] on a grid of Normal quantiles")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
