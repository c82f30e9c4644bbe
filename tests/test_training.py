"""The SVI trainer on real data and with a pair written here, not shipped by the package."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import VAE, evaluate_elbo, train
from pyro_vae.training import RUN_FILES


def test_training_lowers_test_negative_elbo(mnist):
    data = mnist.subset(num_train=3000, num_test=500)
    vae = VAE(784, latent_dim=10, hidden_dim=200)
    before, _ = evaluate_elbo(vae.model, vae.guide, data.test)
    result = train(vae.model, vae.guide, data, elbo="meanfield", epochs=2, progress=False)
    after, se = evaluate_elbo(vae.model, vae.guide, data.test)
    assert result.final["test_elbo"] == pytest.approx(after, abs=5 * se + 0.5)
    assert after > before + 100, (before, after)  # about -545 -> about -200 nats
    assert len(result.history) == 2 and all(h["train_seconds"] > 0 for h in result.history)
    assert result.curve and result.curve[-1]["samples_seen"] == 2 * 3000


class TwoLayerPair(nn.Module):
    """A hierarchical pair written here: z2 -> z1 -> x, guide x -> z1 -> z2 (two latent sites)."""

    def __init__(self, data_dim=784, h=64):
        super().__init__()
        self.dec1 = nn.Sequential(nn.Linear(4, h), nn.Tanh(), nn.Linear(h, 2 * 8))
        self.dec0 = nn.Sequential(nn.Linear(8, h), nn.Tanh(), nn.Linear(h, data_dim))
        self.enc0 = nn.Sequential(nn.Linear(data_dim, h), nn.Tanh(), nn.Linear(h, 2 * 8))
        self.enc1 = nn.Sequential(nn.Linear(8, h), nn.Tanh(), nn.Linear(h, 2 * 4))

    @staticmethod
    def _normal(out):
        loc, raw = out.chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)

    def model(self, x):
        pyro.module("dec", self)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(4), 1.0).to_event(1))
            z1 = pyro.sample("z1", self._normal(self.dec1(z2)))
            pyro.sample("x", dist.Bernoulli(logits=self.dec0(z1)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", self._normal(self.enc0(x)))
            pyro.sample("z2", self._normal(self.enc1(z1)))


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "iwae"])
def test_user_written_pair_trains_through_the_same_trainer(mnist, elbo, tmp_path):
    pair = TwoLayerPair()
    data = mnist.subset(num_train=2000, num_test=300)
    result = train(pair.model, pair.guide, data, elbo=elbo, num_particles=3 if elbo == "iwae" else 1,
                   epochs=3, batch_size=50, lr=3e-3, out=tmp_path / elbo, progress=False)
    elbos = [h["test_elbo"] for h in result.history]
    assert elbos[-1] > elbos[0], elbos
    assert all(math.isfinite(v) for v in elbos)
    for name in RUN_FILES + ("samples.png", "reconstructions.png", "elbo.png"):
        assert (tmp_path / elbo / name).is_file(), name


def test_plain_tensor_data_and_adagrad(mnist):
    vae = VAE(784, latent_dim=5, hidden_dim=50)
    x = mnist.test[:1000]
    result = train(vae.model, vae.guide, x, optimizer="adagrad", lr=0.02, epochs=3, progress=False)
    train_elbos = [h["train_elbo"] for h in result.history]
    assert train_elbos[2] > train_elbos[0] and "test_elbo" not in result.final


def test_run_folder_contents_and_no_silent_overwrite(mnist, tmp_path):
    vae = VAE(784, latent_dim=5, hidden_dim=50)
    data = mnist.subset(num_train=500, num_test=100)
    train(vae.model, vae.guide, data, epochs=2, out=tmp_path, config={"note": "x"}, progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["elbo"] == "trace" and config["epochs"] == 2 and config["note"] == "x"
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and all("test_elbo" in m for m in lines)
    for name in ("samples.png", "reconstructions.png", "elbo.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(vae.model, vae.guide, data, epochs=1, out=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved, "the earlier run is untouched"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"elbo": "renyi"}, "trace, meanfield, iwae"),
        ({"optimizer": "sgd"}, "adam, adagrad"),
        ({"batch_size": 10_000}, "batch_size must be between 1 and the training set size 100"),
        ({"num_particles": 0}, "num_particles must be >= 1"),
        ({"lr": -1.0}, "learning rate must be positive"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    vae = VAE(784, latent_dim=2, hidden_dim=10)
    x = torch.bernoulli(torch.full((100, 784), 0.2))
    with pytest.raises(ValueError, match=message):
        train(vae.model, vae.guide, x, progress=False, **kwargs)


def test_free_bits_on_a_pair_it_does_not_fit_is_refused_before_anything_is_written(tmp_path):
    """The shipped hierarchical guide runs bottom-up: z1's analytic KL is not an ELBO term, so the
    per-dimension free-bits clamp has nothing valid to act on."""
    from pyro_vae import KLSchedule, ModelGuideError, build_model

    pair = build_model("hierarchical", 784, latent_dim=4, hidden_dim=16)
    x = torch.bernoulli(torch.full((40, 784), 0.3))
    with pytest.raises(ModelGuideError, match="latent site 'z1': free bits needs the analytic KL"):
        train(pair.model, pair.guide, x, elbo="meanfield", schedule=KLSchedule(free_bits=0.5), batch_size=20,
              out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
