"""Class labels passed by keyword from the command line: ``pyro-vae train --labels-as y`` gives a
pair that declares ``def model(x, y=None)`` the labels as ``y=``, sliced with each minibatch, and
``evaluate`` and ``--resume`` pass them the same way. The pair factory lives in a module written to
``tmp_path`` and put on ``PYTHONPATH``, as a user's package would be."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pyro_vae import estimate_log_likelihood
from pyro_vae.cli import main
from pyro_vae.training import load_checkpoint

PAIRS = textwrap.dedent('''
    import pyro
    import pyro.distributions as dist
    import torch
    from torch import nn


    class ByKeyword(nn.Module):
        """A conditional VAE, p(z) p(x | z, y) and q(z | x, y), with the labels y by keyword."""

        def __init__(self, data_dim, num_classes, latent_dim=2, hidden_dim=16):
            super().__init__()
            self.latent_dim, self.num_classes = latent_dim, num_classes
            self.enc = nn.Sequential(nn.Linear(data_dim + num_classes, hidden_dim), nn.Tanh(),
                                     nn.Linear(hidden_dim, 2 * latent_dim))
            self.dec = nn.Sequential(nn.Linear(latent_dim + num_classes, hidden_dim), nn.Tanh(),
                                     nn.Linear(hidden_dim, data_dim))

        def one_hot(self, x, y):
            if y is None:
                raise ValueError("ByKeyword needs the labels: model(x, y=labels)")
            return nn.functional.one_hot(y, self.num_classes).to(x.dtype)

        def model(self, x, y=None):
            pyro.module("dec", self.dec)
            c = self.one_hot(x, y)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
                logits = self.dec(torch.cat([z, c.expand(*z.shape[:-1], -1)], -1))
                pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

        def guide(self, x, y=None):
            pyro.module("enc", self.enc)
            c = self.one_hot(x, y)
            with pyro.plate("data", x.shape[0]):
                loc, raw = self.enc(torch.cat([x, c], -1)).chunk(2, -1)
                pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


    def make_pair(data_dim, num_classes, latent_dim=2, hidden_dim=16):
        return ByKeyword(data_dim, num_classes, latent_dim, hidden_dim)


    def make_unconditional(data_dim, hidden_dim=16):
        pair = ByKeyword(data_dim, 10, hidden_dim=hidden_dim)
        return (lambda x: pair.model(x, torch.zeros(len(x), dtype=torch.long)),
                lambda x: pair.guide(x, torch.zeros(len(x), dtype=torch.long)), pair)
''')


@pytest.fixture
def named_pairs(tmp_path, monkeypatch):
    """``namedpairs`` importable here and in the CLI's subprocesses."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "namedpairs.py").write_text(PAIRS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    sys.modules.pop("namedpairs", None)
    yield folder
    sys.modules.pop("namedpairs", None)


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "pyro_vae", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def test_labels_by_keyword_train_evaluate_and_resume(mnist, data_root, tmp_path, named_pairs):
    import namedpairs

    run = tmp_path / "run"
    common = ("--no-progress", "--device", "cpu", "--data-dir", str(data_root))
    run_cli("train", "--pair", "namedpairs:make_pair", "--labels-as", "y", "--num-train", "300", "--num-test", "50",
            "--epochs", "1", "--batch-size", "50", "--evaluate-samples", "10", "--out", str(run), *common)
    config = json.loads((run / "config.json").read_text())
    assert config["labels_as"] == "y" and config["named_arguments"] == ["y"] and config["labels"] is False
    assert json.loads((run / "evaluation.json").read_text())["summary"]["quantity"] == "log p(x | y)"

    proc = run_cli("evaluate", str(run), "--num-samples", "20", "--num-test", "50", "--output",
                   str(tmp_path / "ev.json"), *common)
    assert "log p̂(x | y), K = 20, 50 datapoints" in proc.stdout
    summary = json.loads((tmp_path / "ev.json").read_text())["summary"]
    assert summary["quantity"] == "log p(x | y)"
    # the same estimate from Python, with the trained weights and the test labels given as y=
    pair = namedpairs.make_pair(784, 10)
    x, y = mnist.test[:50], mnist.test_labels[:50]
    load_checkpoint(run / "checkpoint.pt", pair.model, pair.guide, x[:2], y=y[:2])
    here = estimate_log_likelihood(pair.model, pair.guide, x, 20, 100, bound_ks=(1, 5), seed=0, y=y)
    assert summary["log_likelihood"]["mean"] == pytest.approx(here.mean, abs=1e-4)
    shuffled = estimate_log_likelihood(pair.model, pair.guide, x, 20, 100, bound_ks=(), seed=0, y=y.roll(1))
    assert abs(shuffled.mean - here.mean) > 1e-3  # the labels matter to this pair

    run_cli("train", "--resume", str(run), "--epochs", "2", *common)
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


@pytest.mark.parametrize(
    "args, message",
    [
        (("--pair", "namedpairs:make_unconditional", "--labels-as", "y"), "the model does not take it"),
        (("--model", "conditional", "--labels-as", "y"), "sets needs_labels"),
        (("--pair", "namedpairs:make_pair", "--labels-as", "1y"), "--labels-as takes the name of the argument"),
        (("--pair", "namedpairs:make_pair", "--labels-as", "seed"), "clashes with a keyword"),
    ],
)
def test_labels_by_keyword_are_refused_before_training_when_the_pair_cannot_take_them(
        data_root, tmp_path, named_pairs, capsys, args, message):
    status = main(["train", *args, "--num-train", "100", "--num-test", "20", "--hidden-dim", "8", "--out",
                   str(tmp_path / "r"), "--no-progress", "--device", "cpu", "--data-dir", str(data_root)])
    err = capsys.readouterr().err
    assert status == 2 and message in err, err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
