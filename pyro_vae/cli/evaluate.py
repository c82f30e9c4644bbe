"""``pyro-vae evaluate RUN_DIR``: importance-sampled log p(x) of a trained run on its test set.

Writes the JSON report (summary and per-datapoint log p̂(x), IWAE bounds, ESS, k-hat; nats per
datapoint; the quantity estimated, ``log p(x | y)`` for a pair given the labels) and, beside it, the
diagnostics picture. The test labels go to the pair as they went in training: positionally, or by
keyword for a run of ``train --labels-as NAME``. Under ``torchrun`` the test set's minibatches are
shared out over the processes and rank 0 reports.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..distributed import is_main, world_size
from ..evaluation import estimate_log_likelihood
from ..plots import plot_log_likelihood_diagnostics
from ..training import load_run
from .args import add_data_args, resolve_device

__all__ = ["EVAL_STEPS", "add_parser", "estimate", "run", "save_estimate", "test_labels"]

EVAL_STEPS = {"auto": "auto", "compiled": True, "eager": False}
"""``--step`` of ``pyro-vae evaluate`` -> ``estimate_log_likelihood(compiled=...)``."""


def add_parser(sub) -> argparse.ArgumentParser:
    """Add this command's parser to the ``pyro-vae`` subcommands ``sub``."""
    p = sub.add_parser("evaluate", help="importance-sampled log p(x) of a trained run on its test set")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--num-samples", type=int, default=5000, help="K importance samples per datapoint")
    p.add_argument("--batch-size", type=int, default=100, help="datapoints per batch")
    p.add_argument("--particle-chunk-size", type=int, default=None, help="particles vectorized at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None, help="JSON report (default: RUN_DIR/evaluation.json)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--step", choices=tuple(EVAL_STEPS), default="auto",
                   help="auto (default): record and compile the estimator's chunk for estimates of at least "
                        "2e6 datapoint x sample pairs (5-10 s once); compiled: always; eager: never "
                        "(pyro_vae.evaluation.compiled)")
    add_data_args(p)
    p.set_defaults(handler=run)
    return p


def test_labels(vae, dataset, num: int | None = None) -> tuple:
    """``(test_labels[:num],)`` for a pair that takes labels, else ``()``."""
    return (dataset.test_labels[:num],) if vae.needs_labels else ()


def estimate(vae, x, num_samples: int, batch_size: int, seed: int, progress: bool, *args, chunk=None,
             step: str = "auto", **named):
    """log p(x) estimate with IWAE bounds at k = 1, 5, 50 (those below ``num_samples``); ``args`` and
    ``named`` (per-datapoint tensors, one row per row of ``x``) go to the pair; under torchrun the
    minibatches are shared out over the processes; ``step``: a key of :data:`EVAL_STEPS`."""
    ks = tuple(k for k in (1, 5, 50) if k < num_samples)
    return estimate_log_likelihood(vae.model, vae.guide, x, num_samples, batch_size, *args, bound_ks=ks,
                                   particle_chunk_size=chunk, seed=seed, progress=progress and is_main(),
                                   distributed=True, compiled=EVAL_STEPS[step], **named)


def save_estimate(result, images, image_shape, report: Path) -> Path:
    """Write the JSON report and, beside it, the diagnostics picture (same name, ``.png``)."""
    result.save(report)
    picture = report.with_suffix(".png")
    plot_log_likelihood_diagnostics(result, images, image_shape, picture)
    return picture


def run(args, parser) -> int:
    """Estimate log p(x) of the run in ``args.run_dir``; write the report and the picture."""
    device = resolve_device(args.device)
    vae, dataset, config = load_run(args.run_dir, device, args.data_dir, args.download)
    x = dataset.test if args.num_test is None else dataset.test[: args.num_test]
    labels, named = test_labels(vae, dataset, len(x)), dataset.named("test", slice(len(x)))
    if not is_main():  # under torchrun: evaluate this process's minibatches, rank 0 reports
        estimate(vae, x, args.num_samples, args.batch_size, args.seed, False, *labels, chunk=args.particle_chunk_size,
                 step=args.step, **named)
        return 0
    processes = f", {world_size()} processes" if world_size() > 1 else ""
    print(f"evaluating {args.run_dir} ({config['dataset']}, {config.get('model') or config.get('pair')}, trained with "
          f"{config['elbo']}) on {len(x)} test points, K = {args.num_samples}, device {device}{processes}")
    result = estimate(vae, x, args.num_samples, args.batch_size, args.seed, not args.no_progress, *labels,
                      chunk=args.particle_chunk_size, step=args.step, **named)
    output = args.output or args.run_dir / "evaluation.json"
    print(result.format())
    picture = save_estimate(result, x, dataset.image_shape, output)
    print(f"report: {output}\npicture: {picture}")
    return 0
