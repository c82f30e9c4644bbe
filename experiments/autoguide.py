"""The amortized autoguide against hand-written guides: the same model, seed and budget, two guides.

For the shipped MLP VAE (Kingma & Welling 2013) and the two-stochastic-layer model of Burda et al.
(2015), train the model once with its hand-written guide and once with
:class:`pyro_vae.AutoAmortizedNormal` built from the model alone (trunk widths as the hand-written
encoder's first layers), with the same initial decoder weights, data order, objective (Trace_ELBO),
optimizer (Adam 1e-3) and epochs. Report the test ELBO (one sample per test point, all test points),
log p̂(x) with K importance samples on the first test points (and the paired difference autoguide -
hand-written on those points), guide parameters and seconds per epoch. Nats per datapoint.

The hand-written guide of the hierarchical model is bottom-up, q(z1 | x) q(z2 | z1); the autoguide
follows the model's order, q(z2 | x) q(z1 | x, z2) (top-down).

    nice python experiments/autoguide.py --device cpu --threads 1 --out experiments/results/autoguide/report.json
    python experiments/autoguide.py --quick --out /tmp/autoguide.json        # seconds, for the tests
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import pyro
import torch
from pyro import poutine

import pyro_vae
from pyro_vae.cli.args import add_experiment_args
from pyro_vae.data import load_dataset
from pyro_vae.importance import sample_sites

PAIRS = {  # name: (class, options, full-size options, autoguide trunk widths)
    "mlp": (pyro_vae.VAE, {"latent_dim": 5, "hidden_dim": 50}, {}, lambda o: (o.get("hidden_dim", 500),)),
    "hierarchical": (pyro_vae.HierarchicalVAE, {"latent_dim": 5, "hidden_dim": 20}, {"stochastic_layers": 2},
                     lambda o: (o.get("hidden_dim", 200),) * 2),
}


def build(name: str, data, args):
    """The pair's module (seeded, so the decoder's initial weights are the same for both guides) and
    the options it was built with."""
    cls, quick, full, _ = PAIRS[name]
    options = {**full, **(quick if args.quick else {})}
    pyro.set_rng_seed(args.seed)
    return cls(data.data_dim, **options).to(data.device), options


def guide_order(guide, x) -> list[str]:
    """The latent sites in the order the guide samples them."""
    return [name for name, _ in sample_sites(poutine.trace(guide).get_trace(x), observed=False)]


def run_one(name: str, which: str, data, args) -> dict:
    vae, options = build(name, data, args)
    decoder_init = float(sum(p.detach().double().sum() for p in vae.decoder.parameters()))
    if which == "autoguide":
        guide = pyro_vae.AutoAmortizedNormal(vae.model, data.test[:2], hidden_dims=PAIRS[name][3](options))
        guide_params = sum(p.numel() for p in guide.parameters())
    else:
        guide, guide_params = vae.guide, sum(p.numel() for p in vae.encoder.parameters())
    n = min(args.num_eval, len(data.test))
    untrained, untrained_se = pyro_vae.evaluate_elbo(vae.model, guide, data.test[:n], 100)
    result = pyro_vae.train(vae.model, guide, data, elbo="trace", epochs=args.epochs, batch_size=100, lr=1e-3,
                            seed=args.seed, progress=False)
    estimate = pyro_vae.estimate_log_likelihood(vae.model, guide, data.test[:n], args.num_samples, 100,
                                                bound_ks=(1,), seed=args.seed)
    epochs = [h["train_seconds"] for h in result.history]
    return {
        "model": name, "guide": which, "options": options, "decoder_init_sum": decoder_init,
        "guide_parameters": guide_params, "guide_order": guide_order(guide, data.test[:2]),
        "epochs": args.epochs, "seconds_per_epoch": statistics.median(epochs), "epoch_seconds": epochs,
        "test_elbo_curve": [h["test_elbo"] for h in result.history],
        "test_elbo": result.final["test_elbo"], "test_elbo_se": result.final["test_elbo_se"],
        "untrained_elbo": untrained, "untrained_elbo_se": untrained_se,
        "log_likelihood": estimate.mean, "log_likelihood_se": estimate.stderr, "elbo_same_points": estimate.bound(1)[0],
        "num_samples": args.num_samples, "num_eval": n, "per_datapoint": estimate.log_likelihood.tolist(),
        "khat_above_0.7": estimate.pareto_k_counts().get("k>0.7"),
    }


def paired(rows: list[dict]) -> list[dict]:
    """Per model: log p̂(x) of the autoguide minus the hand-written guide's, on the same test points."""
    out = []
    for name in PAIRS:
        by_guide = {r["guide"]: r for r in rows if r["model"] == name}
        hand, auto = by_guide["hand-written"], by_guide["autoguide"]
        a, b = (torch.tensor(r["per_datapoint"], dtype=torch.float64) for r in (auto, hand))
        diff = a - b
        out.append({"model": name, "difference": float(diff.mean()), "paired_se": float(diff.std() / len(diff) ** 0.5),
                    "num_eval": len(diff)})
    return out


def markdown(report: dict) -> str:
    lines = [
        f"# Amortized autoguide vs hand-written guides on {report['dataset']} "
        f"({report['device']}, {report['machine']})",
        "",
        f"Trace_ELBO, Adam 1e-3, batch 100, {report['epochs']} epoch(s), seed {report['seed']}, {report['num_train']} "
        f"training points; the same initial decoder weights and data order for both guides of a model. Test ELBO: one "
        f"sample per test point, all {report['num_test']} test points. log p̂(x): K = {report['num_samples']} on the "
        f"first {report['rows'][0]['num_eval']} test points. Nats per datapoint; s/epoch: median of the epochs' SVI "
        "time.",
        "",
        "| model | guide | guide params | sampling order | s/epoch | test ELBO ± SE | log p̂(x) ± SE | k̂ > 0.7 |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['guide']} | {r['guide_parameters']:,} | {' → '.join(r['guide_order'])} | "
                     f"{r['seconds_per_epoch']:.1f} | {r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f} | "
                     f"{r['log_likelihood']:.2f} ± {r['log_likelihood_se']:.2f} | "
                     f"{'n/a (K < 100)' if r['khat_above_0.7'] is None else r['khat_above_0.7']} |")
    lines += ["", "Paired difference of log p̂(x), autoguide − hand-written, same test points:", ""]
    lines += [f"- {p['model']}: {p['difference']:+.2f} ± {p['paired_se']:.2f} nats (paired SE, N = {p['num_eval']})"
              for p in report["paired"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "binarized-mnist"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--num-samples", type=int, default=1000, help="K for log p̂(x)")
    p.add_argument("--num-eval", type=int, default=1000, help="test points for log p̂(x)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    add_experiment_args(p, out="results/autoguide/report.json", quick="1000 training points, 1 epoch, small nets, K=20",
                        step=False)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_dir, device=args.device)
    if args.quick:
        data = data.subset(num_train=1000, num_test=100)
        args.epochs, args.num_samples, args.num_eval = 1, 20, 50
    rows = []
    for name in PAIRS:
        for which in ("hand-written", "autoguide"):
            start = time.perf_counter()
            rows.append(run_one(name, which, data, args))
            r = rows[-1]
            print(f"{name} / {which}: test ELBO {r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f}, log p̂(x) "
                  f"{r['log_likelihood']:.2f} ± {r['log_likelihood_se']:.2f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    report = {
        "dataset": args.dataset, "device": args.device, "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        "torch": torch.__version__, "pyro": pyro.__version__, "epochs": args.epochs, "seed": args.seed,
        "num_train": len(data.train), "num_test": len(data.test), "num_samples": args.num_samples, "quick": args.quick,
        "rows": rows, "paired": paired(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
