"""Latent-space tools on a VAE trained on real MNIST."""

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


def test_noise_is_more_anomalous_than_digits(trained_mnist_vae):
    state, data = trained_mnist_vae
    vae = make_vae(state)
    noise = torch.bernoulli(torch.full((50, 784), 0.3))
    x = torch.cat([data.test[:50], noise])
    nll = anomaly_scores(vae.model, vae.guide, x, num_samples=50)
    neg_elbo = anomaly_scores(vae.model, vae.guide, x, method="elbo", num_samples=50)
    assert (neg_elbo >= nll - 1e-9).all()  # -mean log w >= -log mean w, same draws
    assert nll[50:].min() > nll[:50].max()  # every noise image scores above every digit


def test_manifold_and_pictures(mnist, tmp_path):
    vae = build_model("mlp", 784, latent_dim=2, hidden_dim=50)
    images = latent_manifold(vae.model, vae.guide, mnist.test[:1], n=6)
    assert images.shape == (36, 784)
    paths = latent_pictures(vae.model, vae.guide, mnist.test[:40], (28, 28), tmp_path, num_samples=5)
    for path in paths.values():
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
