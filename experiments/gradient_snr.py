"""Gradient estimators at equal K: signal-to-noise ratio of encoder and decoder gradients, and the
bound after a fixed training budget (issue 20).

Estimators (:mod:`pyro_vae.objectives.gradients`): plain IWAE (Burda et al. 2015), IWAE with the
sticking-the-landing gradient (``iwae-stl``, Roeder et al. 2017), the doubly reparameterized
gradient (``dreg``, Tucker et al. 2018), and MIWAE, PIWAE and CIWAE (Rainforth et al. 2018). "K" is
the number of draws per datapoint in one gradient estimate, for every estimator: MIWAE and PIWAE
split them into ``M`` groups of ``K / M`` (``M`` the largest divisor of ``K`` not above
``sqrt(K)``: ``K = 64`` is Rainforth et al.'s (8, 8)); CIWAE mixes ELBO and IWAE_K with
``beta = 0.5``.

**1. Gradient SNR.** The MLP VAE (Kingma & Welling 2013 nets) is trained for ``--pretrain-epochs``
epochs of Trace_ELBO on MNIST (a neutral objective: none of the six), and every estimator is then
measured at those same weights. For each estimator and each ``K`` in ``--ks``: ``--draws`` (R)
independent gradient estimates of the loss on one fixed minibatch of ``--snr-batch`` training
images (binarized once), and per parameter

    SNR = |mean of the R estimates| / (standard deviation of the R estimates)

(Rainforth et al. 2018's definition). Summaries per net, encoder (guide) and decoder (model): the
mean over the net's scalar parameters, with the median beside it and the mean per parameter tensor
(layer) in ``report.json``; parameters whose R estimates are all equal (std 0: the encoder's
weights of pixels that are 0 in every image of the minibatch) are left out and counted. A parameter with no
signal at all still shows ``E|mean| / std ~ sqrt(2 / (pi R))`` (the *noise floor*, drawn in the
figure): SNRs near it are not resolved by R draws. Draw ``r`` of every cell at a given ``K`` is
seeded alike for all estimators (common random numbers): all six see the same ``z``, so the cells
are paired and some gradients must coincide exactly; the script checks them on the first
``--check-draws`` draws (``identities`` in the report):

* at every K, the decoder gradients of ``iwae``, ``iwae-stl``, ``dreg`` and ``piwae`` (all
  ``sum_k w~_k grad_theta log p(x, z_k)`` over the same K draws);
* at K = 1, the whole gradient of ``iwae``, ``miwae``, ``piwae``, ``ciwae`` and Trace_ELBO (the
  reparameterized ELBO gradient), and the encoder gradient of ``iwae-stl``, ``dreg`` and STL_ELBO.

**2. Bound after a fixed budget.** From the same initial weights (those the pre-training run started
from), with the same data order and seed, each estimator trains for ``--train-epochs`` epochs at
``K = --train-k`` (Adam, batch 100), then log p̂(x) is estimated with ``--eval-samples`` importance
samples on the first ``--num-eval`` test points (seeded alike for every run), with its standard
error and the paired difference against plain IWAE on the same points
(:meth:`pyro_vae.LogLikelihoodResult.compare`).

Writes ``report.json``, ``summary.md`` and ``snr.png`` (SNR against K, log-log, encoder and decoder
panels, one line per estimator) into ``--out`` (a folder; ``--out x.json`` writes the folder ``x``).
Nothing else: no checkpoints.

    python experiments/gradient_snr.py --out results/gradient_snr      # 22 min on a shared 2-core CPU
    python experiments/gradient_snr.py --quick --out /tmp/gsnr         # 10-30 s, for the tests
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import matplotlib.ticker
import numpy as np
import pyro
import torch
from matplotlib.figure import Figure

import pyro_vae
from pyro_vae.cli.args import add_experiment_args
from pyro_vae.importance import guess_max_plate_nesting
from pyro_vae.objectives import CIWAE_ELBO, IWAE_DReG, IWAE_ELBO, IWAE_STL, MIWAE_ELBO, PIWAE_ELBO, STL_ELBO
from pyro_vae.objectives import Trace_ELBO

ESTIMATORS = ("iwae", "iwae-stl", "dreg", "miwae", "piwae", "ciwae")
NETS = ("encoder", "decoder")
PAPER_SLOPES = {("iwae", "encoder"): -0.5, ("iwae", "decoder"): 0.5, ("dreg", "encoder"): 0.5}
"""The large-K rates of SNR in K, as powers (Rainforth et al. 2018 for IWAE, Tucker et al. 2018 for DReG)."""


# ---------------------------------------------------------------------------------------------
# The estimators at a given number of draws K per datapoint
# ---------------------------------------------------------------------------------------------

def groups_for(k: int) -> int:
    """``M`` for MIWAE and PIWAE with ``k`` draws in all: the largest divisor of ``k`` that is at
    most ``sqrt(k)`` (``k = 64``: 8 groups of 8, Rainforth et al.'s setting)."""
    return max(m for m in range(1, math.isqrt(k) + 1) if k % m == 0)


def make_objective(name: str, k: int, nesting: int):
    """The objective ``name`` with ``k`` draws per datapoint in all (MIWAE, PIWAE: ``M`` groups of
    ``k / M``). ``nesting`` is given so that no objective draws from the RNGs to guess it."""
    m = groups_for(k)
    if name == "iwae":
        return IWAE_ELBO(num_particles=k, max_plate_nesting=nesting)
    if name in ("miwae", "piwae"):
        cls = MIWAE_ELBO if name == "miwae" else PIWAE_ELBO
        return cls(groups=m, num_particles=k // m, max_plate_nesting=nesting)
    if name == "ciwae":
        return CIWAE_ELBO(beta=0.5, num_particles=k, max_plate_nesting=nesting)
    return {"iwae-stl": IWAE_STL, "dreg": IWAE_DReG}[name](num_particles=k, max_plate_nesting=nesting)


def label(name: str, k: int) -> str:
    """How tables name the estimator at ``k`` draws: ``miwae (M=8, K=8)``, ``ciwae (beta=0.5)``."""
    if name in ("miwae", "piwae"):
        m = groups_for(k)
        return f"{name} (M={m}, K={k // m})"
    return f"{name} (beta=0.5)" if name == "ciwae" else name


def draw_seed(seed: int, k: int, r: int) -> int:
    """The seed of draw ``r`` at ``k`` draws per datapoint: the same for every estimator (common
    random numbers), independent streams across ``(seed, k, r)``."""
    return int(np.random.SeedSequence([seed, k, r]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# Part 1: gradient draws and their SNR
# ---------------------------------------------------------------------------------------------

def net_parameters(vae) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """The named parameters of the guide's net (``encoder``) and of the model's (``decoder``)."""
    return {net: list(getattr(vae, net).named_parameters()) for net in NETS}


def gradient(vae, objective, x, seed: int) -> dict[str, torch.Tensor]:
    """One gradient estimate of the objective's loss (the negative bound summed over ``x``),
    flattened per net, with the RNGs seeded by ``seed``."""
    params = net_parameters(vae)
    flat = [p for net in NETS for _, p in params[net]]
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(vae.model, vae.guide, x)
    grads = torch.autograd.grad(loss, flat)
    out, i = {}, 0
    for net in NETS:
        n = len(params[net])
        out[net] = torch.cat([g.reshape(-1) for g in grads[i:i + n]]).detach()
        i += n
    out["bound"] = -float(loss.detach()) / x.shape[0]
    return out


class Moments:
    """Running mean and variance of a vector over draws (shifted sums in float64)."""

    def __init__(self):
        self.n, self.shift, self.s1, self.s2 = 0, None, None, None

    def add(self, v: torch.Tensor) -> None:
        v = v.double()
        if self.shift is None:
            self.shift, self.s1, self.s2 = v.clone(), torch.zeros_like(v), torch.zeros_like(v)
        d = v - self.shift
        self.s1 += d
        self.s2 += d * d
        self.n += 1

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s1 / self.n
        var = (self.s2 - self.n * mean * mean).clamp_min(0.0) / (self.n - 1)
        return self.shift + mean, var.sqrt()


def snr_summary(moments: Moments, names_sizes: list[tuple[str, int]]) -> dict:
    """Per-parameter SNR = |mean| / std, summarized: mean and median over the net's parameters
    with std > 0, and the mean per parameter tensor."""
    mean, std = moments.mean_std()
    keep = std > 0
    snr = torch.where(keep, mean.abs() / std.where(keep, torch.ones_like(std)), torch.nan)
    per_tensor, start = {}, 0
    for name, size in names_sizes:
        part = snr[start:start + size]
        per_tensor[name] = float(part[~part.isnan()].mean()) if (~part.isnan()).any() else None
        start += size
    good = snr[keep]
    return {"snr_mean": float(good.mean()), "snr_median": float(good.median()), "snr_per_tensor": per_tensor,
            "parameters": int(snr.numel()), "parameters_zero_std": int((~keep).sum()),
            "mean_abs_gradient": float(mean.abs().mean()), "mean_std_gradient": float(std.mean())}


def measure_snr(vae, x, ks, draws: int, seed: int, check_draws: int, nesting: int) -> tuple[list, list]:
    """The SNR cells (one per estimator and K) and the identity checks (see the module docstring)."""
    params = net_parameters(vae)
    sizes = {net: [(name, p.numel()) for name, p in params[net]] for net in NETS}
    cells, identities = [], []
    for k in ks:
        kept = {}  # the first check_draws gradients of each estimator at this K
        for name in ESTIMATORS:
            objective = make_objective(name, k, nesting)
            moments = {net: Moments() for net in NETS}
            bounds, start = [], time.perf_counter()
            for r in range(draws):
                g = gradient(vae, objective, x, draw_seed(seed, k, r))
                for net in NETS:
                    moments[net].add(g[net])
                bounds.append(g["bound"])
                if r < check_draws:
                    kept.setdefault(name, []).append(g)
            seconds = time.perf_counter() - start
            cell = {"estimator": name, "label": label(name, k), "k": k, "groups": groups_for(k) if name in (
                "miwae", "piwae") else 1, "draws": draws, "seconds": seconds,
                "bound_mean": statistics.mean(bounds), "bound_se": statistics.stdev(bounds) / math.sqrt(draws)}
            for net in NETS:
                cell[net] = snr_summary(moments[net], sizes[net])
            cells.append(cell)
            print(f"K={k:4d} {label(name, k):22s} encoder SNR {cell['encoder']['snr_mean']:.4f}  decoder SNR "
                  f"{cell['decoder']['snr_mean']:.4f}  bound {cell['bound_mean']:.2f}  ({seconds:.1f} s)", flush=True)
        if k == 1:  # the K = 1 references: Trace_ELBO and STL_ELBO on the same draws
            for name, objective in (("trace", Trace_ELBO(max_plate_nesting=nesting)),
                                    ("stl", STL_ELBO(num_particles=1, max_plate_nesting=nesting))):
                kept[name] = [gradient(vae, objective, x, draw_seed(seed, 1, r)) for r in range(check_draws)]
        identities += check_identities(kept, k)
    return cells, identities


def expected_equal(k: int) -> list[tuple[str, str, str]]:
    """``(a, b, net)``: gradients that must be equal on the same draws at ``k`` draws per datapoint."""
    pairs = [(a, "iwae", "decoder") for a in ("iwae-stl", "dreg", "piwae")]
    if k == 1:
        pairs += [(a, "iwae", net) for a in ("miwae", "piwae", "ciwae", "trace") for net in NETS]
        pairs += [(a, "iwae", "decoder") for a in ("miwae", "ciwae", "stl")]
        pairs += [(a, "stl", "encoder") for a in ("iwae-stl", "dreg")]
    return sorted(set(pairs))


def check_identities(kept: dict, k: int) -> list[dict]:
    """For each pair that must agree: the largest |a - b| over the kept draws and parameters,
    relative to the largest |b|; and, for contrast, how far the encoder gradients of DReG and IWAE
    are apart (they differ at every K: IWAE keeps the score part, and for K > 1 DReG weights the path
    part by w~^2 instead of w~)."""
    rows = []
    pairs = expected_equal(k) + [("dreg", "iwae", "encoder")]
    for a, b, net in pairs:
        diff = max(float((ga[net] - gb[net]).abs().max()) for ga, gb in zip(kept[a], kept[b]))
        scale = max(float(gb[net].abs().max()) for gb in kept[b])
        rows.append({"k": k, "a": a, "b": b, "net": net, "expected_equal": (a, b, net) != ("dreg", "iwae", "encoder"),
                     "max_abs_difference": diff, "max_abs_b": scale, "relative_difference": diff / scale})
    return rows


def fit_slopes(cells, ks) -> dict:
    """The least-squares slope of log SNR (mean over parameters) against log K over the K > 1 of
    the grid (all of them when fewer than two): the power of K at which each SNR grows."""
    use = [k for k in ks if k > 1] if sum(k > 1 for k in ks) >= 2 else list(ks)
    out = {}
    for name in ESTIMATORS:
        for net in NETS:
            pts = [(math.log(c["k"]), math.log(c[net]["snr_mean"])) for c in cells
                   if c["estimator"] == name and c["k"] in use]
            if len(pts) < 2:
                continue
            mx, my = statistics.mean(p[0] for p in pts), statistics.mean(p[1] for p in pts)
            out[f"{name}/{net}"] = (sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts))
    return {"ks": use, "slopes": out}


# ---------------------------------------------------------------------------------------------
# Part 2: the same budget for every estimator, then log p̂(x)
# ---------------------------------------------------------------------------------------------

def train_and_evaluate(name: str, data, initial: dict, x_eval, args, nesting: int):
    """Train a VAE from ``initial`` with estimator ``name`` at ``--train-k``, then estimate log p̂(x)
    on ``x_eval``; returns the row and the :class:`~pyro_vae.LogLikelihoodResult`."""
    vae = pyro_vae.VAE(784, args.latent_dim, args.hidden_dim).to(args.device)
    vae.load_state_dict(initial)
    objective = make_objective(name, args.train_k, nesting)
    result = pyro_vae.train(vae.model, vae.guide, data, elbo=objective, epochs=args.train_epochs, batch_size=100,
                            lr=args.lr, seed=args.seed, progress=False, log_interval=10**9, step=args.step)
    pyro.clear_param_store()  # the estimate registers this vae's nets afresh
    ks = tuple(sorted({1, args.train_k}))
    estimate = pyro_vae.estimate_log_likelihood(vae.model, vae.guide, x_eval, args.eval_samples, 100,
                                                bound_ks=tuple(k for k in ks if k < args.eval_samples),
                                                seed=args.seed)
    steps = result.history[-1]["step"]
    row = {"estimator": name, "label": label(name, args.train_k), "k": args.train_k, "epochs": args.train_epochs,
           "steps": steps, "train_seconds": result.train_seconds, "ms_per_step": 1000 * result.train_seconds / steps,
           "test_elbo_per_epoch": [h["test_elbo"] for h in result.history],
           "log_likelihood": estimate.mean, "log_likelihood_se": estimate.stderr,
           "iwae_bounds": {str(k): estimate.bound(k) for k in ks if k < args.eval_samples},
           "eval_seconds": estimate.seconds}
    print(f"{label(name, args.train_k):22s} log p̂(x) {estimate.mean:.2f} ± {estimate.stderr:.2f}  test ELBO "
          f"{row['test_elbo_per_epoch'][-1]:.2f}  ({result.train_seconds:.0f} s training, {row['ms_per_step']:.1f} "
          "ms/step)", flush=True)
    return row, estimate


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

def plot_snr(cells, ks, floor: float, path: Path, title: str) -> None:
    """SNR (mean over parameters) against K, log-log, one panel per net, one line per estimator; thin
    dashed lines: the papers' large-K rates, K^(-1/2) (IWAE's encoder) and K^(+1/2) (DReG's encoder,
    IWAE's decoder), drawn through those estimators' values at the smallest K."""
    fig = Figure(figsize=(10.5, 5.2))
    axes = fig.subplots(1, 2)
    markers = dict(zip(ESTIMATORS, "osD^vx"))
    first = {(c["estimator"], net): c[net]["snr_mean"] for c in cells if c["k"] == min(ks) for net in NETS}
    rates = {"encoder": (("iwae", -0.5), ("dreg", 0.5)), "decoder": (("iwae", 0.5),)}
    for ax, net in zip(axes, NETS):
        for i, name in enumerate(ESTIMATORS):
            mine = sorted((c for c in cells if c["estimator"] == name), key=lambda c: c["k"])
            ax.plot([c["k"] for c in mine], [c[net]["snr_mean"] for c in mine], marker=markers[name], ms=5,
                    color=f"C{i}", label=name, alpha=0.85, lw=1.5 if name in ("iwae", "dreg") else 1.0)
        for j, (name, power) in enumerate(rates[net]):  # the papers' rates, through the K = min(ks) point
            ax.plot(ks, [first[(name, net)] * (k / min(ks)) ** power for k in ks], ls="--", lw=0.8, color="0.45",
                    label="the papers' large-K rates, K^(-1/2) from iwae, K^(+1/2) from dreg (encoder) and iwae "
                    "(decoder)" if net == "encoder" and j == 0 else None)
        ax.axhline(floor, color="grey", ls=":", lw=1, label="noise floor sqrt(2/(pi R))" if net == "encoder" else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2, 3, 5)))
        for which in ("major", "minor"):
            getattr(ax.yaxis, f"set_{which}_formatter")(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("K, draws per datapoint")
        ax.set_ylabel("SNR, mean over parameters")
        ax.set_title(f"{net} ({'guide' if net == 'encoder' else 'model'}) gradient SNR", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.075))
    fig.text(0.5, 0.01, "One line where estimators coincide on the same draws. Encoder: miwae = piwae (PIWAE's "
             "encoder gradient is MIWAE's).\nDecoder: iwae = iwae-stl = dreg = piwae (IWAE_K's decoder gradient). "
             "At K = 1: iwae = miwae = piwae = ciwae, and iwae-stl = dreg.", ha="center", fontsize=7.5, color="0.3")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=110)


def markdown(report: dict) -> str:
    s, cells, ks = report["settings"], report["snr"]["cells"], report["snr"]["ks"]
    cell = {(c["estimator"], c["k"]): c for c in cells}
    lines = [
        f"# Gradient estimators: SNR and bound at equal K — {report['machine']}", "",
        f"MLP VAE (784-{s['hidden_dim']}-{s['latent_dim']}, tanh, Bernoulli pixels) on dynamically binarized MNIST; "
        f"seed {s['seed']}. Nats per datapoint.", "",
        "## 1. Gradient signal-to-noise ratio", "",
        f"At the weights after {s['pretrain_epochs']} epoch(s) of Trace_ELBO (Adam {s['lr']}, batch 100, "
        f"{report['pretrain']['num_train']} training images; test ELBO {report['pretrain']['test_elbo']:.2f}). "
        f"R = {s['draws']} gradient estimates per cell on one fixed minibatch of {s['snr_batch']} training images; "
        f"SNR = |mean| / std per parameter, **mean over the net's parameters** (median in `report.json`). "
        "Same draws for every estimator at a given K. "
        f"Noise floor sqrt(2/(pi R)) = {report['snr']['noise_floor']:.3f}. "
        "MIWAE/PIWAE: M groups of K/M draws (M the largest divisor of K up to sqrt K).", "",
    ]
    for net in NETS:
        lines += [f"{net.capitalize()} ({'guide' if net == 'encoder' else 'model'}) SNR:", "",
                  "| estimator | " + " | ".join(f"K = {k}" for k in ks) + " | slope in log K |",
                  "|---|" + "---:|" * (len(ks) + 1)]
        for name in ESTIMATORS:
            slope = report["snr"]["fit"]["slopes"].get(f"{name}/{net}")
            paper = PAPER_SLOPES.get((name, net))
            slope_txt = "" if slope is None else f"{slope:+.2f}" + (f" (paper {paper:+.1f})" if paper else "")
            lines.append(f"| {name} | " + " | ".join(f"{cell[(name, k)][net]['snr_mean']:.4f}" for k in ks)
                         + f" | {slope_txt} |")
        lines.append("")
    zero = {net: sorted({(c[net]["parameters_zero_std"], c[net]["parameters"]) for c in cells}) for net in NETS}
    lines += [f"Slopes: least squares of log SNR on log K over K in {report['snr']['fit']['ks']}. Left out of every "
              "summary: parameters whose R estimates are all equal (std 0, no signal and no noise; in the encoder the "
              "first-layer weights of pixels that are 0 in every image of the minibatch): " + "; ".join(
                  f"{net} " + ", ".join(f"{z} of {n}" for z, n in zero[net]) for net in NETS) + ".", "",
              "What the encoder's SNR is made of: mean over its parameters of |mean| (signal) and of std (noise) "
              "of the R estimates:", "",
              "| estimator | " + " | ".join(f"K = {k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for name in ESTIMATORS:
        lines.append(f"| {name} | " + " | ".join(f"{cell[(name, k)]['encoder']['mean_abs_gradient']:.3f} / "
                                               f"{cell[(name, k)]['encoder']['mean_std_gradient']:.3f}"
                                               for k in ks) + " |")
    lines += ["",
              "Bound of each cell's draws (mean over R of the objective's value, nats per datapoint): " + "; ".join(
                  f"K = {k}: " + ", ".join(f"{n} {cell[(n, k)]['bound_mean']:.2f}" for n in ESTIMATORS) for k in ks),
              ""]
    ident = report["snr"]["identities"]
    worst = max((r["relative_difference"] for r in ident if r["expected_equal"]), default=float("nan"))
    contrast = [r for r in ident if not r["expected_equal"]]
    lines += [f"Exact identities on the same draws (module docstring): {sum(r['expected_equal'] for r in ident)} pairs "
              f"checked, largest relative difference {worst:.1e}. For contrast, DReG's encoder gradient against "
              "IWAE's: " + ", ".join(f"K = {r['k']}: {r['relative_difference']:.2f}" for r in contrast) + ".", ""]
    t = report["training"]
    lines += [
        "## 2. Bound after a fixed budget", "",
        "Same initial weights (those the pre-training run started from), same data order, "
        f"K = {s['train_k']} draws per datapoint, "
        f"{t['steps']} steps ({s['train_epochs']} epoch(s) of {t['num_train']} images, batch 100, Adam {s['lr']}). "
        f"log p̂(x) with K = {s['eval_samples']} on the first {t['num_eval']} test points (same seed for every "
        "run); paired differences against plain IWAE on the same points.", "",
        f"| estimator | log p̂(x) ± SE | − iwae ± paired SE | IWAE_{s['train_k']} test bound | test ELBO "
        f"(k = 1, first {t['num_test']} test points) | train s | ms / step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    paired = {p["estimator"]: p for p in t["paired"]}
    for r in t["rows"]:
        p = paired.get(r["estimator"])
        diff = "—" if p is None else f"{p['difference']:+.3f} ± {p['paired_stderr']:.3f}"
        b = r["iwae_bounds"].get(str(s["train_k"]))
        lines.append(f"| {r['label']} | {r['log_likelihood']:.2f} ± {r['log_likelihood_se']:.2f} | {diff} | "
                     f"{'—' if b is None else f'{b[0]:.2f}'} | {r['test_elbo_per_epoch'][-1]:.2f} | "
                     f"{r['train_seconds']:.0f} | {r['ms_per_step']:.1f} |")
    lines += ["", "SE: over the test points; paired SE: of the per-point differences. Both leave out the spread "
              "between "
              "training runs: one run per estimator (one seed), so a difference is established for this run only. "
              "train s, ms / step: the SVI steps' wall-clock, on a machine that may be shared (not a speed "
              "comparison unless it was quiet).", "", f"Wall-clock of the whole script: {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden-dim", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-train", type=int, default=None, help="first N training images (default: all 60000)")
    p.add_argument("--pretrain-epochs", type=int, default=3, help="Trace_ELBO epochs before the SNR is measured")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16, 64], help="draws per datapoint, SNR grid")
    p.add_argument("--draws", type=int, default=200, help="R, gradient estimates per SNR cell")
    p.add_argument("--snr-batch", type=int, default=20, help="training images in the SNR minibatch")
    p.add_argument("--check-draws", type=int, default=2, help="draws on which the exact identities are checked")
    p.add_argument("--train-k", type=int, default=16, help="draws per datapoint for the fixed-budget training")
    p.add_argument("--train-epochs", type=int, default=1, help="the budget, in epochs of batch 100")
    p.add_argument("--eval-samples", type=int, default=5000, help="K of the final log p̂(x)")
    p.add_argument("--num-eval", type=int, default=200, help="test points of the final log p̂(x)")
    add_experiment_args(p, out="results/gradient_snr", quick="2000 training images, small net, K in {1, 4, 16}, "
                        "R = 20, 1 training epoch, K = 100 on 50 test points")
    args = p.parse_args(argv)
    args.ks = sorted(set(args.ks))
    if args.draws < 2 or min(args.ks) < 1 or not 0 < args.check_draws <= args.draws:
        p.error("--draws must be >= 2, every K >= 1, and 0 < --check-draws <= --draws")
    if args.out.suffix == ".json":
        args.out = args.out.with_suffix("")
    if args.quick:
        args.num_train, args.latent_dim, args.hidden_dim, args.pretrain_epochs = 2000, 5, 50, 1
        args.ks, args.draws, args.snr_batch, args.train_k, args.train_epochs = [1, 4, 16], 20, 10, 4, 1
        args.eval_samples, args.num_eval = 100, 50
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    num_test = 200 if args.quick else max(1000, args.num_eval)  # the per-epoch test ELBO's points
    data = pyro_vae.load_dataset("mnist", args.data_dir, device=args.device).subset(args.num_train, num_test)

    # Initial weights and the pre-training run whose end point the SNR is measured at
    pyro.set_rng_seed(args.seed)
    vae = pyro_vae.VAE(784, args.latent_dim, args.hidden_dim).to(args.device)
    initial = {k: v.clone() for k, v in vae.state_dict().items()}
    pre = pyro_vae.train(vae.model, vae.guide, data, elbo="trace", epochs=args.pretrain_epochs, batch_size=100,
                         lr=args.lr, seed=args.seed, progress=False, log_interval=10**9, step=args.step)
    print(f"pre-trained {args.pretrain_epochs} epoch(s) of Trace_ELBO: test ELBO {pre.final['test_elbo']:.2f}",
          flush=True)

    # Part 1: SNR at the pre-trained weights, on one fixed minibatch binarized once
    x = torch.bernoulli(data.train[:args.snr_batch], generator=torch.Generator(data.train.device).manual_seed(
        args.seed)) if data.binarize else data.train[:args.snr_batch]
    nesting = guess_max_plate_nesting(vae.model, vae.guide, x[:2])
    pyro.clear_param_store()
    cells, identities = measure_snr(vae, x, args.ks, args.draws, args.seed, args.check_draws, nesting)
    floor = math.sqrt(2.0 / (math.pi * args.draws))

    # Part 2: the same budget for every estimator from the same initial weights
    x_eval = data.test[:args.num_eval]
    rows, estimates = [], {}
    for name in ESTIMATORS:
        row, estimates[name] = train_and_evaluate(name, data, initial, x_eval, args, nesting)
        rows.append(row)
    paired = []
    for name in ESTIMATORS[1:]:
        c = estimates[name].compare(estimates["iwae"], names=(name, "iwae"))
        cb = estimates[name].compare(estimates["iwae"], k=args.train_k, names=(name, "iwae")) \
            if args.train_k < args.eval_samples else None
        paired.append({"estimator": name, "minus": "iwae", **c.as_dict(),
                       "iwae_k_bound": None if cb is None else cb.as_dict()})

    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.device}"
               + (f" ({torch.cuda.get_device_name()})" if str(args.device).startswith("cuda") else ""))
    report = {
        "machine": machine, "torch": torch.__version__, "pyro": pyro.__version__, "quick": args.quick,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pretrain": {"objective": "trace", "epochs": args.pretrain_epochs, "num_train": len(data.train),
                     "test_elbo": pre.final["test_elbo"], "test_elbo_se": pre.final["test_elbo_se"],
                     "num_test": len(data.test), "train_seconds": pre.train_seconds},
        "snr": {"ks": list(args.ks), "estimators": list(ESTIMATORS), "draws": args.draws, "batch": args.snr_batch,
                "summary": "mean over the net's scalar parameters of |mean| / std over R draws",
                "noise_floor": floor, "cells": cells, "identities": identities, "fit": fit_slopes(cells, args.ks)},
        "training": {"k": args.train_k, "epochs": args.train_epochs, "steps": rows[0]["steps"],
                     "num_train": len(data.train), "num_test": len(data.test), "num_eval": len(x_eval),
                     "eval_samples": args.eval_samples, "rows": rows, "paired": paired},
        "seconds": time.perf_counter() - start,
    }
    plot_snr(cells, args.ks, floor, args.out / "snr.png",
             f"MLP VAE 784-{args.hidden_dim}-{args.latent_dim} after {args.pretrain_epochs} epoch(s) of Trace_ELBO on "
             f"MNIST; R = {args.draws} gradient draws on {args.snr_batch} training images per point")
    summary = markdown(report)
    (args.out / "summary.md").write_text(summary)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(summary)
    print(f"wrote {args.out}/")


if __name__ == "__main__":
    main()
