"""One command for the papers' full-scale runs: AEVB Figure 2 on MNIST to 1e8 samples, the estimator
comparison at its full budget, and Burda et al.'s Table 1 at the ``full`` schedule (all cells).

Before it starts, it times a few real training steps of every kind the plan needs (each model,
objective and k, through ``pyro_vae.train`` with the plan's settings, on the current device),
the per-epoch test ELBO and the k = 5000 log-likelihood evaluation, and prints the plan with an
estimate of the time of each part; the parts then run in order of estimated cost, each as its
own script (``aevb.py``, ``estimators.py``, ``burda_table1.py``) writing into
``<out>/<part>/`` with its run folders (checkpoints) under ``--runs-dir`` (default
``runs/reproduce``). Everything resumes: rerun the same command after a stop and finished runs
are reloaded, unfinished ones continue from their last checkpoint.

    python experiments/reproduce.py --dry-run                 # the plan and its time estimate, any device
    python experiments/reproduce.py --out results/reproduce   # everything (a GPU: days for Burda's schedule)
    python experiments/reproduce.py --parts aevb-mnist-1e8 estimators --time-limit 36000
    python experiments/reproduce.py --quick --out /tmp/rep    # a tiny real pass of every part, seconds

The estimate is (steps x measured seconds per step) + (epochs x measured test-ELBO seconds) + the
evaluations at the measured points x samples per second; it leaves out checkpoint writing,
pictures and start-up, and it assumes the device is as busy during the runs as during the
measurement. ``plan.json`` in ``--out`` records the measurements and the estimate.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import pyro_vae
from pyro_vae.cli.args import add_experiment_args
from pyro_vae.data import load_dataset
from pyro_vae.models import HierarchicalVAE

import _runs  # experiments/_runs.py

HERE = Path(__file__).resolve().parent
MNIST_TRAIN, MNIST_TEST = 60000, 10000

# What each part runs at full scale (the scripts' defaults, spelled out).
AEVB_DIMS = [3, 5, 10, 20, 200, 2]  # Figure 2's panels, then Figure 4's manifold
AEVB_SAMPLES = 1e8
EST = {"seeds": 3, "epochs": 20, "num_samples": 5000, "num_eval": 10000,
       "objectives": {"trace": ("trace", 1), "meanfield": ("meanfield", 1), "iwae-5": ("iwae", 5),
                      "iwae-50": ("iwae", 50)}}
BURDA_EPOCHS = sum(3**i for i in range(8))  # 3280, the `full` schedule
BURDA_CELLS = [(layers, objective, k) for layers in (1, 2) for objective in ("VAE", "IWAE") for k in (1, 5, 50)]


def step_kinds() -> dict:
    """Every kind of training step the plan needs: name -> how to build and train it."""
    kinds = {"aevb-mnist": {"model": ("mlp", 20, 500), "elbo": "trace", "k": 1, "optimizer": "adagrad",
                            "lr": 0.02, "batch": 100}}
    for name, (elbo, k) in EST["objectives"].items():
        kinds[f"est-{name}"] = {"model": ("mlp", 20, 500), "elbo": elbo, "k": k, "optimizer": "adam", "lr": 1e-3,
                                "batch": 100}
    for layers in (1, 2):
        for k in (1, 5, 50):  # VAE and IWAE with the same k cost the same: k samples a point
            kinds[f"burda-L{layers}-k{k}"] = {"model": ("hierarchical", layers), "elbo": "iwae", "k": k,
                                              "optimizer": "adam", "lr": 1e-3, "batch": 20}
    return kinds


def build(spec):
    if spec[0] == "mlp":
        return pyro_vae.VAE(784, latent_dim=spec[1], hidden_dim=spec[2])
    return HierarchicalVAE(784, stochastic_layers=spec[1])


def time_steps(data, kind: dict, steps: int, args) -> float:
    """Seconds per SVI step: ``train`` on ``steps`` minibatches for two epochs with ``--step`` (the
    first one warms up: allocation, caches), the second one's ``train_seconds`` divided by ``steps``.
    These runs are short, so ``--step auto`` times eager steps, while the plan's long runs may
    compile theirs (``step="auto"``) and take less time than estimated."""
    vae = build(kind["model"]).to(args.device)
    subset = data.subset(num_train=kind["batch"] * steps, num_test=kind["batch"])
    result = pyro_vae.train(vae.model, vae.guide, subset, elbo=kind["elbo"], num_particles=kind["k"],
                            optimizer=kind["optimizer"], lr=kind["lr"], batch_size=kind["batch"], epochs=2,
                            seed=0, progress=False, log_interval=10**9, step=args.step)
    return result.history[-1]["train_seconds"] / steps


def time_eval(data, spec, points: int, samples: int, args) -> dict:
    """Test-ELBO seconds per datapoint and log-likelihood datapoints x samples per second."""
    vae = build(spec).to(args.device)
    x = data.test[:points]
    pyro_vae.evaluate_elbo(vae.model, vae.guide, x[:10])  # warm-up
    start = time.perf_counter()
    pyro_vae.evaluate_elbo(vae.model, vae.guide, x)
    elbo_per_point = (time.perf_counter() - start) / points
    estimate = pyro_vae.estimate_log_likelihood(vae.model, vae.guide, x, samples, min(points, 100), seed=0,
                                                diagnostics=False)
    return {"elbo_seconds_per_point": elbo_per_point,
            "loglik_point_samples_per_second": points * samples / estimate.seconds}


def measure(data, args) -> dict:
    steps = 3 if args.quick else args.measure_steps
    kinds = step_kinds()
    if args.quick:
        kinds = {name: kinds[name] for name in ("aevb-mnist", "est-trace", "burda-L1-k5")}
    out = {"seconds_per_step": {}, "eval": {}}
    for name, kind in kinds.items():
        out["seconds_per_step"][name] = time_steps(data, kind, steps, args)
        print(f"  measured {name}: {1000 * out['seconds_per_step'][name]:.2f} ms per step "
              f"(batch {kind['batch']}, k = {kind['k']})", flush=True)
    points, samples = (20, 50) if args.quick else (args.measure_eval_points, args.measure_eval_samples)
    for name, spec in {"mlp": ("mlp", 20, 500), "burda-L1": ("hierarchical", 1),
                       "burda-L2": ("hierarchical", 2)}.items():
        if args.quick and name == "burda-L2":
            continue
        out["eval"][name] = time_eval(data, spec, points, samples, args)
        e = out["eval"][name]
        print(f"  measured {name} evaluation: test ELBO {1e6 * e['elbo_seconds_per_point']:.1f} µs per point, "
              f"log p̂(x) {e['loglik_point_samples_per_second']:.0f} points x samples / s", flush=True)
    return out


def plan(m: dict, args) -> list[dict]:
    """The parts with their size and estimated seconds (from the measurements ``m``)."""
    step, ev = m["seconds_per_step"], m["eval"]
    get = lambda d, k, fallback: d.get(k, d[fallback])  # noqa: E731  (--quick measures fewer kinds)
    parts = []
    # AEVB, MNIST, 1e8 samples per N_z
    epochs = math.ceil(AEVB_SAMPLES / MNIST_TRAIN)
    n_steps = epochs * math.ceil(MNIST_TRAIN / 100)
    per_run = n_steps * step["aevb-mnist"] + epochs * MNIST_TEST * ev["mlp"]["elbo_seconds_per_point"]
    parts.append({"part": "aevb-mnist-1e8", "what": f"AEVB Figure 2 (and 4, 5), MNIST, N_z {AEVB_DIMS}, "
                  f"{AEVB_SAMPLES:.0e} samples each ({epochs} epochs, {n_steps} steps each), Adagrad, batch 100",
                  "runs": len(AEVB_DIMS), "steps": n_steps * len(AEVB_DIMS), "seconds": per_run * len(AEVB_DIMS)})
    # estimator comparison
    seconds, total_steps = 0.0, 0
    n_steps = EST["epochs"] * math.ceil(MNIST_TRAIN / 100)
    for name in EST["objectives"]:
        seconds += n_steps * get(step, f"est-{name}", "est-trace") + EST["epochs"] * MNIST_TEST * ev["mlp"][
            "elbo_seconds_per_point"]
        seconds += EST["num_eval"] * EST["num_samples"] / ev["mlp"]["loglik_point_samples_per_second"]
        total_steps += n_steps
    parts.append({"part": "estimators", "what": f"Trace_ELBO, TraceMeanField_ELBO, IWAE k = 5, 50; "
                  f"{EST['seeds']} seeds x {EST['epochs']} epochs, full MNIST, Adam, batch 100; log p̂(x) at "
                  f"K = {EST['num_samples']} on {EST['num_eval']} test points",
                  "runs": EST["seeds"] * len(EST["objectives"]), "steps": total_steps * EST["seeds"],
                  "seconds": seconds * EST["seeds"]})
    # Burda Table 1, full schedule
    seconds, total_steps = 0.0, 0
    n_steps = BURDA_EPOCHS * math.ceil(MNIST_TRAIN / 20)
    for layers, objective, k in BURDA_CELLS:
        e = get(ev, f"burda-L{layers}", "burda-L1")
        seconds += n_steps * get(step, f"burda-L{layers}-k{k}", "burda-L1-k5")
        seconds += BURDA_EPOCHS * MNIST_TEST * e["elbo_seconds_per_point"]
        seconds += MNIST_TEST * 5000 / e["loglik_point_samples_per_second"]
        total_steps += n_steps
    parts.append({"part": "burda-full", "what": f"Burda et al. Table 1, all {len(BURDA_CELLS)} cells, schedule "
                  f"`full` ({BURDA_EPOCHS} epochs, {n_steps} steps each), batch 20; -log p̂(x) at k = 5000 on "
                  f"{MNIST_TEST} test points", "runs": len(BURDA_CELLS), "steps": total_steps, "seconds": seconds})
    return sorted(parts, key=lambda p: p["seconds"])


def command(part: str, args, out: Path, runs: Path) -> list[str]:
    """The script and arguments that run ``part`` (its full settings; ``--quick``: a tiny real pass)."""
    common = ["--device", str(args.device), "--out", str(out), "--runs-dir", str(runs)]
    if args.data_dir:
        common += ["--data-dir", str(args.data_dir)]
    if args.step != "auto":
        common += ["--step", args.step]
    if part == "aevb-mnist-1e8":
        cmd = ["aevb.py", "--datasets", "mnist"]
        cmd += ["--quick"] if args.quick else ["--mnist-samples", str(AEVB_SAMPLES), "--latent-dims",
                                               *map(str, AEVB_DIMS[:-1])]
    elif part == "estimators":
        cmd = ["estimators.py"] + (["--quick", "--seeds", "0"] if args.quick else [
            "--seeds", *map(str, range(EST["seeds"])), "--epochs", str(EST["epochs"]),
            "--num-samples", str(EST["num_samples"]), "--num-eval", str(EST["num_eval"])])
    else:
        cmd = ["burda_table1.py"] + (["--quick", "--layers", "1", "--objectives", "IWAE"] if args.quick else ["--schedule", "full"])
    return [sys.executable, str(HERE / cmd[0]), *cmd[1:], *common]


def fmt(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="measure, print the plan and its estimate, run nothing")
    p.add_argument("--parts", nargs="+", default=None, choices=["aevb-mnist-1e8", "estimators", "burda-full"],
                   help="run only these parts (default: all, in order of estimated cost)")
    p.add_argument("--measure-steps", type=int, default=10, help="timed SVI steps per kind of step")
    p.add_argument("--measure-eval-points", type=int, default=100)
    p.add_argument("--measure-eval-samples", type=int, default=200)
    p.add_argument("--runs-dir", type=Path, default=None, help="run folders (default: runs/reproduce, git-ignored)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly after this many seconds (each part checkpoints); rerun to continue")
    add_experiment_args(p, out="results/reproduce", quick="a tiny real pass of every part (seconds)", seed=False)
    args = p.parse_args(argv)
    if args.out.suffix == ".json":  # the test harness passes a file name: use its folder
        args.out = args.out.with_suffix("")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.runs_dir or (args.out / "runs" if args.quick else Path("runs") / "reproduce")
    deadline = _runs.Deadline(args.time_limit)
    started = time.perf_counter()

    threads = torch.get_num_threads()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    machine = f"{name}, {args.device}, {threads} CPU threads, torch {torch.__version__}"
    print(f"measuring on {machine} ...", flush=True)
    data = load_dataset("mnist", args.data_dir, device=args.device)
    measured = measure(data, args)
    parts = plan(measured, args)
    if args.parts:
        parts = [q for q in parts if q["part"] in args.parts]
    lines = [f"Plan on {machine} (measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"step {args.step}):", ""]
    total = 0.0
    for i, q in enumerate(parts, 1):
        total += q["seconds"]
        lines.append(f"{i}. {q['part']}: {q['what']}")
        lines.append(f"   {q['runs']} runs, {q['steps']:.3g} SVI steps, estimate {fmt(q['seconds'])}"
                     f" (cumulative {fmt(total)})")
    lines += ["", f"Total estimate: {fmt(total)} (steps x measured s/step + per-epoch test ELBO + k = 5000 "
              "evaluations; checkpoints, pictures and start-up left out)."]
    if args.quick:
        lines.append("--quick: each part runs its script's --quick pass instead (seconds).")
    print("\n".join(lines), flush=True)
    (args.out / "plan.json").write_text(json.dumps({"machine": machine, "step": args.step, "measured": measured,
                                                    "parts": parts, "total_seconds": total,
                                                    "dry_run": args.dry_run, "quick": args.quick}, indent=2))
    (args.out / "plan.md").write_text("\n".join(lines) + "\n")
    if args.dry_run:
        print(f"dry run: nothing trained ({time.perf_counter() - started:.0f} s); plan in {args.out}/plan.json")
        return

    status = []
    for q in parts:
        if deadline.passed():
            print(f"time limit reached before {q['part']}; rerun to continue", flush=True)
            raise SystemExit(143)
        cmd = command(q["part"], args, args.out / q["part"], runs / q["part"])
        if args.time_limit is not None:
            cmd += ["--time-limit", str(max(1, int(deadline.left())))]
        print(f"\n== {q['part']}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        status.append({"part": q["part"], "returncode": rc, "seconds": time.perf_counter() - start,
                       "estimate_seconds": q["seconds"], "command": cmd})
        (args.out / "status.json").write_text(json.dumps(status, indent=2))
        if rc == 143:
            print(f"{q['part']} stopped cleanly (time limit or SIGTERM); rerun the same command to continue")
            raise SystemExit(143)
        if rc != 0:
            raise SystemExit(f"{q['part']} failed with exit status {rc}")
    print(f"done: {', '.join(q['part'] for q in parts)} in {fmt(time.perf_counter() - started)}; results in {args.out}/")


if __name__ == "__main__":
    main()
