"""Speed of the toolkit against a hand-written PyTorch VAE of the same network, in one run.

Training: the step that :func:`pyro_vae.train` runs (``pyro_vae.training.svi_step``: capture the
params, Pyro's ELBO and its gradients, the finiteness check, the optimizer) against a
hand-written step (the same encoder/decoder modules and initial weights, reparameterized draws,
closed-form log-densities, ``torch.optim.Adam``), for Trace_ELBO, TraceMeanField_ELBO and IWAE
(k = 5), for two networks (``--setting``: ``small``, 784-64-8 at batch 32, where the per-step
overhead shows; ``paper``, the 784-500-20 MLP of the papers at batch 100; ``--batch-sizes`` for others), and for each
way of running the toolkit (all with Pyro's validation off, as in ``train()``'s step loop):

* ``eager``: ``train(step="eager")`` (the ELBO every step, the loss kept on the device, one
  fused Adam), what ``train()`` runs for runs shorter than ``AUTO_MIN_STEPS``;
* ``compiled``: ``train(step="compiled")``, what ``train()`` runs for long runs: the whole step
  recorded once and compiled by inductor (:mod:`pyro_vae.training.compiled`); its row records the
  set-up time (recording, compiling, checking) as ``setup_s``, and the table the break-even point
  against ``eager`` in steps (``--quick`` replays the recorded graph instead: ``compiled:replay``);
* ``pyro-svi``: plain Pyro, as its tutorials write it: ``SVI(model, guide, pyro.optim.Adam,
  Trace_ELBO())`` and ``svi.step(x)`` (``TraceMeanField_ELBO``; ``RenyiELBO(alpha=0)`` for IWAE);
* ``compile``: ``train(compile=True)`` / ``--compile`` (``torch.compile`` of the networks);
* ``pyro-optim``: eager with ``pyro.optim.Adam`` (one optimizer per parameter, as before);
* ``pyro-elbo``: eager with Pyro's own ``Trace_ELBO`` / ``TraceMeanField_ELBO``, which read every
  site's log-density with ``.item()`` (none for IWAE).

Two hand-written baselines run interleaved with each toolkit variant (repeat by repeat, so
drifts of a shared machine hit both alike): ``torch.optim.Adam`` with torch's default
implementation (what a user writes) and with ``fused=True`` (the implementation the toolkit
uses): the ratio against the latter is the framework's overhead. Full epochs: ``train()``
(its ``train_seconds``) against a hand-written epoch loop (fresh binarization, permutation,
minibatches, losses summed on the device and read once). Warm-up steps/epochs are excluded;
numbers are medians of the repeats. Evaluation: log p̂(x) throughput of
``estimate_log_likelihood`` against a hand-written evaluator (``eval_throughput.py``).

Output: JSON (``--out``) with, per device, batch size, objective and variant, milliseconds per
step of each and the ratios (toolkit / hand-written: lower is better, 1 is parity), and a
markdown table beside it (same name, ``.md``).

    python experiments/benchmark.py --device cpu --out experiments/results/benchmark_cpu.json
    python experiments/benchmark.py --device cuda --out experiments/results/benchmark_cuda.json
    python experiments/benchmark.py --quick --out /tmp/bench.json       # seconds, for the tests
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.optim
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_throughput  # noqa: E402  (the evaluation half of the benchmark)

import pyro_vae  # noqa: E402
from pyro_vae.cli.args import add_experiment_args  # noqa: E402
from pyro_vae.data import load_dataset  # noqa: E402
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO  # noqa: E402
from pyro_vae.objectives import get_elbo  # noqa: E402
from pyro_vae.optim import build_torch_optimizer, make_optimizer  # noqa: E402
from pyro_vae.training import ELBOLoss, svi_step  # noqa: E402  (exactly what train() runs)
from pyro_vae.training.compiled import CompiledSVIStep  # noqa: E402
from pyro_vae.training.speed import compile_targets, compiled_networks  # noqa: E402

OBJECTIVES = {"trace": 1, "meanfield": 1, "iwae": 5}  # name -> particles
VARIANTS = ("eager", "compiled", "compile", "pyro-optim", "pyro-elbo", "pyro-svi")
EPOCH_VARIANTS = ("eager", "compiled", "compile", "compiled:replay")
"""The ways of running ``train()`` that ``--epoch-variants`` times over full epochs."""
PYRO_CLASSES = {"pyro-elbo": {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO},  # Pyro has no IWAE of these
                "pyro-svi": {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO,
                             "iwae": lambda **kw: RenyiELBO(alpha=0.0, **kw)}}
SETTINGS = {"small": {"hidden_dim": 64, "latent_dim": 8, "batch_sizes": [32]},
            "paper": {"hidden_dim": 500, "latent_dim": 20, "batch_sizes": [100]}}
"""``--setting``: the network (784-hidden-latent MLP VAE) and its batch sizes."""
LOG_2PI = math.log(2 * math.pi)


def handwritten_loss(encoder, decoder, x, objective: str, k: int) -> torch.Tensor:
    """The negative bound summed over the batch, written without Pyro."""
    loc, scale = encoder(x)
    eps = torch.randn(((k,) if objective == "iwae" else ()) + loc.shape, device=x.device, dtype=x.dtype)
    z = loc + scale * eps
    logits = decoder(z)
    log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    if objective == "meanfield":
        kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(-1)
        return -(log_lik - kl).sum()
    log_q = (-0.5 * eps**2 - scale.log() - 0.5 * LOG_2PI).sum(-1)
    log_p = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
    w = log_lik + log_p - log_q
    if objective == "iwae":
        return -(torch.logsumexp(w, 0) - math.log(k)).sum()
    return -w.sum()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_ms(fns: dict, steps: int, repeats: int, device) -> dict:
    """Milliseconds per step of each ``fns[name](steps)``, the names taking turns repeat by repeat."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, run_steps in fns.items():
            _sync(device)
            start = time.perf_counter()
            run_steps(steps)
            _sync(device)
            times[name].append(1000 * (time.perf_counter() - start) / steps)
    return times


def _pairs(args, device):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE(784, latent_dim=args.latent_dim, hidden_dim=args.hidden_dim).to(device)
    encoder, decoder = copy.deepcopy(vae.encoder), copy.deepcopy(vae.decoder)
    return vae, encoder, decoder


def _adam(params, fused: bool):
    """``torch.optim.Adam``: torch's default implementation, or the fused kernel the toolkit uses."""
    if fused:
        return build_torch_optimizer(torch.optim.Adam, list(params), {"lr": 1e-3})
    return torch.optim.Adam(list(params), lr=1e-3)


def _toolkit_objective(variant: str, objective: str, k: int):
    if variant in PYRO_CLASSES:
        return PYRO_CLASSES[variant][objective](num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    return get_elbo(objective, k, max_plate_nesting=1)


def _toolkit_steps(variant: str, vae, elbo, loss_fn, optim, batches) -> tuple:
    """``(run(n), setup seconds)``: ``n`` steps of the variant, and what preparing it cost."""
    start = time.perf_counter()
    step = svi_step
    if variant.startswith("compiled"):  # as train(step="compiled") does before its first step
        step = CompiledSVIStep(loss_fn, optim, "replay" if variant.endswith("replay") else "inductor")
        with pyro.validation_enabled(False):
            step.record((batches[0],), (batches[1],))
        if step.reason is not None:
            raise RuntimeError(f"the compiled step fell back to eager: {step.reason}")
    elif variant == "pyro-svi":
        svi = pyro.infer.SVI(vae.model, vae.guide, optim, elbo)

        def run_svi(n):
            for i in range(n):
                svi.step(batches[i % len(batches)])
        return run_svi, time.perf_counter() - start

    def run(n):
        for i in range(n):
            step(loss_fn, optim, batches[i % len(batches)])
    return run, time.perf_counter() - start


def bench_steps(data, device, batch_size: int, objective: str, variant: str, args) -> dict:
    k = OBJECTIVES[objective]
    vae, encoder, decoder = _pairs(args, device)
    elbo = _toolkit_objective(variant, objective, k)
    loss_fn = ELBOLoss(vae, elbo, vae.model, vae.guide)
    pyro_adam = variant in ("pyro-optim", "pyro-svi")
    optim = pyro.optim.Adam({"lr": 1e-3}) if pyro_adam else make_optimizer("adam", 1e-3)
    batches = [torch.bernoulli(data[i * batch_size : (i + 1) * batch_size]) for i in range(len(data) // batch_size)]
    hand = {fused: (e, d, _adam(list(e.parameters()) + list(d.parameters()), fused))
            for fused, (e, d) in ((False, (encoder, decoder)), (True, copy.deepcopy((encoder, decoder))))}
    ours, setup_s = _toolkit_steps(variant, vae, elbo, loss_fn, optim, batches)

    def handwritten(fused):
        enc, dec, adam = hand[fused]

        def run(n):
            for i in range(n):
                adam.zero_grad(set_to_none=True)
                handwritten_loss(enc, dec, batches[i % len(batches)], objective, k).backward()
                adam.step()
        return run

    row = {"batch_size": batch_size, "objective": objective, "num_particles": k, "variant": variant,
           "setup_s": setup_s}
    fns = {"toolkit": ours, "handwritten": handwritten(False), "handwritten_fused": handwritten(True)}
    with contextlib.ExitStack() as stack:
        stack.enter_context(pyro.validation_enabled(False))  # as in train()'s step loop
        if variant == "compile":
            stack.enter_context(compiled_networks(compile_targets(vae, vae.model, vae.guide, batches[0][:2]), True))
        with torch.no_grad():  # both compute the same bound: mean over 20 draws at the initial weights, nats/datapoint
            x = batches[0]
            loss = (lambda: elbo.loss(vae.model, vae.guide, x)) if variant == "pyro-svi" else (lambda: float(loss_fn(x)))
            row["toolkit_loss_per_point"] = statistics.mean(loss() for _ in range(20)) / len(x)
            row["handwritten_loss_per_point"] = statistics.mean(
                float(handwritten_loss(encoder, decoder, x, objective, k)) for _ in range(20)) / len(x)
        for name, fn in fns.items():
            fn(args.warmup_steps)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                fn(2)
                row[f"{name}_peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        times = _interleaved_ms(fns, args.steps, args.repeats, device)
    for name in fns:
        row[f"{name}_ms_per_step"], row[f"{name}_ms_all"] = statistics.median(times[name]), times[name]
    row["ratio"] = row["toolkit_ms_per_step"] / row["handwritten_fused_ms_per_step"]
    row["ratio_vs_default_adam"] = row["toolkit_ms_per_step"] / row["handwritten_ms_per_step"]
    return row


def bench_epoch(train_data, device, batch_size: int, objective: str, variant: str, args) -> dict:
    k = OBJECTIVES[objective]
    n = train_data.shape[0]
    dataset = pyro_vae.Dataset("mnist", train_data, None, (28, 28), "bernoulli", binarize=True)

    def ours():
        vae, _, _ = _pairs(args, device)
        result = pyro_vae.train(vae.model, vae.guide, dataset, elbo=objective, num_particles=k, batch_size=batch_size,
                                epochs=1, progress=False, compile=variant == "compile",
                                step=variant if variant.startswith("compiled") else "eager")
        return result.train_seconds

    def handwritten(fused):
        def run():
            _, encoder, decoder = _pairs(args, device)
            adam = _adam(list(encoder.parameters()) + list(decoder.parameters()), fused)
            _sync(device)
            start = time.perf_counter()
            x_epoch = torch.bernoulli(train_data)
            perm = torch.randperm(n, device=device)
            total = torch.zeros((), device=device)
            for b in range(math.ceil(n / batch_size)):
                adam.zero_grad(set_to_none=True)
                loss = handwritten_loss(encoder, decoder, x_epoch[perm[b * batch_size : (b + 1) * batch_size]], objective, k)
                loss.backward()
                adam.step()
                total = total + loss.detach()
            float(total)
            _sync(device)
            return time.perf_counter() - start
        return run

    row = {"batch_size": batch_size, "objective": objective, "num_particles": k, "variant": variant, "num_train": n}
    fns = {"toolkit": ours, "handwritten": handwritten(False), "handwritten_fused": handwritten(True)}
    for fn in fns.values():
        fn()  # warm-up epoch
    times = {name: [] for name in fns}
    for _ in range(args.epoch_repeats):
        for name, fn in fns.items():
            times[name].append(fn())
    for name in fns:
        row[f"{name}_epoch_s"], row[f"{name}_epoch_s_all"] = statistics.median(times[name]), times[name]
    # train_seconds counts the SVI steps only: the compiled variant's recording and compiling are not in it
    row["ratio"] = row["toolkit_epoch_s"] / row["handwritten_fused_epoch_s"]
    row["ratio_vs_default_adam"] = row["toolkit_epoch_s"] / row["handwritten_epoch_s"]
    return row


def measure(device: torch.device, args) -> dict:
    ds = load_dataset("mnist", args.data_dir, device=device, download=False)
    train_data = ds.train[: args.epoch_points] if args.epoch_points else ds.train
    steps, epochs = [], []
    for batch_size in args.batch_sizes:
        for objective in OBJECTIVES:
            for variant in args.variants:
                if objective not in PYRO_CLASSES.get(variant, OBJECTIVES):
                    continue  # Pyro has no IWAE class of these
                r = bench_steps(ds.train, device, batch_size, objective, variant, args)
                steps.append(r)
                print(f"{device} step  b{batch_size:<5d} {objective:<9} {variant:<10}: toolkit {r['toolkit_ms_per_step']:7.2f} ms, "
                      f"hand-written {r['handwritten_ms_per_step']:7.2f} (fused Adam {r['handwritten_fused_ms_per_step']:7.2f}) ms, "
                      f"ratio {r['ratio']:.3f} ({r['ratio_vs_default_adam']:.3f} vs default Adam)", flush=True)
            for variant in args.epoch_variants if args.epoch_repeats else ():
                r = bench_epoch(train_data, device, batch_size, objective, variant, args)
                epochs.append(r)
                print(f"{device} epoch b{batch_size:<5d} {objective:<9} {variant:<10}: toolkit {r['toolkit_epoch_s']:7.2f} s, "
                      f"hand-written {r['handwritten_epoch_s']:7.2f} (fused Adam {r['handwritten_fused_epoch_s']:7.2f}) s, "
                      f"ratio {r['ratio']:.3f} ({r['ratio_vs_default_adam']:.3f} vs default Adam)", flush=True)
    ev_args = argparse.Namespace(num_points=args.eval_points, num_samples=args.eval_samples, batch_size=100,
                                 particle_chunk_size=None, latent_dim=args.latent_dim, hidden_dim=args.hidden_dim,
                                 repeats=args.repeats, run_dir=None, data_dir=args.data_dir)
    evaluation = eval_throughput.measure(device, ev_args)
    ratios = {k: evaluation["results"][k]["throughput_ratio_vs_handwritten"] for k in ("pyro_vae", "pyro_vae_compiled")}
    print(f"{device} evaluation {args.eval_points} points x K={args.eval_samples}: throughput ratio "
          f"{ratios['pyro_vae']:.3f}, compiled chunk {ratios['pyro_vae_compiled']:.3f}", flush=True)
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "setting": args.setting, "latent_dim": args.latent_dim, "hidden_dim": args.hidden_dim,
        "steps": steps, "compiled_break_even": break_even(steps), "epochs": epochs, "evaluation": evaluation,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def with_setting(args, name: str) -> argparse.Namespace:
    """``args`` with the network and batch sizes of the setting ``name`` (:data:`SETTINGS`)."""
    setting = SETTINGS[name]
    return argparse.Namespace(**{**vars(args), "setting": name, "hidden_dim": setting["hidden_dim"],
                                 "latent_dim": setting["latent_dim"],
                                 "batch_sizes": args.batch_sizes or setting["batch_sizes"]})


def break_even(steps: list[dict]) -> list[str]:
    """For each compiled row, the steps after which its set-up is paid back by the faster steps
    against the eager row of the same batch size and objective (``None`` when it is not faster)."""
    eager = {(r["batch_size"], r["objective"]): r for r in steps if r["variant"] == "eager"}
    lines = []
    for r in steps:
        e = eager.get((r["batch_size"], r["objective"]))
        if r["variant"].startswith("compiled") and e is not None:
            saved_ms = e["toolkit_ms_per_step"] - r["toolkit_ms_per_step"]
            r["break_even_steps"] = math.ceil(1000 * r["setup_s"] / saved_ms) if saved_ms > 0 else None
            pays = (f"break-even after {r['break_even_steps']} steps" if r["break_even_steps"] is not None
                    else "no faster than eager, never pays")
            lines.append(f"b{r['batch_size']} {r['objective']} {r['variant']}: set-up {r['setup_s']:.1f} s, "
                         f"{saved_ms:.2f} ms saved a step, {pays}")
    return lines


def _without_setup(res: dict) -> str:
    """``, 0.95 without its 8.1 s of recording and compiling`` where the evaluation was long enough to tell."""
    row = res.get("pyro_vae_compiled_setup_excluded")
    return "" if row is None else (f" with its {row['setup_seconds']:.1f} s of recording and compiling, "
                                   f"{row['throughput_ratio_vs_handwritten']:.3f} without")


def markdown(report: dict) -> str:
    lines = [f"# Benchmark: pyro-vae vs hand-written PyTorch (torch {report['torch']}, pyro-ppl {report['pyro']})", "",
             "Ratio = toolkit / hand-written time (lower is better; 1 is parity), against the hand-written loop with the "
             "same Adam implementation as the toolkit (fused kernel); in brackets against torch's default Adam. "
             "Medians of interleaved repeats, warm-up excluded. MNIST MLP VAE.", ""]
    for m in report["measurements"]:
        lines += [f"## {m['device']} ({m['device_name']}, {m['threads']} threads), setting {m['setting']}: "
                  f"784-{m['hidden_dim']}-{m['latent_dim']}", "",
                  "| batch | objective | variant | toolkit ms/step | hand-written ms/step (fused Adam / default Adam) | ratio (vs default Adam) |",
                  "|---:|---|---|---:|---:|---:|"]
        lines += [f"| {r['batch_size']} | {r['objective']} | {r['variant']} | {r['toolkit_ms_per_step']:.2f} | "
                  f"{r['handwritten_fused_ms_per_step']:.2f} / {r['handwritten_ms_per_step']:.2f} | "
                  f"{r['ratio']:.3f} ({r['ratio_vs_default_adam']:.3f}) |" for r in m["steps"]]
        pyro_svi = {(r["batch_size"], r["objective"]): r["toolkit_ms_per_step"] for r in m["steps"]
                    if r["variant"] == "pyro-svi"}
        against = [f"b{r['batch_size']} {r['objective']} {r['variant']} {r['toolkit_ms_per_step'] / ms:.3f}"
                   for r in m["steps"] for key, ms in pyro_svi.items()
                   if (r["batch_size"], r["objective"]) == key and r["variant"] != "pyro-svi"]
        if against:
            lines += ["", "Step time / plain Pyro `SVI` step time (`Trace_ELBO`, `TraceMeanField_ELBO`, `RenyiELBO(alpha=0)` "
                      "for iwae): " + ", ".join(against) + "."]
        if m.get("compiled_break_even"):
            lines += ["", "Compiled step: " + "; ".join(m["compiled_break_even"]) + "."]
        if m["epochs"]:
            lines += ["", "| batch | objective | variant | training points | toolkit s/epoch | hand-written s/epoch (fused / default Adam) | ratio (vs default Adam) |",
                      "|---:|---|---|---:|---:|---:|---:|"]
            lines += [f"| {r['batch_size']} | {r['objective']} | {r['variant']} | {r['num_train']} | {r['toolkit_epoch_s']:.2f} | "
                      f"{r['handwritten_fused_epoch_s']:.2f} / {r['handwritten_epoch_s']:.2f} | "
                      f"{r['ratio']:.3f} ({r['ratio_vs_default_adam']:.3f}) |" for r in m["epochs"]]
        ev = m["evaluation"]
        res = ev["results"]
        lines += ["", f"Evaluation, {ev['num_points']} test points x K = {ev['num_samples']} (datapoints x samples / s): "
                  f"hand-written {res['handwritten_pytorch']['throughput_pairs_per_s']:.0f}, toolkit "
                  f"{res['pyro_vae']['throughput_pairs_per_s']:.0f} (ratio {res['pyro_vae']['throughput_ratio_vs_handwritten']:.3f}), "
                  f"compiled chunk {res['pyro_vae_compiled']['throughput_pairs_per_s']:.0f} "
                  f"(ratio {res['pyro_vae_compiled']['throughput_ratio_vs_handwritten']:.3f}{_without_setup(res)}); "
                  f"with ESS and k-hat {res['pyro_vae_with_diagnostics']['throughput_pairs_per_s']:.0f}.", ""]
        if "peak_memory_mib" in str(m["steps"]):
            lines += ["Peak GPU memory (MiB), toolkit / hand-written: " + ", ".join(
                f"b{r['batch_size']} {r['objective']} {r['variant']} {r['toolkit_peak_memory_mib']:.0f}/{r['handwritten_peak_memory_mib']:.0f}"
                for r in m["steps"]), ""]
        else:
            lines += [f"Peak resident memory of the benchmark process: {m['peak_rss_mib']:.0f} MiB.", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", action="append", choices=["cpu", "cuda"], help="repeatable (default: cpu, and cuda if available)")
    p.add_argument("--setting", action="append", choices=sorted(SETTINGS),
                   help="repeatable: the network and batch sizes (default: small and paper; see SETTINGS)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="instead of each setting's own")
    p.add_argument("--variants", nargs="+", choices=(*VARIANTS, "compiled:replay"), default=list(VARIANTS), help="ways of running the toolkit's step")
    p.add_argument("--epoch-variants", nargs="+", choices=EPOCH_VARIANTS, default=["eager", "compiled"],
                   help="ways of running train() timed over full epochs")
    p.add_argument("--steps", type=int, default=50, help="steps per timed repeat")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epoch-repeats", type=int, default=3, help="timed epochs per setting (0: no epoch timing)")
    p.add_argument("--epoch-points", type=int, default=None, help="training points per epoch (default: all 60000)")
    p.add_argument("--eval-points", type=int, default=1000)
    p.add_argument("--eval-samples", type=int, default=1000)
    add_experiment_args(p, out="results/benchmark.json", quick="tiny sizes, for the tests", device=False, seed=False,
                        step=False)
    args = p.parse_args(argv)
    if args.quick:  # the compiled variant replays its recorded graph here (no compiler: seconds, not a minute)
        args.setting, args.batch_sizes, args.steps, args.warmup_steps, args.repeats = ["small"], [100], 5, 2, 1
        args.variants = ["eager", "compiled:replay", "pyro-optim", "pyro-elbo", "pyro-svi"]
        args.epoch_variants = ["compiled:replay"]
        args.epoch_repeats, args.epoch_points, args.eval_points, args.eval_samples = 1, 1000, 20, 100
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    report = {"what": "ms per training step and s per epoch, toolkit vs hand-written PyTorch; evaluation throughput",
              "torch": torch.__version__, "pyro": pyro.__version__, "quick": args.quick,
              "measurements": [measure(torch.device(d), with_setting(args, name))
                               for d in devices for name in args.setting or ["small", "paper"]]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
