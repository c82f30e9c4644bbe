"""Evaluation throughput: pyro_vae.estimate_log_likelihood against hand-written PyTorch.

Both evaluate log p̂(x) = logmeanexp_k [log p(x, z_k) - log q(z_k | x)] for the same MLP VAE
(the same weights, the same test images, the same K and chunking) in the same process. The
hand-written evaluator is what a user would write without Pyro: encoder once per batch, one
reparameterized draw of all particles of a chunk, closed-form Normal log-densities,
``binary_cross_entropy_with_logits`` for the Bernoulli, a streaming logsumexp in float64.

Throughput is datapoints x samples per second (higher is better); the ratio is toolkit /
hand-written. Both estimates are also compared (they must agree within Monte Carlo error).

    python experiments/eval_throughput.py --out results/eval_throughput.json           # CPU (and CUDA)
    python experiments/eval_throughput.py --quick --out /tmp/tp.json                    # seconds, for tests
    python experiments/eval_throughput.py --device cuda --num-points 10000 --num-samples 5000
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
import torch.nn.functional as F

import pyro_vae
from pyro_vae.cli.args import add_experiment_args
from pyro_vae.data import load_dataset


@torch.no_grad()
def handwritten_log_likelihood(vae, data, num_samples, batch_size, chunk):
    """Per-datapoint log p̂(x) for the MLP VAE (Bernoulli decoder), plain PyTorch."""
    out = []
    log_2pi = math.log(2 * math.pi)
    for lo in range(0, data.shape[0], batch_size):
        x = data[lo : lo + batch_size]
        loc, scale = vae.encoder(x)
        m = s = None
        for done in range(0, num_samples, chunk):
            c = min(chunk, num_samples - done)
            eps = torch.randn((c,) + loc.shape, device=x.device, dtype=x.dtype)
            z = loc + scale * eps
            log_q = (-0.5 * eps**2 - scale.log() - 0.5 * log_2pi).sum(-1)
            log_prior = (-0.5 * z**2 - 0.5 * log_2pi).sum(-1)
            logits = vae.decoder(z)
            log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
            lw = (log_lik + log_prior - log_q).double()
            cm = lw.max(0).values
            new_m = cm if m is None else torch.maximum(m, cm)
            part = torch.exp(lw - new_m).sum(0)
            s = part if s is None else s * torch.exp(m - new_m) + part
            m = new_m
        out.append(torch.log(s) + m - math.log(num_samples))
    return torch.cat(out)


def _timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def measure(device, args):
    data = load_dataset("mnist", args.data_dir, device=device).test[: args.num_points]
    vae = pyro_vae.VAE(784, latent_dim=args.latent_dim, hidden_dim=args.hidden_dim).to(device)
    if args.run_dir:
        from pyro_vae.training import load_run

        vae, _, _ = load_run(args.run_dir, device, args.data_dir)
    chunk = args.particle_chunk_size or max(50, (65536 // args.batch_size) // 50 * 50)
    pairs = args.num_points * args.num_samples

    def ours(diagnostics, compiled=False):
        return lambda: estimate(vae, data, args, chunk, diagnostics, compiled)

    rows = {}
    warm = data[: min(args.batch_size, len(data))]
    handwritten_log_likelihood(vae, warm, min(args.num_samples, chunk), args.batch_size, chunk)  # warm-up
    for compiled in (False, True):  # the compiled warm-up fills inductor's cache for this graph
        pyro_vae.estimate_log_likelihood(vae.model, vae.guide, warm, min(args.num_samples, chunk), args.batch_size,
                                         particle_chunk_size=chunk, compiled=compiled)
    for name, fn in (
        ("handwritten_pytorch", lambda: handwritten_log_likelihood(vae, data, args.num_samples, args.batch_size, chunk)),
        ("pyro_vae", ours(False)),
        ("pyro_vae_compiled", ours(False, compiled=True)),
        ("pyro_vae_with_diagnostics", ours(True)),
    ):
        times, values = [], None
        for rep in range(args.repeats):
            torch.manual_seed(rep)
            values, seconds = _timed(fn, device)
            times.append(seconds)
        median = sorted(times)[len(times) // 2]
        values = values.cpu().double()
        rows[name] = {
            "seconds_median": median,
            "seconds_all": times,
            "throughput_pairs_per_s": pairs / median,
            "mean_log_likelihood": float(values.mean()),
            "stderr": float(values.std() / math.sqrt(len(values))) if len(values) > 1 else None,
        }
    setup = compile_setup_seconds(vae, data[: args.batch_size], min(args.num_samples, chunk), chunk, device)
    steady = rows["pyro_vae_compiled"]["seconds_median"] - setup
    if steady > 0.25 * rows["pyro_vae_compiled"]["seconds_median"]:  # else the set-up is the estimate: no figure
        rows["pyro_vae_compiled_setup_excluded"] = {
            "seconds_median": steady, "setup_seconds": setup, "throughput_pairs_per_s": pairs / steady,
            "derived": "pyro_vae_compiled's median minus the set-up (recording, check, compile) of one estimate"}
    hand = rows["handwritten_pytorch"]
    for name in rows:
        if name != "handwritten_pytorch":
            rows[name]["throughput_ratio_vs_handwritten"] = rows[name]["throughput_pairs_per_s"] / hand["throughput_pairs_per_s"]
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "num_points": args.num_points,
        "num_samples": args.num_samples,
        "batch_size": args.batch_size,
        "particle_chunk_size": chunk,
        "latent_dim": args.latent_dim,
        "hidden_dim": args.hidden_dim,
        "results": rows,
    }


def compile_setup_seconds(vae, x, particles: int, chunk: int, device) -> float:
    """Seconds a compiled estimate spends on set-up (recording, checking, compiling with inductor's
    cache warm): a compiled estimate of one minibatch x one chunk minus the eager one (medians of 3)."""
    def once(compiled):
        return _timed(lambda: pyro_vae.estimate_log_likelihood(
            vae.model, vae.guide, x, particles, x.shape[0], particle_chunk_size=chunk, diagnostics=False,
            bound_ks=(), compiled=compiled), device)[1]

    return max(0.0, sorted(once(True) for _ in range(3))[1] - sorted(once(False) for _ in range(3))[1])


def estimate(vae, data, args, chunk, diagnostics, compiled=False):
    """The toolkit's estimate, eager or with its chunk compiled (recording and compiling included:
    inductor's cache is warm after the warm-up)."""
    result = pyro_vae.estimate_log_likelihood(
        vae.model, vae.guide, data, args.num_samples, args.batch_size,
        particle_chunk_size=chunk, diagnostics=diagnostics, bound_ks=(1, 5, 50), compiled=compiled,
    )
    return result.log_likelihood


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", action="append", choices=["cpu", "cuda"],
                   help="repeatable (default: cpu, and cuda when available)")
    p.add_argument("--num-points", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--particle-chunk-size", type=int, default=None)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--hidden-dim", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--run-dir", default=None, help="use a trained run's weights (default: fresh weights)")
    add_experiment_args(p, out="results/eval_throughput.json", quick="tiny sizes, for the tests", device=False,
                        seed=False, step=False)
    args = p.parse_args(argv)
    if args.quick:
        args.num_points, args.num_samples, args.repeats, args.hidden_dim = 20, 100, 1, 100
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    report = {
        "what": "log-likelihood evaluation throughput, datapoints x samples per second; ratio = pyro_vae / handwritten",
        "torch": torch.__version__,
        "pyro": __import__("pyro").__version__,
        "measurements": [measure(torch.device(d), args) for d in devices],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for m in report["measurements"]:
        print(f"{m['device']} ({m['device_name']}): {m['num_points']} points x K={m['num_samples']}")
        for name, r in m["results"].items():
            ratio = r.get("throughput_ratio_vs_handwritten")
            value = f"  log p̂(x) {r['mean_log_likelihood']:.3f}" if "mean_log_likelihood" in r else \
                f"  (set-up {r['setup_seconds']:.2f} s excluded)"
            print(f"  {name:<33} {r['seconds_median']:8.2f} s  {r['throughput_pairs_per_s']:12.0f} pairs/s"
                  + value + (f"  ratio {ratio:.3f}" if ratio else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
