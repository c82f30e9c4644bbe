"""Named per-datapoint arguments: a data set carries ``y`` (and any other per-datapoint tensor) by
name, a pair declares by keyword what it takes (``def model(x, y=None)``), and the trainer slices
and passes them by name. Pairs written here as Pyro users write them."""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import train
from pyro_vae.data import Dataset
from pyro_vae.training import RunFolder


class LabelConditioned(nn.Module):
    """A conditional VAE (Sohn et al. 2015): p(z) p(x | z, y), q(z | x, y), labels ``y`` by keyword.
    It remembers the (x, y) minibatches the trainer gave it."""

    def __init__(self, latent=4, hidden=32):
        super().__init__()
        self.latent, self.seen = latent, []
        self.dec = nn.Sequential(nn.Linear(latent + 10, hidden), nn.Tanh(), nn.Linear(hidden, 784))
        self.enc = nn.Sequential(nn.Linear(784 + 10, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent))

    def model(self, x, y=None):
        pyro.module("dec", self.dec)
        self.seen.append((x, y))
        c = nn.functional.one_hot(y, 10).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent), 1.0).to_event(1))
            logits = self.dec(torch.cat([z, c.expand(*z.shape[:-1], 10)], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.module("enc", self.enc)
        c = nn.functional.one_hot(y, 10).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.enc(torch.cat([x, c], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def labelled(mnist, num_train=400, num_test=100):
    """Binary MNIST test images with their labels by name (fixed pixels, so rows can be matched)."""
    x, y = mnist.test[: num_train + num_test], mnist.test_labels[: num_train + num_test]
    return Dataset(name="labelled", train=x[:num_train], test=x[num_train:], image_shape=(28, 28),
                   likelihood="bernoulli", train_named={"y": y[:num_train]}, test_named={"y": y[num_train:]})


def test_named_labels_reach_the_pair_with_their_own_rows(mnist, tmp_path):
    data = labelled(mnist)
    label_of = {bytes(row.to(torch.uint8).numpy()): int(label) for row, label in
                zip(torch.cat([data.train, data.test]), torch.cat([data.train_named["y"], data.test_named["y"]]))}
    pair = LabelConditioned()
    result = train(pair.model, pair.guide, data, epochs=2, batch_size=50, lr=3e-3, out=tmp_path, progress=False)
    assert result.history[1]["test_elbo"] > result.history[0]["test_elbo"]
    shapes = {x.shape[0] for x, _ in pair.seen}
    assert {50, 100} <= shapes  # training steps and the test ELBO both passed y
    for x, y in pair.seen:
        assert y.shape == x.shape[:1]
        assert [label_of[bytes(row.to(torch.uint8).numpy())] for row in x] == y.tolist()
    assert json.loads((tmp_path / "config.json").read_text())["named_arguments"] == ["y"]
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "reconstructions.png").is_file()


def test_a_resumed_run_with_named_arguments_is_bitwise_equal(mnist, tmp_path):
    data = labelled(mnist, 200, 50)
    pyro.set_rng_seed(0)
    whole = LabelConditioned()
    train(whole.model, whole.guide, data, epochs=2, batch_size=50, out=tmp_path / "whole", progress=False)
    expected = {k: v.clone() for k, v in whole.state_dict().items()}
    pyro.set_rng_seed(0)
    part = LabelConditioned()  # the same initial weights
    train(part.model, part.guide, data, epochs=1, batch_size=50, out=tmp_path / "part", progress=False)
    again = LabelConditioned()
    train(again.model, again.guide, data, epochs=2, batch_size=50, out=RunFolder(tmp_path / "part", resume=True),
          progress=False)
    for name, value in again.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_pairs_that_do_not_take_a_named_argument_are_refused_before_any_step(mnist, tmp_path):
    data = labelled(mnist, 100, 20)
    pair = LabelConditioned()

    def model_without_y(x):
        return pair.model(x, torch.zeros(len(x), dtype=torch.long))

    with pytest.raises(ValueError, match="the model does not take it: declare it, e.g. def model"):
        train(model_without_y, pair.guide, data, out=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="the guide does not take it"):
        train(pair.model, lambda x: pair.guide(x, torch.zeros(len(x), dtype=torch.long)), data, progress=False)
    assert not pair.seen and not (tmp_path / "r").exists()
    data.train_named = {"seed": data.train_named["y"]}
    data.test_named = {"seed": data.test_named["y"]}
    with pytest.raises(ValueError, match="clashes with a keyword"):
        train(lambda x, **kw: None, lambda x, **kw: None, data, progress=False)


@pytest.mark.parametrize(
    "named, message",
    [
        ({"train_named": {"y": torch.zeros(9, dtype=torch.long)}}, r"train_named\['y'\] must be a tensor with one row"),
        ({"train_named": {"y": torch.zeros(10, dtype=torch.long)}}, "test_named carries"),
    ],
)
def test_named_tensors_must_match_their_split(named, message):
    with pytest.raises(ValueError, match=message):
        Dataset(name="d", train=torch.zeros(10, 4), test=torch.zeros(5, 4), image_shape=None, likelihood=None,
                **named)


def test_named_arguments_travel_with_subset_and_to(mnist):
    data = labelled(mnist).subset(num_train=30, num_test=7).to("cpu")
    assert data.train_named["y"].shape == (30,) and data.test_named["y"].shape == (7,)
    assert torch.equal(data.named("train", torch.tensor([3, 1]))["y"], data.train_named["y"][[3, 1]])
