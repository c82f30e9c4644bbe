"""Deep hierarchies on dynamically binarized MNIST: one table, one schedule, the papers beside them.

Each pair trains from the same seed with the same objective (``meanfield``: the analytic KL wherever
it is a term of the ELBO, the sampled log-ratio elsewhere; pyro-vae's ``TraceMeanField_ELBO`` is
right for every dependency structure), Adam, batch 100, KL warm-up over ``--warmup-epochs`` for the
pairs whose papers train with it (Ladder, NVAE); then, per pair:

* log p̂(x) with K importance samples (``--num-samples``, 5000 as in the papers) on the first
  ``--num-eval`` test images, with its standard error (nats per datapoint);
* the test ELBO after the last epoch (one sample per datapoint; all test images), and the ELBO on
  the images of log p̂(x);
* active units per stochastic layer (Burda et al. 2015: Var_x E_q[z_j] > 0.01);
* seconds per epoch on this machine.

Pairs (``--models``): ``hierarchical`` (Burda et al. 2015, two stochastic layers), ``iaf`` (an
MLP VAE with an IAF guide, Kingma et al. 2016, without their ResNet), ``ladder`` (Sønderby et al.
2016, five layers, paper sizes, no batch norm), ``nvae`` (a small NVAE-style pair, after Vahdat &
Kautz 2020; ``--nvae-channels``, ``--nvae-groups``), and ``autoguide`` (the hierarchical model with
the amortized autoguide instead of its hand-written guide). The papers' numbers are printed beside
ours; theirs come from hundreds to thousands of GPU epochs, ours from the schedule in the table.

    python experiments/deep.py --out results/deep                                   # full: a GPU
    python experiments/deep.py --epochs 5 --num-eval 1000 --out results/deep_cpu   # this CPU, hours
    python experiments/deep.py --quick --out /tmp/deep                              # seconds, for the tests

Resumable: each pair trains into its own run folder under ``--runs-dir`` (default
``runs/<name of --out>``), checkpointed every ``--checkpoint-every`` steps and each epoch; its
evaluation is kept in ``<run folder>/evaluation.json``. Rerunning the same command reloads what
finished and continues the rest; ``--time-limit SECONDS`` stops cleanly.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae.cli.args import add_experiment_args
from pyro_vae.data import load_dataset

import _runs  # experiments/_runs.py

PAPERS = {  # -log p(x), k = 5000, dynamically binarized MNIST (DESIGN.md section 4)
    "hierarchical": ("Burda et al. 2015, VAE, 2 layers", 85.33),
    "iaf": ("Kingma et al. 2016, ResNet VAE + IAF", 79.10),
    "ladder": ("Sønderby et al. 2016, LVAE, 5 layers, warm-up, BN", 81.74),
    "nvae": ("Vahdat & Kautz 2020, NVAE", 78.01),
    "autoguide": ("(the hierarchical model's guide, built from the model)", None),
}
WARMED_UP = ("ladder", "nvae")


def build(name: str, args, example: torch.Tensor):
    """``(vae, model, guide)`` for pair ``name``, seeded by ``--seed`` alone."""
    pyro.set_rng_seed(args.seed)
    small = {"hidden_dim": 32, "latent_dim": 4} if args.quick else {}
    if name == "nvae":
        vae = pyro_vae.NVAE(784, hidden_dim=8 if args.quick else args.nvae_channels, latent_dim=2 if args.quick else 4,
                            groups=2 if args.quick else args.nvae_groups)
    elif name == "ladder":
        vae = pyro_vae.LadderVAE(784, **({"hidden_dim": 32, "latent_dim": 2, "stochastic_layers": 3} if args.quick
                                         else {}))
    elif name == "iaf":
        vae = pyro_vae.FlowVAE(784, **small)
    else:  # hierarchical, and the autoguide on its model
        vae = pyro_vae.HierarchicalVAE(784, **({"hidden_dim": 32, "latent_dim": 4} if args.quick else {}))
    vae = vae.to(args.device)
    if name == "autoguide":
        guide = pyro_vae.AutoAmortizedNormal(vae.model, example.to(args.device),
                                             hidden_dims=(32,) if args.quick else (500, 500))
        return vae, vae.model, guide
    return vae, vae.model, vae.guide


def run_one(name: str, data, folder: Path, args) -> dict:
    """Train (resume, or reload) pair ``name`` into ``folder``, then evaluate it once."""
    vae, model, guide = build(name, args, data.test[:2])
    steps_per_epoch = -(-len(data.train) // 100)
    warmup = args.warmup_epochs * steps_per_epoch if name in WARMED_UP else 0
    _runs.train_or_load(model, guide, data, folder, args.checkpoint_every, args.epochs, elbo="meanfield",
                        lr=args.lr, batch_size=100, seed=args.seed, progress=False, log_interval=10**9,
                        step=args.step, schedule=pyro_vae.KLSchedule(warmup_steps=warmup))
    history = _runs.history(folder)
    evaluation = folder / "evaluation.json"
    n = min(args.nvae_num_eval or args.num_eval if name == "nvae" else args.num_eval, len(data.test))
    wanted = {"epochs": len(history), "num_samples": args.num_samples, "num_eval": n}
    saved = json.loads(evaluation.read_text()) if evaluation.is_file() else None
    if saved is None or any(saved.get(k, v) != v for k, v in wanted.items()):  # none yet, or of other weights
        with torch.no_grad():
            chunk = 500 if name == "nvae" and args.num_samples % 500 == 0 else None  # conv maps: 10^4 at once
            estimate = pyro_vae.estimate_log_likelihood(model, guide, data.test[:n], args.num_samples,
                                                        args.eval_batch_size, particle_chunk_size=chunk,
                                                        seed=args.seed)
            units = pyro_vae.active_units(guide, data.test[:n])
            elbo, elbo_se = pyro_vae.evaluate_elbo(model, guide, data.test[:n], args.eval_batch_size)
        saved = {**wanted, "mean": estimate.mean, "se": estimate.stderr, "seconds": estimate.seconds,
                 "active_units": units, "elbo": elbo, "elbo_se": elbo_se}
        evaluation.write_text(json.dumps(saved))
    paper, value = PAPERS[name]
    return {"model": name, "parameters": sum(p.numel() for p in pyro.get_param_store().values()),
            "epochs": len(history), "seconds_per_epoch": sum(h["train_seconds"] for h in history) / len(history),
            "test_elbo": history[-1]["test_elbo"], "eval_elbo": saved["elbo"], "eval_elbo_se": saved["elbo_se"],
            "log_likelihood": saved["mean"], "log_likelihood_se": saved["se"],
            "num_samples": saved.get("num_samples", args.num_samples), "num_eval": saved["num_eval"],
            "eval_seconds": saved["seconds"],
            "active_units": saved["active_units"], "warmup_epochs": args.warmup_epochs if name in WARMED_UP else 0,
            "paper": paper, "paper_nll": value}


def markdown(report: dict) -> str:
    r0 = report["rows"][0]
    lines = [f"# Deep hierarchies on dynamically binarized MNIST ({report['machine']}, {report['device']})", "",
             f"Schedule: up to {max(r['epochs'] for r in report['rows'])} epochs (per row: as far as the time "
             f"allowed) of {report['num_train']} training images, Adam "
             f"{report['lr']:g}, batch 100, objective meanfield, seed {report['seed']}; KL warm-up over "
             f"{report['warmup_epochs']} epoch(s) for {', '.join(WARMED_UP)}. log p̂(x) with K = {r0['num_samples']} "
             "on the first n test images (n per row); active units: Var_x E_q[z_j] > 0.01 on those images. "
             "Nats per datapoint. The papers' numbers are on all 10000 test images after their full schedules "
             "(hundreds to thousands of epochs on GPUs).", "",
             "| model | parameters | epochs | s / epoch | test ELBO | n | log p̂(x) ± SE | active units per layer | "
             "paper -log p(x) |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in report["rows"]:
        units = ", ".join(f"{k} {v}" for k, v in r["active_units"].items())
        paper = f"{r['paper_nll']:.2f} ({r['paper']})" if r["paper_nll"] else r["paper"]
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['epochs']} | {r['seconds_per_epoch']:.0f} | {r['test_elbo']:.2f} | "
                     f"{r['num_eval']} | {r['log_likelihood']:.2f} ± {r['log_likelihood_se']:.2f} | {units} | {paper} |")
    lines += ["", "The full schedule on a GPU (each paper trains far longer; this is the command that resumes "
              "towards it):", "", "    python experiments/deep.py --epochs 1000 --warmup-epochs 200 --num-eval 10000 "
              "--nvae-channels 64 --nvae-groups 8 --device cuda --out results/deep_gpu"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(PAPERS), choices=list(PAPERS))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--warmup-epochs", type=int, default=1, help="KL warm-up for ladder and nvae")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-train", type=int, default=None, help="first N training images (default: all 60000)")
    p.add_argument("--num-samples", type=int, default=5000, help="K for log p̂(x)")
    p.add_argument("--num-eval", type=int, default=10000, help="test images for log p̂(x)")
    p.add_argument("--eval-batch-size", type=int, default=20, help="datapoints per chunk of the estimator")
    p.add_argument("--nvae-channels", type=int, default=16)
    p.add_argument("--nvae-groups", type=int, default=3)
    p.add_argument("--nvae-num-eval", type=int, default=None,
                   help="test images for the NVAE's log p̂(x) (default: --num-eval; its decoder is a conv net, "
                        "about 1 ms an image and sample on a 2-core CPU)")
    add_experiment_args(p, out="results/deep", quick="500 training images, 1 epoch, small nets, K=20 on 50 images")
    _runs.add_run_args(p, checkpoint_every=2000)
    args = p.parse_args(argv)
    if args.out.suffix == ".json":  # the test harness passes a file name: use its folder
        args.out = args.out.with_suffix("")
    data = load_dataset("mnist", args.data_dir, device=args.device)
    if args.quick:
        args.num_train, args.epochs, args.num_samples, args.num_eval, args.warmup_epochs = 500, 1, 20, 50, 1
    data = data.subset(num_train=args.num_train) if args.num_train else data
    runs, deadline = _runs.runs_dir_for(args), _runs.Deadline(args.time_limit)
    rows, stopped = [], None
    for name in args.models:
        if deadline.passed():
            stopped = f"time limit reached before {name}"
            break
        try:
            with deadline.guard():
                rows.append(run_one(name, data, runs / name, args))
        except (pyro_vae.TrainingInterrupted, _runs.DeadlineReached) as e:
            stopped = f"{name}: {e}"
            break
        r = rows[-1]
        print(f"{name:13s} log p̂(x) {r['log_likelihood']:8.2f} ± {r['log_likelihood_se']:.2f}  test ELBO "
              f"{r['test_elbo']:8.2f}  {r['seconds_per_epoch']:.0f} s/epoch  active {r['active_units']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "device": str(args.device),
              "torch": torch.__version__, "epochs": args.epochs, "num_train": len(data.train), "lr": args.lr,
              "seed": args.seed, "warmup_epochs": args.warmup_epochs, "quick": args.quick, "rows": rows,
              "stopped": stopped, "finished": [r["model"] for r in rows]}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    if rows:
        (args.out / "summary.md").write_text(markdown(report))
        print(f"wrote {args.out / 'report.json'} and {args.out / 'summary.md'}")
    if stopped:
        print(f"stopped ({stopped}); rerun the same command to continue from the checkpoints", flush=True)


if __name__ == "__main__":
    main()
