"""Smoke test of a fresh, non-editable install, as a new user would have it (no data files).

Run by .ci/run in a new venv of the newest Python on the machine (there arviz >= 1, so PSIS
comes from arviz_stats): a tiny MLP VAE on random binary data, a few SVI steps, then
estimate_log_likelihood with K = 200 >= 100 so that PSIS k-hat is computed; k-hat must be finite.
Then two known answers for k-hat on this arviz line: generalized Pareto weights with shape 0.5,
and identical weights (inf, as always). Exits non-zero on any failure.
"""

import importlib.metadata
import math
import platform
import sys
import time

import numpy as np
import pyro
import torch

import pyro_vae
from pyro_vae import VAE, estimate_log_likelihood
from pyro_vae.diagnostics import psis_backend, psislw


def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main():
    start = time.perf_counter()
    print(f"smoke: Python {platform.python_version()}, torch {torch.__version__}, pyro {pyro.__version__}, "
          f"arviz {version('arviz')}, arviz-stats {version('arviz-stats')}; PSIS via {psis_backend()}")
    print(f"smoke: pyro_vae from {pyro_vae.__file__}")

    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    x = (torch.rand(64, 16) < 0.3).float()
    vae = VAE(16, latent_dim=2, hidden_dim=16)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    losses = [svi.step(x) / len(x) for _ in range(50)]
    print(f"smoke: 50 SVI steps, loss {losses[0]:.2f} -> {losses[-1]:.2f} nats/point")
    assert all(math.isfinite(v) for v in losses), losses

    result = estimate_log_likelihood(vae.model, vae.guide, x, num_samples=200, batch_size=32, seed=0)
    print(result.format())
    khat = result.pareto_k
    assert khat is not None and khat.shape == (64,), khat
    assert torch.isfinite(khat).all(), khat
    assert torch.isfinite(result.log_likelihood).all()
    print(f"smoke: k-hat over 64 points: min {khat.min():.3f}, median {khat.median():.3f}, "
          f"max {khat.max():.3f}")

    w = np.random.default_rng(123).pareto(2.0, size=(16, 10000)) + 1.0  # Pareto(alpha = 2): shape 0.5
    _, k = psislw(np.log(w))
    print(f"smoke: Pareto(alpha=2) weights, k-hat mean {k.mean():.3f} (expect 0.5)")
    assert abs(k.mean() - 0.5) < 0.1, k

    _, k = psislw(np.zeros((2, 200)))
    assert np.all(k == np.inf), k  # identical weights: no tail to fit, inf as on arviz 0.x

    print(f"smoke: OK in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
