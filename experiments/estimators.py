"""Estimator comparison: Trace_ELBO vs TraceMeanField_ELBO vs IWAE (k = 5, 50) on one model.

Same model (the MLP VAE), same data, same seeds, same optimizer (Adam, batch 100). For every
objective and seed it records:

* the test ELBO (one sample per datapoint, the same estimator for every objective) after each
  epoch, against SVI steps and against wall-clock seconds of training;
* the variance and signal-to-noise ratio of the gradients of the encoder and decoder
  parameters, from ``--grad-draws`` gradient draws on one fixed minibatch, at fixed checkpoints:
  the initial parameters and the parameters reached by the Trace_ELBO run of the same seed (all
  objectives evaluated at the *same* parameters). SNR of a parameter is |mean| / std over draws;
  reported as the median over the parameters of each net. Gradients are of the loss per datapoint.
* the final test log p̂(x) with K importance samples and its standard error.

Writes ``curves.csv``, ``gradients.csv``, ``final.csv``, ``report.json``, ``bound_vs_steps.png``,
``bound_vs_seconds.png``, ``gradient_snr.png`` and ``summary.md`` (with the table and which
estimator wins where, computed from the numbers) into ``--out``.

    python experiments/estimators.py --out results/estimators                  # full: GPU
    python experiments/estimators.py --num-train 10000 --epochs 5 --num-samples 1000 --num-eval 500
    python experiments/estimators.py --quick --out /tmp/est                    # seconds, for the tests

Resumable: each (estimator, seed) trains into its own run folder under ``--runs-dir`` (default
``runs/<name of --out>``), checkpointed every ``--checkpoint-every`` steps and every epoch; its
final log p̂(x) (per datapoint) is kept in ``<run folder>/evaluation.json``. Rerunning the same
command reloads finished runs and evaluations and continues unfinished ones; ``--time-limit
SECONDS`` stops cleanly. Paired differences: every estimator's log p̂(x) minus Trace_ELBO's of the
same seed, on the same test points, with the standard error of the per-datapoint differences.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.cli.args import add_experiment_args  # noqa: E402
from pyro_vae.data import load_dataset  # noqa: E402
from pyro_vae.objectives import get_elbo  # noqa: E402

import _runs  # noqa: E402  (experiments/_runs.py)

ESTIMATORS = {"trace": ("trace", 1), "meanfield": ("meanfield", 1), "iwae-5": ("iwae", 5), "iwae-50": ("iwae", 50)}


def gradient_stats(vae, x, name: str, draws: int) -> dict:
    """Median over parameters of Var and SNR = |mean|/std of per-datapoint-loss gradients."""
    elbo_name, k = ESTIMATORS[name]
    elbo = get_elbo(elbo_name, k)
    nets = {"encoder": list(vae.encoder.parameters()), "decoder": list(vae.decoder.parameters())}
    samples = {net: [] for net in nets}
    for _ in range(draws):
        loss = elbo.differentiable_loss(vae.model, vae.guide, x) / x.shape[0]
        grads = torch.autograd.grad(loss, nets["encoder"] + nets["decoder"])
        n_enc = len(nets["encoder"])
        samples["encoder"].append(torch.cat([g.reshape(-1) for g in grads[:n_enc]]))
        samples["decoder"].append(torch.cat([g.reshape(-1) for g in grads[n_enc:]]))
    out = {}
    for net, rows in samples.items():
        g = torch.stack(rows).double()
        mean, std = g.mean(0), g.std(0)
        keep = std > 0
        out[f"{net}_variance"] = float(g.var(0).median())
        out[f"{net}_snr"] = float((mean[keep].abs() / std[keep]).median())
    return out


def plot_curves(curves, key: str, xlabel: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, name in enumerate(ESTIMATORS):
        for j, seed_rows in enumerate(_by_seed([c for c in curves if c["estimator"] == name]).values()):
            ax.plot([r[key] for r in seed_rows], [r["test_elbo"] for r in seed_rows], "o-", color=f"C{i}",
                    alpha=0.7, ms=3, label=name if j == 0 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test ELBO (nats per datapoint)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("test ELBO during training (one line per seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _by_seed(rows):
    out = {}
    for r in rows:
        out.setdefault(r["seed"], []).append(r)
    return out


def plot_snr(grads, path: Path) -> None:
    checkpoints = sorted({g["checkpoint"] for g in grads})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    width = 0.8 / len(checkpoints)
    for ax, net in zip(axes, ("encoder", "decoder")):
        for j, cp in enumerate(checkpoints):
            vals = [statistics.mean(g[f"{net}_snr"] for g in grads if g["estimator"] == n and g["checkpoint"] == cp)
                    for n in ESTIMATORS]
            ax.bar([i + j * width for i in range(len(ESTIMATORS))], vals, width, label=cp)
        ax.set_xticks([i + width * (len(checkpoints) - 1) / 2 for i in range(len(ESTIMATORS))], list(ESTIMATORS))
        ax.set_yscale("log")
        ax.set_title(f"{net}: median gradient SNR (mean over seeds)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_csv(rows, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def summarize(finals, grads, args, machine) -> str:
    table = []
    for name in ESTIMATORS:
        mine = [f for f in finals if f["estimator"] == name]
        ll = [f["log_likelihood"] for f in mine]
        table.append({
            "estimator": name,
            "log_likelihood": statistics.mean(ll), "seed_sd": statistics.stdev(ll) if len(ll) > 1 else float("nan"),
            "se": statistics.mean(f["log_likelihood_se"] for f in mine),
            "test_elbo": statistics.mean(f["test_elbo"] for f in mine),
            "seconds_per_epoch": statistics.mean(f["train_seconds"] / f["epochs"] for f in mine),
            **{f"{net}_snr_{cp}": statistics.mean(g[f"{net}_snr"] for g in grads if g["estimator"] == name
                                                  and g["checkpoint"] == cp)
               for net in ("encoder", "decoder") for cp in ("initial", "trained")},
        })
    lines = [
        f"# Estimator comparison — {machine}", "",
        f"MLP VAE (latent {args.latent_dim}, hidden {args.hidden_dim}) on {args.num_train or 'all'} MNIST training "
        f"points, Adam {args.lr}, batch 100, {args.epochs} epoch(s), seeds {args.seeds}. log p̂(x): K = "
        f"{args.num_samples} on {args.num_eval} test points. Nats per datapoint. SNR: median over parameters of "
        f"|mean|/std of {args.grad_draws} gradient draws on one minibatch.", "",
        "| estimator | log p̂(x) (mean over seeds) | sd over seeds | mean SE | test ELBO | s / epoch | "
        "enc SNR init | enc SNR trained | dec SNR init | dec SNR trained |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in table:
        lines.append(f"| {t['estimator']} | {t['log_likelihood']:.2f} | {t['seed_sd']:.2f} | {t['se']:.2f} | "
                     f"{t['test_elbo']:.2f} | {t['seconds_per_epoch']:.1f} | {t['encoder_snr_initial']:.3f} | "
                     f"{t['encoder_snr_trained']:.3f} | {t['decoder_snr_initial']:.3f} | "
                     f"{t['decoder_snr_trained']:.3f} |")
    best_ll = max(table, key=lambda t: t["log_likelihood"])
    worst_ll = min(table, key=lambda t: t["log_likelihood"])
    best_elbo = max(table, key=lambda t: t["test_elbo"])
    fastest = min(table, key=lambda t: t["seconds_per_epoch"])
    enc = max(table, key=lambda t: t["encoder_snr_trained"])
    dec = max(table, key=lambda t: t["decoder_snr_trained"])
    lines += [
        "", "Who wins where (computed from the table above):", "",
        f"- log p̂(x): **{best_ll['estimator']}**, {best_ll['log_likelihood'] - worst_ll['log_likelihood']:.2f} nats "
        f"above the last ({worst_ll['estimator']}); compare with the sd over seeds and the SE.",
        f"- test ELBO (the k = 1 bound): **{best_elbo['estimator']}** ({best_elbo['test_elbo']:.2f}).",
        f"- wall-clock per epoch: **{fastest['estimator']}** ({fastest['seconds_per_epoch']:.1f} s).",
        f"- encoder gradient SNR at the trained checkpoint: **{enc['estimator']}**; decoder: **{dec['estimator']}**.",
    ]
    return "\n".join(lines) + "\n"


def run_one(data, name: str, seed: int, initial: dict, folder: Path, args):
    """Train (resume, or reload) one estimator and seed into ``folder`` and estimate log p̂(x)
    (kept in ``folder/evaluation.json``); returns the final row and the pair."""
    elbo, k = ESTIMATORS[name]
    vae = pyro_vae.VAE(784, args.latent_dim, args.hidden_dim).to(args.device)
    vae.load_state_dict(initial)
    _runs.train_or_load(vae.model, vae.guide, data, folder, args.checkpoint_every, args.epochs, elbo=elbo,
                        num_particles=k, lr=args.lr, seed=seed, progress=False, log_interval=10**9, step=args.step)
    history = _runs.history(folder)
    evaluation = folder / "evaluation.json"
    if not evaluation.is_file():
        n = min(args.num_eval, len(data.test))
        estimate = pyro_vae.estimate_log_likelihood(vae.model, vae.guide, data.test[:n], args.num_samples, 100,
                                                    seed=seed)
        evaluation.write_text(json.dumps({"mean": estimate.mean, "se": estimate.stderr, "num_samples": args.num_samples,
                                          "seconds": estimate.seconds,
                                          "log_likelihood": estimate.log_likelihood.tolist()}))
    saved = json.loads(evaluation.read_text())
    final = {"estimator": name, "seed": seed, "epochs": args.epochs,
             "train_seconds": sum(h["train_seconds"] for h in history), "test_elbo": history[-1]["test_elbo"],
             "log_likelihood": saved["mean"],
             "log_likelihood_se": saved["se"], "eval_seconds": saved["seconds"]}
    return final, vae


def paired_differences(runs_dir: Path, finals) -> list[dict]:
    """Each estimator's per-datapoint log p̂(x) minus Trace_ELBO's (same seed, same test points):
    mean and standard error of the differences."""
    out = []
    for f in finals:
        if f["estimator"] == "trace":
            continue
        base = runs_dir / f"trace_seed{f['seed']}" / "evaluation.json"
        if not base.is_file():
            continue
        a = json.loads((runs_dir / f"{f['estimator']}_seed{f['seed']}" / "evaluation.json").read_text())["log_likelihood"]
        b = json.loads(base.read_text())["log_likelihood"]
        diff = [x - y for x, y in zip(a, b)]
        mean = statistics.mean(diff)
        se = statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        out.append({"estimator": f["estimator"], "seed": f["seed"], "minus": "trace", "mean_difference": mean,
                    "se": se, "num_points": len(diff)})
    return out


def paired_table(paired) -> str:
    if not paired:
        return ""
    lines = ["", "Paired differences of log p̂(x) against Trace_ELBO (same seed, same test points; SE of the "
             "per-datapoint differences):", "", "| estimator | seed | mean difference (nats) | SE |",
             "|---|---:|---:|---:|"]
    lines += [f"| {p['estimator']} | {p['seed']} | {p['mean_difference']:+.3f} | {p['se']:.3f} |" for p in paired]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 (--quick: 0 1)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--num-train", type=int, default=None, help="first N training points (default: all)")
    p.add_argument("--num-test", type=int, default=None, help="first N test points for the test ELBO (default: all)")
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden-dim", type=int, default=500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--grad-draws", type=int, default=100)
    p.add_argument("--num-samples", type=int, default=5000, help="K for the final log p̂(x)")
    p.add_argument("--num-eval", type=int, default=10000, help="test points for the final log p̂(x)")
    add_experiment_args(p, out="results/estimators", quick="500 training points, small net, 2 seeds, 1 epoch",
                        seed=False)
    _runs.add_run_args(p, checkpoint_every=6000)
    args = p.parse_args(argv)
    if args.out.suffix == ".json":
        args.out = args.out.with_suffix("")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.seeds = args.seeds or [0, 1]
        args.epochs, args.num_train, args.hidden_dim, args.latent_dim = 1, 500, 50, 5
        args.num_test = 200
        args.grad_draws, args.num_samples, args.num_eval = 10, 20, 50
    args.seeds = args.seeds or [0, 1, 2]
    data = load_dataset("mnist", args.data_dir, device=args.device).subset(args.num_train, args.num_test)
    x_grad = data.test[:100]
    runs_dir, deadline = _runs.runs_dir_for(args), _runs.Deadline(args.time_limit)
    curves, grads, finals, status, stopped = [], [], [], [], None
    for seed in args.seeds:
        pyro.set_rng_seed(seed)
        initial = pyro_vae.VAE(784, args.latent_dim, args.hidden_dim).to(args.device).state_dict()
        trained_trace = None
        for name, (elbo, k) in ESTIMATORS.items():
            folder = runs_dir / f"{name}_seed{seed}"
            if stopped is None and not deadline.passed():
                try:
                    with deadline.guard():
                        final, vae = run_one(data, name, seed, initial, folder, args)
                except (pyro_vae.TrainingInterrupted, _runs.DeadlineReached) as e:
                    stopped = f"{folder.name}: {e}"
            history = _runs.history(folder)
            status.append({"estimator": name, "seed": seed, "epochs_done": len(history), "epochs": args.epochs,
                           "finished": len(history) >= args.epochs and (folder / "evaluation.json").is_file(),
                           "run_folder": str(folder)})
            for h in history:
                curves.append({"estimator": name, "seed": seed, "epoch": h["epoch"], "step": h["step"],
                               "seconds": h["total_train_seconds"], "test_elbo": h["test_elbo"],
                               "test_elbo_se": h["test_elbo_se"]})
            if not status[-1]["finished"]:
                continue
            finals.append(final)
            print(f"seed {seed} {name}: test ELBO {final['test_elbo']:.2f}, log p̂(x) {final['log_likelihood']:.2f} ± "
                  f"{final['log_likelihood_se']:.2f}, {final['train_seconds']:.0f} s", flush=True)
            if name == "trace":
                trained_trace = {k_: v.clone() for k_, v in vae.state_dict().items()}
        if stopped is not None or trained_trace is None:
            break
        for checkpoint, state in (("initial", initial), ("trained", trained_trace)):
            probe = pyro_vae.VAE(784, args.latent_dim, args.hidden_dim).to(args.device)
            probe.load_state_dict(state)
            for name in ESTIMATORS:
                pyro.set_rng_seed(seed)
                grads.append({"estimator": name, "seed": seed, "checkpoint": checkpoint,
                              **gradient_stats(probe, x_grad, name, args.grad_draws)})
    paired = paired_differences(runs_dir, finals)
    if stopped is not None or not finals or not grads:
        (args.out / "status.json").write_text(json.dumps({"stopped": stopped, "runs": status}, indent=2))
        print(f"stopped before the end ({stopped}); rerun the same command to continue", flush=True)
        raise SystemExit(143)
    (args.out / "status.json").write_text(json.dumps({"stopped": None, "runs": status}, indent=2))
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.device}"
    for rows, fname in ((curves, "curves.csv"), (grads, "gradients.csv"), (finals, "final.csv")):
        _write_csv(rows, args.out / fname)
    plot_curves(curves, "step", "SVI steps", args.out / "bound_vs_steps.png")
    plot_curves(curves, "seconds", "training seconds", args.out / "bound_vs_seconds.png")
    plot_snr(grads, args.out / "gradient_snr.png")
    summary = summarize(finals, grads, args, machine) + paired_table(paired)
    (args.out / "summary.md").write_text(summary)
    report = {"machine": machine, "torch": torch.__version__, "settings": {k: str(v) for k, v in vars(args).items()},
              "final": finals, "paired": paired, "runs": status, "gradients": grads, "curves": curves}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(summary)
    print(f"wrote {args.out}/")


if __name__ == "__main__":
    main()
