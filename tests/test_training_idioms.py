"""Pyro idioms the trainer takes as they are written: a data plate with another name, and a model
whose observed site is not ``x`` (Pyro's conditional VAE example, ``examples/cvae``: observe the
bottom half of a digit given its top half). Pairs written here, the way Pyro users write them."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import ModelGuideError, estimate_log_likelihood, train
from pyro_vae.training import pictures
from pyro_vae.training.pictures import picture_shape

HALF = 14 * 28  # the top (bottom) half of a 28 x 28 digit, flattened


def mlp(n_in, n_out, hidden=64):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


def normal(out):
    loc, raw = out.chunk(2, -1)
    return dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)


class BatchPlatePair(nn.Module):
    """A VAE whose data plate is called "batch", as in many Pyro tutorials."""

    def __init__(self, latent=4):
        super().__init__()
        self.latent, self.enc, self.dec = latent, mlp(784, 2 * latent), mlp(latent, 784)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("batch", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("z", normal(self.enc(x)))


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "iwae"])
def test_train_takes_the_name_of_the_data_plate(mnist, tmp_path, elbo):
    data = mnist.subset(num_train=400, num_test=100)
    pair = BatchPlatePair()
    with pytest.raises(ModelGuideError, match="'data'"):  # the default name: refused before any step
        train(pair.model, pair.guide, data, elbo=elbo, out=tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()
    result = train(pair.model, pair.guide, data, elbo=elbo, num_particles=2, epochs=2, batch_size=50,
                   lr=3e-3, data_plate="batch", out=tmp_path / "run", progress=False)
    elbos = [h["test_elbo"] for h in result.history]
    assert all(math.isfinite(v) for v in elbos) and elbos[1] > elbos[0], elbos
    # the reported test ELBO is the one-sample ELBO of the trained pair on the test set
    again = estimate_log_likelihood(pair.model, pair.guide, data.test, 1, 100, bound_ks=(), data_plate="batch",
                                    diagnostics=False, seed=1)
    assert elbos[-1] == pytest.approx(again.mean, abs=5 * (again.stderr + result.final["test_elbo_se"]))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_plate"] == "batch"


class DigitCompletion(nn.Module):
    """Pyro's CVAE example: p(z | top) p(bottom | top, z) and q(z | top, bottom); the model observes
    the bottom half of the digit (site "y"), given its top half."""

    def __init__(self, latent=8):
        super().__init__()
        self.prior_net, self.generation_net = mlp(HALF, 2 * latent), mlp(latent + HALF, HALF)
        self.recognition_net = mlp(784, 2 * latent)

    def model(self, x):
        pyro.module("cvae", self)
        top, bottom = x[:, :HALF], x[:, HALF:]
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", normal(self.prior_net(top)))
            logits = self.generation_net(torch.cat([z, top.expand(*z.shape[:-1], HALF)], -1))
            pyro.sample("y", dist.Bernoulli(logits=logits).to_event(1), obs=bottom)

    def guide(self, x):
        pyro.module("cvae", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", normal(self.recognition_net(x)))


def test_pictures_show_what_the_model_observes(mnist, tmp_path, monkeypatch):
    """Before: RuntimeError (shape '[50, 784]' is invalid for input of size 19600) after training
    finished. Now: pictures of the observed bottom halves, 14 x 28."""
    drawn = {}

    def spy(images, image_shape, path, **kwargs):
        drawn[path.name] = (images.clone(), tuple(image_shape))
        return path

    monkeypatch.setattr(pictures, "save_image_grid", spy)
    data = mnist.subset(num_train=400, num_test=100)
    pair = DigitCompletion()
    result = train(pair.model, pair.guide, data, epochs=1, batch_size=50, out=tmp_path, progress=False)
    assert math.isfinite(result.final["test_elbo"]) and (tmp_path / "elbo.png").is_file()
    samples, shape = drawn["samples.png"]
    assert shape == (14, 28) and samples.shape == (50, HALF)
    pairs, shape = drawn["reconstructions.png"]
    assert shape == (14, 28) and pairs.shape == (60, HALF)
    assert torch.equal(pairs[0::2], data.test[:30, HALF:])  # left: the observed bottom halves
    assert ((pairs[1::2] > 0) & (pairs[1::2] < 1)).all()  # right: Bernoulli means


class TenPixels(nn.Module):
    """A model that observes only ten pixels: no picture can show them as images."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = mlp(784, 4), mlp(2, 10)

    def model(self, x):
        pyro.module("dec", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("y", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x[:, 400:410])

    def guide(self, x):
        pyro.module("enc", self.enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", normal(self.enc(x)))


def test_pictures_that_cannot_be_drawn_are_skipped_with_one_line(mnist, tmp_path, capsys):
    pair = TenPixels()
    train(pair.model, pair.guide, mnist.subset(num_train=200, num_test=50), epochs=1, out=tmp_path, progress=False)
    out = capsys.readouterr().out
    assert "samples.png and reconstructions.png skipped: the observed site 'y' holds 10 values" in out
    assert (tmp_path / "elbo.png").is_file() and (tmp_path / "checkpoint.pt").is_file()
    assert not (tmp_path / "samples.png").exists()


@pytest.mark.parametrize("values, expected", [(784, (28, 28)), (392, (14, 28)), (28, (1, 28)), (10, None)])
def test_picture_shape(values, expected):
    assert picture_shape(values, (28, 28)) == expected
