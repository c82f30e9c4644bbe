"""Discrete latents on MNIST: Concrete relaxation, straight-through, score function with and without a
baseline, and exact enumeration, at the same budget (issue 21, item 4).

Runs (``pyro_vae.models.discrete``; Adam, batch 100, the same epochs, data order and seed for all):

* ``concrete`` / ``concrete-st``: :class:`ConcreteVAE`, 20 categorical variables of 10 values (Jang et al.
  2017), relaxed (the relaxed ELBO, a bound on the relaxed model's log p_tau(x)) or straight-through (a
  bound on the discrete model's log p(x), biased gradient); the temperature annealed per epoch by
  :class:`TemperatureSchedule` (``tau = max(0.5, exp(-r t))``, ``r = --anneal-rate``, compressed from
  the paper's 1e-5 so that tau falls within the budget);
* the same two at 8 binary categoricals (``concrete-8x2``, ``concrete-st-8x2``): the discrete model of
  the Bernoulli runs (8 bits, uniform prior), so that all five 8-bit rows share log p(x);
* ``bernoulli-sf`` (Trace_ELBO: score function), ``bernoulli-baseline`` (TraceBaseline_ELBO with a neural
  baseline b(x), NVIL's), ``bernoulli-enum`` (TraceEnum_ELBO, the 256 states summed): :class:`BernoulliVAE`
  with 8 bits.

Measured after training: the test ELBO of the trained pair (its own bound, at the final temperature); the
ELBO of the discrete model with the same nets (``discrete_model``/``discrete_guide``); log p̂(x) of the
discrete model by importance sampling (K = ``--num-samples``, first ``--num-eval`` test points), exact
(all 256 states summed) for the 8-bit rows, and, for the relaxed runs, log p̂_tau(x) of the relaxed model;
the variance of the encoder's gradient of each run's training objective (``--draws`` draws on one
fixed minibatch of 100 training images, per parameter, then the mean over the encoder's parameters);
seconds per epoch (SVI steps only). A second table measures the three estimators of the Bernoulli pair at
the same weights (the baseline run's): their means must agree with the exact (enumerated) gradient.

Writes JSON (``--out``) and a markdown summary beside it (same name, ``.md``).

    OMP_NUM_THREADS=1 python experiments/discrete.py --out experiments/results/discrete/discrete.json   # 7 min, 2-core CPU
    python experiments/discrete.py --quick --out /tmp/discrete.json      # seconds, for the tests
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import pyro
import torch

import pyro_vae
from pyro_vae.cli.args import add_experiment_args
from pyro_vae.data import load_dataset
from pyro_vae.models.bernoulli import BernoulliVAE
from pyro_vae.models.concrete import ConcreteVAE, TemperatureSchedule
from pyro_vae.objectives import get_elbo
from pyro_vae.optim import make_optimizer

RUNS = ("concrete", "concrete-st", "concrete-8x2", "concrete-st-8x2", "bernoulli-sf", "bernoulli-baseline",
        "bernoulli-enum")
BOUNDS = {
    "concrete": "relaxed ELBO (bounds log p_tau(x) of the relaxed model)",
    "concrete-st": "straight-through ELBO (bounds the discrete log p(x))",
    "bernoulli": "discrete ELBO",
    "bernoulli-enum": "discrete ELBO, exact expectation",
}


def build(name: str, data_dim: int, hidden) -> torch.nn.Module:
    if name.startswith("concrete"):
        size = {"latent_dim": 8, "num_categories": 2} if name.endswith("8x2") else {}
        return ConcreteVAE(data_dim, hidden_dim=hidden, straight_through="-st" in name, **size)
    options = {"bernoulli-sf": {"baseline": "none"}, "bernoulli-baseline": {"baseline": "neural"},
               "bernoulli-enum": {"enumerate": True}}
    return BernoulliVAE(data_dim, latent_dim=8, hidden_dim=hidden, **options[name])


def objective(vae):
    """The run's training objective, with the settings of ``train`` (one particle, vectorized)."""
    return get_elbo(vae.default_elbo, max_plate_nesting=1)


def train_annealed(vae, data, args, schedule: TemperatureSchedule) -> list[dict]:
    """``args.epochs`` epochs, one ``train`` call each (the optimizer keeps its state), the temperature
    of a Concrete pair set from the schedule before each; returns the per-epoch metrics."""
    optim, steps, history = make_optimizer("adam", args.lr), 0, []
    per_epoch = math.ceil(len(data.train) / 100)
    elbo = vae.default_elbo
    for epoch in range(args.epochs):
        if isinstance(vae, ConcreteVAE):
            vae.set_temperature(schedule(steps))
        result = pyro_vae.train(vae.model, vae.guide, data, elbo=elbo, optimizer=optim, epochs=1, batch_size=100,
                                clear_params=epoch == 0, seed=args.seed if epoch == 0 else None, step="eager",
                                progress=False, eval_batch_size=500)
        tau = float(getattr(vae, "temperature", 0.0))
        history.append({**result.history[-1], "epoch": epoch + 1, "temperature": tau})
        steps += per_epoch
        print(f"  epoch {epoch + 1}: test ELBO {history[-1]['test_elbo']:.2f} ({history[-1]['train_seconds']:.1f} s)",
              flush=True)
    return history


def gradient_draws(vae, elbo, x: torch.Tensor, draws: int, seed: int) -> torch.Tensor:
    """``(draws, P)``: the encoder's gradient of ``elbo``'s loss on ``x`` (summed over the minibatch), each draw
    with fresh samples; the encoder's ``P`` scalar parameters flattened."""
    params = list(vae.encoder.parameters())
    pyro.clear_param_store()  # the pair registers its own tensors again (another pair's may be stored under its names)
    pyro.set_rng_seed(seed)
    out = []
    for _ in range(draws):
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        out.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(out)


def variance_summary(draws: torch.Tensor) -> dict:
    mean = draws.mean(0)
    return {"variance_mean": float(draws.var(0).mean()), "squared_mean_gradient": float((mean ** 2).mean())}


def evaluate(name: str, vae, data, args, x_grad: torch.Tensor) -> dict:
    x = data.test[: args.num_eval]
    row = {"bound": BOUNDS.get(name, BOUNDS.get(name.rsplit("-8x2")[0], BOUNDS["bernoulli"]))}
    row["test_elbo"], row["test_elbo_se"] = pyro_vae.evaluate_elbo(vae.model, vae.guide, data.test, 500)
    concrete = isinstance(vae, ConcreteVAE)
    model, guide = (vae.discrete_model, vae.discrete_guide) if concrete else (vae.model, vae.guide)
    row["discrete_elbo"], row["discrete_elbo_se"] = pyro_vae.evaluate_elbo(model, guide, data.test, 500)
    k = 1 if name == "bernoulli-enum" else args.num_samples  # enumerated: every weight is exact
    estimate = pyro_vae.estimate_log_likelihood(model, guide, x, k, 100, bound_ks=(1,), seed=args.seed)
    row.update(log_likelihood=estimate.mean, log_likelihood_se=estimate.stderr, num_samples=k, num_eval=len(x),
               elbo_same_points=estimate.bound(1)[0])
    exact = None
    if not concrete or vae.num_categories ** vae.latent_dim <= 2 ** 10:
        with torch.no_grad():
            exact = torch.cat([vae.exact_log_likelihood(x[i:i + 100]) for i in range(0, len(x), 100)]).double()
        row["exact_log_likelihood"] = float(exact.mean())
        row["exact_log_likelihood_se"] = float(exact.std() / math.sqrt(len(exact)))
        # p̂(x) is unbiased: its mean ratio to the exact p(x) is 1 within Monte Carlo error
        ratio = (estimate.log_likelihood - exact).exp()
        row["estimate_over_exact_ratio"] = float(ratio.mean())
        row["estimate_over_exact_ratio_se"] = float(ratio.std() / math.sqrt(len(ratio)))
    if concrete and not vae.straight_through:
        relaxed = pyro_vae.estimate_log_likelihood(vae.model, vae.guide, x, args.num_samples, 100, bound_ks=(1,),
                                                   seed=args.seed)
        row.update(relaxed_log_likelihood=relaxed.mean, relaxed_log_likelihood_se=relaxed.stderr)
    row["gradient"] = variance_summary(gradient_draws(vae, objective(vae), x_grad, args.draws, args.seed))
    return row


def same_weights(vae: BernoulliVAE, x: torch.Tensor, args) -> list[dict]:
    """The three estimators of the Bernoulli pair at the baseline run's weights, on one minibatch: the exact
    gradient by enumeration, and the variance and bias checks of the sampled ones: ``squared_error_ratio``,
    ``|mean - exact|^2 / (sum of the variances / R)``, about 1 when unbiased (0 for a perfect mean; a summed form,
    so that parameters with a rare large gradient and a tiny sample variance do not dominate it), and the
    projection ``<g, exact> / |exact|^2`` of the draws on the exact gradient, 1 in expectation."""
    enumerated = BernoulliVAE(vae.data_dim, latent_dim=vae.latent_dim, hidden_dim=args.hidden, enumerate=True)
    enumerated.load_state_dict(vae.state_dict(), strict=False)  # the same encoder, decoder and prior
    exact = gradient_draws(enumerated, get_elbo("enum", max_plate_nesting=1), x, 1, args.seed)[0]
    rows = [{"estimator": "enumeration (exact)", "variance_mean": 0.0,
             "squared_mean_gradient": float((exact ** 2).mean()), "squared_error_ratio": None, "projection": 1.0,
             "projection_se": 0.0}]
    for label, elbo in (("score function", get_elbo("trace", max_plate_nesting=1)),
                        ("score function + neural baseline", objective(vae))):
        draws = gradient_draws(vae, elbo, x, args.draws, args.seed)
        ratio = float(((draws.mean(0) - exact) ** 2).sum() / (draws.var(0).sum() / len(draws)))
        projection = draws @ exact / (exact @ exact)
        rows.append({"estimator": label, **variance_summary(draws), "squared_error_ratio": ratio,
                     "projection": float(projection.mean()),
                     "projection_se": float(projection.std() / math.sqrt(len(projection)))})
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# Discrete latents on MNIST ({report['device']}, {report['machine']})",
        "",
        f"{report['num_train']} training images (dynamically binarized), Adam {report['lr']}, batch 100, "
        f"{report['epochs']} epochs, seed {report['seed']}; Concrete temperature "
        f"max(0.5, exp(-{report['anneal_rate']:g} t)) "
        f"set per epoch. Test ELBO on {report['num_test']} test images; log p̂(x) of the discrete model on the first "
        f"{report['rows'][0]['num_eval']} (K = {report['num_samples']}; exact for the 8-bit models, all 256 states "
        f"summed); encoder gradient variance over {report['draws']} draws on one minibatch of 100. Nats per datapoint.",
        "",
        "| run | bound trained (test ELBO) | test ELBO ± SE | discrete ELBO ± SE | log p̂(x) ± SE | exact log p(x) "
        "| log p̂_τ(x), relaxed | encoder grad variance | s/epoch | final τ |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['run']} | stopped: {r['error'][:200]} |" + " |" * 8)
            continue
        exact = f"{r['exact_log_likelihood']:.2f}" if "exact_log_likelihood" in r else "n/a"
        relaxed = (f"{r['relaxed_log_likelihood']:.2f} ± {r['relaxed_log_likelihood_se']:.2f}"
                   if "relaxed_log_likelihood" in r else "")
        tau = f"{r['temperature']:.2f}" if r["temperature"] else ""
        lines.append(f"| {r['run']} | {r['bound']} | {r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f} | "
                     f"{r['discrete_elbo']:.2f} ± {r['discrete_elbo_se']:.2f} | {r['log_likelihood']:.2f} ± "
                     f"{r['log_likelihood_se']:.2f} | {exact} | {relaxed} | {r['gradient']['variance_mean']:.3g} | "
                     f"{r['seconds_per_epoch']:.1f} | {tau} |")
    lines += ["", "Encoder gradient of the Bernoulli pair's estimators at the same weights (the baseline run's), one "
              "minibatch: ratio = |mean − exact|² / (Σ variances / R), about 1 when unbiased; projection = "
              "⟨g, exact⟩ / |exact|², 1 in expectation:", "",
              "| estimator | gradient variance (mean over parameters) | mean squared gradient | ratio "
              "| projection ± SE |",
              "|---|---:|---:|---:|---:|"]
    for r in report["same_weights"]:
        ratio = "exact" if r["squared_error_ratio"] is None else f"{r['squared_error_ratio']:.2f}"
        lines.append(f"| {r['estimator']} | {r['variance_mean']:.3g} | {r['squared_mean_gradient']:.3g} | {ratio} | "
                     f"{r['projection']:.3f} ± {r['projection_se']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--num-train", type=int, default=None, help="training images (default: all)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 256], help="encoder widths (decoder reversed)")
    p.add_argument("--anneal-rate", type=float, default=5e-4, help="r of tau = max(0.5, exp(-r t))")
    p.add_argument("--num-samples", type=int, default=500, help="K for log p̂(x)")
    p.add_argument("--num-eval", type=int, default=500, help="test points for log p̂(x)")
    p.add_argument("--draws", type=int, default=32, help="gradient draws for the variance")
    add_experiment_args(p, out="results/discrete/discrete.json", quick="1000 training points, 2 epochs, small nets",
                        step=False)
    args = p.parse_args(argv)
    data = load_dataset("mnist", args.data_dir, device=args.device)
    if args.quick:
        data = data.subset(num_train=1000, num_test=100)
        args.epochs, args.hidden, args.num_samples, args.num_eval, args.draws = 2, [64], 50, 50, 64
        args.anneal_rate = 5e-3
    elif args.num_train:
        data = data.subset(num_train=args.num_train, num_test=len(data.test))
    schedule = TemperatureSchedule(initial=1.0, minimum=0.5, rate=args.anneal_rate, every=1)
    x_grad = torch.bernoulli(data.train[:100], generator=torch.Generator(data.device).manual_seed(args.seed))
    rows, same = [], None
    for name in args.runs:
        start = time.perf_counter()
        print(f"{name}:", flush=True)
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        vae = build(name, data.data_dim, args.hidden).to(data.device)
        untrained = pyro_vae.evaluate_elbo(vae.model, vae.guide, data.test, 500)  # what training must beat
        try:
            history = train_annealed(vae, data, args, schedule)
        except pyro_vae.NonFiniteLossError as e:  # e.g. relaxed densities at a low temperature: say so, go on
            rows.append({"run": name, "error": str(e)})
            print(f"  stopped: {e}", flush=True)
            continue
        row = {"run": name, "parameters": sum(p.numel() for p in vae.parameters()), "history": history,
               "untrained_elbo": untrained[0], "untrained_elbo_se": untrained[1],
               "seconds_per_epoch": sum(h["train_seconds"] for h in history) / len(history),
               "temperature": history[-1]["temperature"], **evaluate(name, vae, data, args, x_grad)}
        rows.append(row)
        if name == "bernoulli-baseline":
            same = same_weights(vae, x_grad, args)
        print(f"  test ELBO {row['test_elbo']:.2f}, discrete ELBO {row['discrete_elbo']:.2f}, log p̂(x) "
              f"{row['log_likelihood']:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)
    report = {
        "device": args.device, "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"thread(s)" + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        "torch": torch.__version__, "pyro": pyro.__version__, "epochs": args.epochs, "seed": args.seed, "lr": args.lr,
        "hidden": args.hidden, "anneal_rate": args.anneal_rate, "num_train": len(data.train),
        "num_test": len(data.test), "num_samples": args.num_samples, "draws": args.draws, "quick": args.quick,
        "rows": rows, "same_weights": same or [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
