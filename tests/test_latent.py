"""Latent-space tools on a VAE trained on real MNIST; pictures that leave matplotlib's backend alone."""

import math
import os
import subprocess
import sys

import pyro.distributions as dist
import pytest
import torch
from conftest import make_vae

from pyro_vae import anomaly_scores, decode, encode, interpolate, latent_manifold, traverse
from pyro_vae.latent import latent_pictures
from pyro_vae.models import build_model


def test_interpolation_ends_at_the_decoded_posterior_means(trained_mnist_vae):
    state, data = trained_mnist_vae
    vae = make_vae(state)
    x = data.test[:2]
    path = interpolate(vae.model, vae.guide, x[0], x[1], steps=7)
    assert path.shape == (7, 784)
    ends = decode(vae.model, encode(vae.guide, x), 784)
    torch.testing.assert_close(path[[0, -1]], ends)
    assert ((path >= 0) & (path <= 1)).all()


def test_traversal_changes_one_dimension_per_row(trained_mnist_vae):
    state, data = trained_mnist_vae
    vae = make_vae(state)
    images = traverse(vae.model, vae.guide, data.test[0], dims=[0, 3], values=[-2.0, 0.0, 2.0])
    assert images.shape == (2, 3, 784)
    z = encode(vae.guide, data.test[:1])[0]
    expected = z.clone()
    expected[3] = 2.0
    torch.testing.assert_close(images[1, 2], decode(vae.model, expected[None], 784)[0])


def _log_weights_by_hand(vae, x, draws: int, seed: int) -> torch.Tensor:
    """``(draws, N)`` log importance weights ``log p(x, z) - log q(z | x)``, ``z ~ q``, by hand (nats)."""
    with torch.no_grad():
        loc, scale = vae.encoder(x)
        z = loc + scale * torch.randn((draws,) + loc.shape, generator=torch.Generator().manual_seed(seed))
        log_w = (dist.Bernoulli(logits=vae.decoder(z)).to_event(1).log_prob(x)
                 + dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - dist.Normal(loc, scale).log_prob(z).sum(-1))
    return log_w.double()


def test_noise_is_more_anomalous_than_digits(trained_mnist_vae):
    """Both scores equal a hand computation from the encoder and decoder with 50 other draws per image:
    -log (1/50) sum w and -(1/50) sum log w are, per image, independent draws of the same quantity, so
    the differences have mean 0. Tolerance: 4 standard errors of their mean over the 100 images."""
    state, data = trained_mnist_vae
    vae = make_vae(state)
    noise = torch.bernoulli(torch.full((50, 784), 0.3))
    x = torch.cat([data.test[:50], noise])
    nll = anomaly_scores(vae.model, vae.guide, x, num_samples=50)
    neg_elbo = anomaly_scores(vae.model, vae.guide, x, method="elbo", num_samples=50)
    log_w = _log_weights_by_hand(vae, x, 50, seed=1)
    for score, by_hand in ((nll, -(torch.logsumexp(log_w, 0) - math.log(50))), (neg_elbo, -log_w.mean(0))):
        d = score - by_hand
        assert abs(d.mean()) < 4 * d.std() / math.sqrt(100), (d.mean().item(), d.std().item())
    assert nll[50:].min() > nll[:50].max()  # every noise image scores above every digit


def test_manifold_and_pictures(mnist, tmp_path):
    vae = build_model("mlp", 784, latent_dim=2, hidden_dim=50)
    images = latent_manifold(vae.model, vae.guide, mnist.test[:1], n=6)
    assert images.shape == (36, 784)
    paths = latent_pictures(vae.model, vae.guide, mnist.test[:40], (28, 28), tmp_path, num_samples=5)
    for path in paths.values():
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


_PICTURES_SCRIPT = """
import sys
import matplotlib
matplotlib.use("svg")  # a user's backend (a notebook's would be inline), set before pyro_vae is imported
import torch
import pyro_vae
from pyro_vae.plots import plot_elbo_curves, plot_log_likelihood_diagnostics, save_image_grid

out = sys.argv[1]
save_image_grid(torch.rand(4, 16), (4, 4), out + "/grid.png", title="grid")
result = pyro_vae.LogLikelihoodResult(torch.randn(6, dtype=torch.float64), 200,
                                      {1: torch.randn(6, dtype=torch.float64) - 1}, torch.rand(6) * 200,
                                      torch.rand(6, dtype=torch.float64))
plot_log_likelihood_diagnostics(result, torch.rand(6, 16), (4, 4), out + "/diagnostics.png")

class Run:
    curve = [{"samples_seen": 100 * i, "train_elbo": -200.0 + i} for i in range(1, 20)]
    history = [{"step": 10, "test_elbo": -190.0, "test_elbo_se": 1.0}]

plot_elbo_curves({"trace": Run()}, out + "/curves.png", batch_size=10)
import matplotlib.pyplot as plt
print(matplotlib.get_backend(), len(plt.get_fignums()))
"""


def test_pictures_leave_the_matplotlib_backend_alone(tmp_path):
    """Importing pyro_vae and writing pictures neither switches the user's backend nor leaves
    figures open in pyplot (in a fresh process: the backend is global)."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    run = subprocess.run([sys.executable, "-c", _PICTURES_SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["svg", "0"]
    for name in ("grid", "diagnostics", "curves"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name, site", [("concrete", "'z'"), ("bernoulli", "'z0'"), ("vq", "'codes'"), ("nvae", "'z1'")])
def test_latents_that_are_not_one_vector_per_datapoint_are_refused_naming_the_site(name, site):
    from pyro_vae.models import model_options

    vae = build_model(name, 784, **({"image_shape": (28, 28)} if "image_shape" in model_options(name) else {}))
    x = torch.bernoulli(torch.full((2, 784), 0.3))
    for call in (lambda: interpolate(vae.model, vae.guide, x[:1], x[1:]), lambda: traverse(vae.model, vae.guide, x[:1])):
        with pytest.raises(ValueError, match=f"one continuous vector per datapoint.*guide site {site}"):
            call()
