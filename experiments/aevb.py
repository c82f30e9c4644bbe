"""Kingma & Welling (2013), Figures 2, 4 and 5: AEVB on MNIST and Frey Face.

Figure 2: the lower bound on training and test data against the number of training samples
seen, for latent dimensions N_z in {3, 5, 10, 20, 200} (MNIST) and {2, 5, 10, 20} (Frey Face;
the N_z = 2 run is also Figure 4's); MLPs with 500 (MNIST) or 200 (Frey Face) tanh hidden
units, a Bernoulli (MNIST) or Gaussian (Frey Face) decoder, Adagrad, batch 100, one sample per
datapoint (Trace_ELBO). Figure 4: the learned 2-D manifolds (N_z = 2; for MNIST an extra run
after Figure 2's, ``--no-manifold`` skips it). Figure 5: random samples from the models of
Figure 2.

Differences from the paper, on purpose: MNIST is dynamically binarized (the paper does not say
how it binarized); no weight-decay prior on the parameters; the Adagrad step size is fixed
(0.02 MNIST, 0.01 Frey Face, within the paper's {0.01, 0.02, 0.1}). The "train" curve is the
running mean of the training bound over each epoch (parameters change within the epoch); the
test curve is a one-sample ELBO on the whole test set after each epoch.

    python experiments/aevb.py --out results/aevb                        # full: 1e8 / 1e7 samples, GPU
    python experiments/aevb.py --mnist-samples 2e5 --frey-samples 1e6    # what fits a CPU in minutes
    python experiments/aevb.py --quick --out /tmp/aevb                    # seconds, for the tests

Resumable: each (data set, N_z) trains into its own run folder under ``--runs-dir`` (default
``runs/<name of --out>``), checkpointed every ``--checkpoint-every`` steps and every epoch;
rerunning the same command reloads finished runs and continues unfinished ones.
``--time-limit SECONDS`` stops cleanly (checkpoint, results so far); ``report.json`` records
for every run its schedule, the epochs done and whether it finished.

Writes into ``--out`` (after every run): ``figure2.csv`` (one row per run and epoch), ``figure2_<data>.png``,
``figure4_manifold_<data>.png``, ``figure5_samples_<data>.png``, ``report.json`` (final bounds per
run) and ``summary.md``. Nats per datapoint.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
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

import _runs  # noqa: E402  (experiments/_runs.py)


SETTINGS = {"mnist": {"hidden_dim": 500, "lr": 0.02, "figure2_dims": [3, 5, 10, 20, 200]},
            "frey-face": {"hidden_dim": 200, "lr": 0.01, "figure2_dims": [2, 5, 10, 20]}}
"""The paper's Figure 2 panels: MNIST N_z in {3, 5, 10, 20, 200}, Frey Face N_z in {2, 5, 10, 20}."""


def schedule(data, samples: float, args) -> dict:
    """What a run trains with (recorded per run in ``report.json``)."""
    epochs = max(1, math.ceil(samples / len(data.train)))
    return {"elbo": "trace", "optimizer": "adagrad", "lr": SETTINGS[data.name]["lr"], "batch_size": 100,
            "epochs": epochs, "samples_target": samples, "samples": epochs * len(data.train),
            "hidden_dim": 20 if args.quick else SETTINGS[data.name]["hidden_dim"], "seed": args.seed,
            "step": args.step, "num_train": len(data.train), "num_test": len(data.test),
            "train_copies_per_epoch": args.frey_repeat if data.name == "frey-face" else 1}


def run(data, latent_dim: int, plan: dict, folder: Path, args):
    """Train (or resume, or reload) one N_z into ``folder``; returns the pair, or raises
    ``TrainingInterrupted`` / ``DeadlineReached`` after the checkpoint is saved."""
    vae = pyro_vae.VAE(data.data_dim, latent_dim=latent_dim, hidden_dim=plan["hidden_dim"],
                       likelihood=data.likelihood).to(data.device)
    _runs.train_or_load(vae.model, vae.guide, data, folder, args.checkpoint_every, plan["epochs"], elbo="trace",
                        optimizer="adagrad", lr=plan["lr"], batch_size=plan["batch_size"], seed=args.seed,
                        progress=False, log_interval=10**9, step=args.step)
    return vae


def plot_figure2(rows, dataset: str, path: Path) -> None:
    wanted = SETTINGS[dataset]["figure2_dims"]
    dims = sorted({r["latent_dim"] for r in rows if r["dataset"] == dataset and r["latent_dim"] in wanted})
    if not dims:
        return
    fig, axes = plt.subplots(1, len(dims), figsize=(3.0 * len(dims), 3.0), sharey=True, squeeze=False)
    tail = []
    for ax, dim in zip(axes[0], dims):
        mine = [r for r in rows if r["dataset"] == dataset and r["latent_dim"] == dim]
        seen = [r["samples_seen"] for r in mine]
        ax.plot(seen, [r["train_elbo"] for r in mine], "-", color="C0", label="AEVB (train)")
        ax.plot(seen, [r["test_elbo"] for r in mine], "--", color="C1", label="AEVB (test)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on short ranges
        ax.set_title(f"{dataset}, $N_z$ = {dim}", fontsize=9)
        ax.set_xlabel("# training samples evaluated", fontsize=8)
        ax.grid(alpha=0.3, which="both")
        far = max(seen) / 300  # the last 2.5 decades of the log axis
        tail += [r[key] for r in mine if r["samples_seen"] >= far for key in ("train_elbo", "test_elbo")]
    if tail:  # one y-range for all panels (shared axis): the last 2.5 decades of every curve
        low, high = min(tail), max(tail)
        axes[0][0].set_ylim(low - 0.1 * (high - low), high + 0.05 * (high - low))
    axes[0][0].set_ylabel(r"$\mathcal{L}$ (nats per datapoint)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(args, rows, finals) -> list[str]:
    """``figure2.csv``, ``report.json`` and ``summary.md`` from the runs so far."""
    if rows:
        with open(args.out / "figure2.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.device}"
    report = {"machine": machine, "torch": torch.__version__, "seed": args.seed, "quick": args.quick, "runs": finals}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    lines = [f"# AEVB (Kingma & Welling 2013), Figures 2, 4, 5 — {machine}", "",
             "Trace_ELBO (one sample), Adagrad, batch 100; bounds in nats per datapoint (higher is better). "
             "`train`: mean training bound over the last epoch; `test`: one-sample ELBO on the whole test set "
             "after it.", "",
             "| data | N_z | training samples (target) | epochs done / asked | finished | train bound | "
             "test bound ± SE | train s |", "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in finals:
        bound = (f"{r['train_elbo']:.2f} | {r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f}"
                 if r["epochs_done"] else "— | —")
        lines.append(f"| {r['dataset']} | {r['latent_dim']} | {r['samples_seen']:.3g} ({r['schedule']['samples']:.3g}) "
                     f"| {r['epochs_done']} / {r['schedule']['epochs']} | {'yes' if r['finished'] else 'no'} | "
                     f"{bound} | {r['train_seconds']:.0f} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "frey-face"], choices=list(SETTINGS))
    p.add_argument("--latent-dims", nargs="+", type=int, default=None,
                   help="default: the paper's Figure 2 panels (MNIST 3 5 10 20 200; Frey Face 2 5 10 20)")
    p.add_argument("--no-manifold", dest="manifold", action="store_false",
                   help="skip the N_z = 2 run of Figure 4 when N_z = 2 is not among --latent-dims")
    p.add_argument("--mnist-samples", type=float, default=1e8, help="training samples seen per MNIST run")
    p.add_argument("--frey-samples", type=float, default=1e7, help="training samples seen per Frey Face run")
    p.add_argument("--frey-repeat", type=int, default=1, metavar="R",
                   help="Frey Face: one 'epoch' is a shuffle of R copies of the 1765 training faces, so the test "
                        "bound, the metrics and the checkpoint come every R passes (per-epoch work is about half "
                        "of a 1765-point epoch's time on a CPU); the number of samples seen is unchanged")
    add_experiment_args(p, out="results/aevb", quick="500 MNIST / 300 Frey points, N_z 2 and 3, a few epochs")
    _runs.add_run_args(p, checkpoint_every=6000)
    args = p.parse_args(argv)
    if args.out.suffix == ".json":  # the test harness passes a file name: use its folder
        args.out = args.out.with_suffix("")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.latent_dims, args.mnist_samples, args.frey_samples = [3], 1000, 1200
    runs_dir, deadline = _runs.runs_dir_for(args), _runs.Deadline(args.time_limit)

    rows, finals, stopped = [], [], None
    for name in args.datasets:
        data = load_dataset(name, args.data_dir, device=args.device)
        if args.quick:
            data = data.subset(num_train=500 if name == "mnist" else 300, num_test=100)
        repeat = args.frey_repeat if name == "frey-face" else 1
        if repeat > 1:
            data = dataclasses.replace(data, train=data.train.repeat(repeat, 1))
        plan = schedule(data, args.mnist_samples if name == "mnist" else args.frey_samples, args)
        dims = list(args.latent_dims or SETTINGS[name]["figure2_dims"])
        if args.manifold and 2 not in dims:
            dims.append(2)  # Figure 4's manifold, after the Figure 2 panels
        pictures = []
        for dim in dims:
            folder = runs_dir / f"{name}_nz{dim}"
            before, start = _runs.epochs_done(folder), time.perf_counter()
            vae = None
            if stopped is None and not deadline.passed():
                try:
                    with deadline.guard():
                        vae = run(data, dim, plan, folder, args)
                except (pyro_vae.TrainingInterrupted, _runs.DeadlineReached) as e:
                    stopped = f"{name} N_z={dim}: {e}"
            history = _runs.history(folder)
            done = len(history)
            for h in history:
                rows.append({"dataset": name, "latent_dim": dim, "epoch": h["epoch"],
                             "samples_seen": h["epoch"] * len(data.train), "train_elbo": h["train_elbo"],
                             "test_elbo": h["test_elbo"], "test_elbo_se": h["test_elbo_se"],
                             "train_seconds": h["train_seconds"]})
            last = history[-1] if history else {}
            final = {"dataset": name, "latent_dim": dim, "samples_seen": done * len(data.train),
                     "epochs_done": done, "finished": done >= plan["epochs"], "schedule": plan,
                     "train_elbo": last.get("train_elbo"), "test_elbo": last.get("test_elbo"),
                     "test_elbo_se": last.get("test_elbo_se"),
                     "train_seconds": sum(h["train_seconds"] for h in history),
                     "epochs_this_invocation": done - before, "run_folder": str(folder)}
            finals.append(final)
            if done:
                print(f"{name} N_z={dim}: {final['samples_seen']:.3g} of {plan['samples']:.3g} samples "
                      f"({'finished' if final['finished'] else 'NOT finished'}), train {final['train_elbo']:.2f}, "
                      f"test {final['test_elbo']:.2f} ± {final['test_elbo_se']:.2f} nats "
                      f"({time.perf_counter() - start:.0f} s this time)", flush=True)
            if vae is not None and final["finished"]:
                x = data.test[:1]
                if dim == 2:
                    images = latent_manifold(vae.model, vae.guide, x, n=20 if name == "mnist" else 10)
                    save_image_grid(images, data.image_shape, args.out / f"figure4_manifold_{name}.png",
                                    ncols=20 if name == "mnist" else 10,
                                    title=f"{name}: learned 2-D manifold (E[x|z], z on Normal quantiles)")
                if dim != 2 or name == "frey-face":
                    torch.manual_seed(args.seed)
                    pictures.append((dim, sample_prior(vae.model, data.test[:10])))
            write_outputs(args, rows, finals)
            plot_figure2(rows, name, args.out / f"figure2_{name}.png")
        if pictures:
            grid = torch.cat([images for _, images in pictures])
            save_image_grid(grid, data.image_shape, args.out / f"figure5_samples_{name}.png", ncols=10,
                            title=f"{name}: samples E[x|z], z ~ p(z); rows N_z = " + ", ".join(str(d) for d, _ in pictures))

    lines = write_outputs(args, rows, finals)
    print("\n".join(lines))
    print(f"wrote {args.out}/ (run folders: {runs_dir}/)")
    if stopped is not None:
        print(f"stopped before the end ({stopped}); rerun the same command to continue", flush=True)
        raise SystemExit(143)


if __name__ == "__main__":
    main()
