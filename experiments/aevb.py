"""Kingma & Welling (2013), Figures 2, 4 and 5: AEVB on MNIST and Frey Face.

Figure 2: the lower bound on training and test data against the number of training samples
seen, for latent dimensions N_z in {3, 5, 10, 20, 200}; MLPs with 500 (MNIST) or 200 (Frey
Face) tanh hidden units, a Bernoulli (MNIST) or Gaussian (Frey Face) decoder, Adagrad, batch
100, one sample per datapoint (Trace_ELBO). Figure 4: the learned 2-D manifolds (N_z = 2).
Figure 5: random samples from the models of Figure 2.

Differences from the paper, on purpose: MNIST is dynamically binarized (the paper does not say
how it binarized); no weight-decay prior on the parameters; the Adagrad step size is fixed
(0.02 MNIST, 0.01 Frey Face, within the paper's {0.01, 0.02, 0.1}). The "train" curve is the
running mean of the training bound over each epoch (parameters change within the epoch); the
test curve is a one-sample ELBO on the whole test set after each epoch.

    python experiments/aevb.py --out results/aevb                        # full: 1e8 / 1e7 samples, GPU
    python experiments/aevb.py --mnist-samples 2e5 --frey-samples 1e6    # what fits a CPU in minutes
    python experiments/aevb.py --quick --out /tmp/aevb                    # seconds, for the tests

Writes into ``--out``: ``figure2.csv`` (one row per run and epoch), ``figure2_<data>.png``,
``figure4_manifold_<data>.png``, ``figure5_samples_<data>.png``, ``report.json`` (final bounds per
run) and ``summary.md``. Nats per datapoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import torch  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.cli.args import add_experiment_args  # noqa: E402
from pyro_vae.data import load_dataset  # noqa: E402
from pyro_vae.generate import sample_prior  # noqa: E402
from pyro_vae.latent import latent_manifold  # noqa: E402
from pyro_vae.plots import save_image_grid  # noqa: E402

SETTINGS = {"mnist": {"hidden_dim": 500, "lr": 0.02}, "frey-face": {"hidden_dim": 200, "lr": 0.01}}


def run(data, latent_dim: int, samples: float, args) -> tuple:
    hidden = 20 if args.quick else SETTINGS[data.name]["hidden_dim"]
    vae = pyro_vae.VAE(data.data_dim, latent_dim=latent_dim, hidden_dim=hidden, likelihood=data.likelihood)
    vae = vae.to(data.device)
    epochs = max(1, math.ceil(samples / len(data.train)))
    result = pyro_vae.train(vae.model, vae.guide, data, elbo="trace", optimizer="adagrad",
                            lr=SETTINGS[data.name]["lr"], batch_size=100, epochs=epochs, seed=args.seed,
                            progress=False, log_interval=10**9, jit=args.jit)
    return vae, result


def plot_figure2(rows, dataset: str, path: Path) -> None:
    dims = sorted({r["latent_dim"] for r in rows if r["dataset"] == dataset and r["latent_dim"] != 2})
    fig, axes = plt.subplots(1, len(dims), figsize=(3.0 * len(dims), 3.0), sharey=True, squeeze=False)
    tail = []
    for ax, dim in zip(axes[0], dims):
        mine = [r for r in rows if r["dataset"] == dataset and r["latent_dim"] == dim]
        seen = [r["samples_seen"] for r in mine]
        ax.plot(seen, [r["train_elbo"] for r in mine], "-", color="C0", label="AEVB (train)")
        ax.plot(seen, [r["test_elbo"] for r in mine], "--", color="C0", label="AEVB (test)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on short ranges
        ax.set_title(f"{dataset}, $N_z$ = {dim}", fontsize=9)
        ax.set_xlabel("# training samples evaluated", fontsize=8)
        ax.grid(alpha=0.3, which="both")
        tail += [r[key] for r in mine[len(mine) // 5:] for key in ("train_elbo", "test_elbo")]
    if tail:  # one y-range for all panels (shared axis): the last 80% of every curve
        low, high = min(tail), max(tail)
        axes[0][0].set_ylim(low - 0.1 * (high - low), high + 0.05 * (high - low))
    axes[0][0].set_ylabel("lower bound (nats per datapoint)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "frey-face"], choices=list(SETTINGS))
    p.add_argument("--latent-dims", nargs="+", type=int, default=[3, 5, 10, 20, 200])
    p.add_argument("--mnist-samples", type=float, default=1e8, help="training samples seen per MNIST run")
    p.add_argument("--frey-samples", type=float, default=1e7, help="training samples seen per Frey Face run")
    add_experiment_args(p, out="results/aevb", quick="500 MNIST / 300 Frey points, N_z 2 and 3, a few epochs")
    args = p.parse_args(argv)
    if args.out.suffix == ".json":  # the test harness passes a file name: use its folder
        args.out = args.out.with_suffix("")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.latent_dims, args.mnist_samples, args.frey_samples = [3], 1000, 1200

    rows, finals = [], []
    for name in args.datasets:
        data = load_dataset(name, args.data_dir, device=args.device)
        if args.quick:
            data = data.subset(num_train=500 if name == "mnist" else 300, num_test=100)
        samples = args.mnist_samples if name == "mnist" else args.frey_samples
        pictures = []
        for dim in [2, *args.latent_dims]:
            start = time.perf_counter()
            vae, result = run(data, dim, samples, args)
            for h in result.history:
                rows.append({"dataset": name, "latent_dim": dim, "epoch": h["epoch"],
                             "samples_seen": h["epoch"] * len(data.train), "train_elbo": h["train_elbo"],
                             "test_elbo": h["test_elbo"], "test_elbo_se": h["test_elbo_se"]})
            final = {**{k: rows[-1][k] for k in ("dataset", "latent_dim", "samples_seen", "train_elbo",
                                                 "test_elbo", "test_elbo_se")},
                     "train_seconds": result.train_seconds}
            finals.append(final)
            print(f"{name} N_z={dim}: {final['samples_seen']:.3g} samples, train {final['train_elbo']:.2f}, "
                  f"test {final['test_elbo']:.2f} ± {final['test_elbo_se']:.2f} nats "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            x = data.test[:1]
            if dim == 2:
                images = latent_manifold(vae.model, vae.guide, x, n=20 if name == "mnist" else 10)
                save_image_grid(images, data.image_shape, args.out / f"figure4_manifold_{name}.png",
                                ncols=20 if name == "mnist" else 10,
                                title=f"{name}: learned 2-D manifold (E[x|z], z on Normal quantiles)")
            else:
                torch.manual_seed(args.seed)
                pictures.append((dim, sample_prior(vae.model, data.test[:10])))
        grid = torch.cat([images for _, images in pictures])
        save_image_grid(grid, data.image_shape, args.out / f"figure5_samples_{name}.png", ncols=10,
                        title=f"{name}: samples E[x|z], z ~ p(z); rows N_z = " + ", ".join(str(d) for d, _ in pictures))
        plot_figure2(rows, name, args.out / f"figure2_{name}.png")

    with open(args.out / "figure2.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.device}"
    report = {"machine": machine, "torch": torch.__version__, "seed": args.seed, "quick": args.quick, "runs": finals}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    lines = [f"# AEVB (Kingma & Welling 2013), Figures 2, 4, 5 — {machine}", "",
             "Adagrad, batch 100, one sample; bounds in nats per datapoint (higher is better).", "",
             "| data | N_z | training samples | train bound | test bound ± SE | train s |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['dataset']} | {r['latent_dim']} | {r['samples_seen']:.3g} | {r['train_elbo']:.2f} | "
              f"{r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f} | {r['train_seconds']:.0f} |" for r in finals]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}/")


if __name__ == "__main__":
    main()
