"""``pyro-vae demo``: the main job. Trace_ELBO against TraceMeanField_ELBO on MNIST, a table and pictures.

Trains the Kingma & Welling MNIST VAE briefly with each objective, estimates log p(x) on test
images by importance sampling, prints a comparison table (nats per datapoint, higher is better)
and writes the runs, their reports and pictures under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..plots import plot_elbo_curves
from .args import add_train_args, load_data, resolve_device
from .evaluate import estimate, save_estimate, test_labels
from .train import train_from_args

__all__ = ["add_parser", "run"]

OBJECTIVES = {"trace": "Trace_ELBO", "meanfield": "TraceMeanField_ELBO"}


def add_parser(sub) -> argparse.ArgumentParser:
    """Add this command's parser to the ``pyro-vae`` subcommands ``sub``."""
    p = sub.add_parser("demo", help="main job: Trace_ELBO vs TraceMeanField_ELBO on MNIST, a table and pictures")
    add_train_args(p, epochs=3)
    p.add_argument("--num-samples", type=int, default=1000, help="K for the log p(x) estimate")
    p.add_argument("--num-eval", type=int, default=1000, help="test points for the log p(x) estimate")
    p.add_argument("--out", default="runs/demo", help="folder for the two runs and the comparison")
    p.set_defaults(overwrite=True, handler=run)
    return p


def run(args, parser) -> int:
    """Train with both objectives, estimate log p(x), print and save the comparison table."""
    device = resolve_device(args.device)
    dataset = load_data(args, device, args.dataset)
    out = Path(args.out)
    rows, results = [], {}
    for elbo, name in OBJECTIVES.items():
        print(f"== training with --elbo {elbo} ({name})")
        vae, result = train_from_args(args, dataset, device, elbo, out / elbo)
        ll = estimate(vae, dataset.test[: args.num_eval], args.num_samples, 100, args.seed,
                      not args.no_progress, *test_labels(vae, dataset, args.num_eval))
        save_estimate(ll, dataset.test, dataset.image_shape, out / elbo / "evaluation.json")
        results[elbo] = result
        rows.append((elbo, result.final, ll))
    plot_elbo_curves(results, out / "elbo_comparison.png", args.batch_size, title=f"{dataset.name}: objectives")
    table = _table(args, dataset, device, vae.latent_dim, rows, out)
    print(table)
    (out / "summary.txt").write_text(table + "\n")
    return 0


def _table(args, dataset, device, latent_dim: int, rows: list, out: Path) -> str:
    """The comparison table: epochs, training seconds, test ELBO ± SE, log p̂(x) ± SE, bad k-hats."""
    k, quantity = args.num_samples, rows[0][2].quantity
    header = (f"{'objective':<10} {'epochs':>6} {'train s':>8} {'test ELBO ± SE':>18} "
              f"{f'{quantity}, K={k} ± SE':>22} {'k-hat>0.7':>9}")
    lines = [
        (f"\n{dataset.name}: {len(dataset.train)} train / {len(dataset.test)} test points, latent "
        f"{latent_dim}, batch {args.batch_size}, {args.optimizer} lr {args.lr}, device {device}"),
        (f"nats per datapoint, higher is better; {quantity} on the first {min(args.num_eval, len(dataset.test))} "
        "test points"),
        header, "-" * len(header),
    ]
    for elbo, final, ll in rows:
        bad = ll.pareto_k_counts().get("k>0.7", "-")
        lines.append(
            f"{elbo:<10} {final['epoch']:>6} {final['total_train_seconds']:>8.1f} "
            f"{final['test_elbo']:>9.2f} ± {final['test_elbo_se']:<6.2f} "
            f"{ll.mean:>13.2f} ± {ll.stderr:<6.2f} {bad:>9}"
        )
    lines.append(f"\npictures and reports: {out}/ (elbo_comparison.png, */samples.png, "
                 "*/reconstructions.png, */evaluation.json)")
    return "\n".join(lines)

