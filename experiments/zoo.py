"""The model zoo on one data set: every shipped pair trained and evaluated by the same code.

For each pair of ``pyro-vae models`` (default options), the same data, seed, optimizer and
schedule, each with its own ``default_elbo``: Trace_ELBO (TraceEnum_ELBO for the pair with an
enumerated class, ``m2``, trained unsupervised here; VQVAELoss for ``vq``; TraceBaseline_ELBO, the
score function with the pair's neural baseline, for ``bernoulli``; ``vaegan``: Trace_ELBO plus its
discriminator's terms, the discriminator trained as its own phase), Adam, batch 100; then the test
ELBO (one sample per datapoint; ``concrete``: the relaxed ELBO, a bound on the relaxed model's
log p_tau(x) at the initial temperature 1, as is its log p̂(x)) and log p̂(x) with K importance
samples on the first test points. Numbers in nats per datapoint. The WAEs (:data:`NOT_BOUNDS`) are
left out by default: a point-mass encoder has no ELBO (``-inf``) to compare; ``family.py`` scores them.
Writes JSON (``--out``) and a markdown table beside it (same name, ``.md``).

    python experiments/zoo.py --epochs 3 --out results/zoo.json          # a CPU run (~15 min)
    python experiments/zoo.py --quick --out /tmp/zoo.json                 # seconds, for the tests
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import pyro
import torch

import pyro_vae
from pyro_vae.cli.args import add_experiment_args
from pyro_vae.data import load_dataset
from pyro_vae.models import MODELS, build_model, model_options
from pyro_vae.training.pair_phases import pair_phases

NOT_BOUNDS = ("wae", "wae-gan")
"""Pairs without an ELBO to report (a point-mass encoder over a continuous latent): not in the default list."""
ZOO = [name for name in MODELS if name not in NOT_BOUNDS]


def run_one(name: str, data, args) -> dict:
    options = {"image_shape": data.image_shape} if "image_shape" in model_options(name) else {}
    if args.quick:
        options.update({k: v for k, v in (("hidden_dim", 50), ("latent_dim", 5)) if k in model_options(name)})
    pyro.set_rng_seed(args.seed)  # the initial weights too: a run is repeatable
    vae = build_model(name, data.data_dim, **options).to(data.device)
    labels = (data.test_labels,) if vae.needs_labels else ()
    n = min(args.num_eval, len(data.test))
    # the same pair untrained (one-sample ELBO on the points of log p̂(x)): what training must beat
    untrained, untrained_se = pyro_vae.evaluate_elbo(vae.model, vae.guide, data.test[:n], 100, *(a[:n] for a in labels))
    elbo, _, phases = pair_phases(vae, vae.default_elbo)
    result = pyro_vae.train(vae.model, vae.guide, data, elbo=elbo, labels=vae.needs_labels, epochs=args.epochs,
                            batch_size=100, lr=1e-3, seed=args.seed, progress=not args.quick, phases=phases)
    try:
        estimate = pyro_vae.estimate_log_likelihood(vae.model, vae.guide, data.test[:n], args.num_samples, 100,
                                                    *(a[:n] for a in labels), seed=args.seed)
    except pyro_vae.ModelGuideError as e:  # a point-mass posterior (vq): no log p̂(x), its ELBO stands
        estimate, refusal = None, str(e).split(":")[0]
    return {
        "model": name,
        "description": MODELS[name].description,
        "elbo": " + ".join([vae.default_elbo, *(f"{phase.name} phase" for phase in phases)]),
        "options": {k: v for k, v in options.items() if k != "image_shape"},
        "parameters": sum(p.numel() for p in vae.parameters()),
        "epochs": args.epochs,
        "train_seconds": result.train_seconds,
        "test_elbo": result.final["test_elbo"],
        "test_elbo_se": result.final["test_elbo_se"],
        "untrained_elbo": untrained,
        "untrained_elbo_se": untrained_se,
        "log_likelihood": None if estimate is None else estimate.mean,
        "log_likelihood_se": None if estimate is None else estimate.stderr,
        "log_likelihood_refused": None if estimate is not None else refusal,
        "num_samples": args.num_samples,
        "num_eval": n,
        "khat_above_0.7": None if estimate is None else estimate.pareto_k_counts().get("k>0.7"),
    }


def markdown(report: dict) -> str:
    lines = [
        f"# Model zoo on {report['dataset']} ({report['device']}, {report['machine']})",
        "",
        "Each pair's default objective (trace: Trace_ELBO; m2: TraceEnum_ELBO, no labels; vq: VQVAELoss; "
        f"bernoulli: TraceBaseline_ELBO), Adam 1e-3, batch 100, {report['epochs']} epoch(s), seed {report['seed']}; "
        f"{report['num_train']} training points. Test ELBO on {report['num_test']} test points; log p̂(x) with "
        f"K = {report['num_samples']} on the first {report['rows'][0]['num_eval']} test points, and the untrained "
        "pair's one-sample ELBO on those points (same initial weights, seeded). Nats per datapoint.",
        "",
        "| model | elbo | parameters | train s | untrained ELBO | test ELBO ± SE | log p̂(x) ± SE "
        "| k̂ > 0.7 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        khat = "n/a (K < 100)" if r["khat_above_0.7"] is None else r["khat_above_0.7"]
        lines.append(f"| {r['model']} | {r.get('elbo', 'trace')} | {r['parameters']:,} | {r['train_seconds']:.0f} | "
                     f"{r['untrained_elbo']:.1f} | "
                     f"{r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f} | {_log_likelihood(r)} | "
                     f"{khat if r['log_likelihood'] is not None else 'n/a'} |")
    return "\n".join(lines) + "\n"


def _log_likelihood(row: dict) -> str:
    """log p̂(x) ± SE, or why the estimator refused the pair (a point-mass posterior: vq)."""
    if row["log_likelihood"] is None:
        return f"refused: {row['log_likelihood_refused']}"
    return f"{row['log_likelihood']:.2f} ± {row['log_likelihood_se']:.2f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "binarized-mnist"])
    p.add_argument("--models", nargs="+", default=ZOO, choices=list(MODELS))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--num-samples", type=int, default=1000, help="K for log p̂(x)")
    p.add_argument("--num-eval", type=int, default=1000, help="test points for log p̂(x)")
    add_experiment_args(p, out="results/zoo.json", quick="1000 training points, 1 epoch, small nets, K=20", step=False)
    args = p.parse_args(argv)
    data = load_dataset(args.dataset, args.data_dir, device=args.device)
    if args.quick:
        data = data.subset(num_train=1000, num_test=100)
        args.epochs, args.num_samples, args.num_eval = 1, 20, 50
    rows = []
    for name in args.models:
        start = time.perf_counter()
        rows.append(run_one(name, data, args))
        r = rows[-1]
        print(f"{name}: test ELBO {r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f}, log p̂(x) {_log_likelihood(r)} nats "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    report = {
        "dataset": args.dataset, "device": args.device, "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        "torch": torch.__version__, "epochs": args.epochs, "seed": args.seed, "num_train": len(data.train),
        "num_test": len(data.test), "num_samples": args.num_samples, "quick": args.quick, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
