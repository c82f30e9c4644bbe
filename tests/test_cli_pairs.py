"""Run folders written from Python, and a user's own pair trained from the command line.

The pair factory lives in a module this file writes to ``tmp_path`` and puts on ``PYTHONPATH``,
as a user's package would be: ``pyro-vae train --pair mypairs:make_pair``.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pyro_vae import VAE, estimate_log_likelihood, train

PAIRS = textwrap.dedent('''
    import pyro
    import pyro.distributions as dist
    from torch import nn


    class Pair(nn.Module):
        """p(z) p(x|z) with an MLP decoder; q(z|x) with an MLP encoder."""

        def __init__(self, data_dim, latent_dim, hidden_dim):
            super().__init__()
            self.latent_dim = latent_dim
            self.enc = nn.Sequential(nn.Linear(data_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 2 * latent_dim))
            self.dec = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, data_dim))

        def model(self, x):
            pyro.module("dec", self.dec)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("enc", self.enc)
            with pyro.plate("data", x.shape[0]):
                loc, raw = self.enc(x).chunk(2, -1)
                pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


    def make_pair(data_dim, likelihood, latent_dim=4, hidden_dim=32):
        assert likelihood == "bernoulli", likelihood
        return Pair(data_dim, latent_dim, hidden_dim)


    def make_functions(data_dim, latent_dim=4):
        pair = Pair(data_dim, latent_dim, 16)
        return pair.model, pair.guide, pair
''')


@pytest.fixture
def pairs_module(tmp_path, monkeypatch):
    """``mypairs`` importable here and in the CLI's subprocesses."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "mypairs.py").write_text(PAIRS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    sys.modules.pop("mypairs", None)
    yield folder
    sys.modules.pop("mypairs", None)


def run_cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "pyro_vae", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def evaluate(run, data_root, out, *extra):
    run_cli("evaluate", str(run), "--num-samples", "20", "--num-test", "100", "--no-progress", "--device", "cpu",
            "--data-dir", str(data_root), "--output", str(out), *extra)
    return json.loads(out.read_text())["summary"]


def test_a_python_run_of_a_shipped_pair_is_evaluated_by_the_cli_on_the_trained_weights(mnist, data_root, tmp_path):
    """Before: ``KeyError: 'model_config'``. The CLI's estimate equals the one from the pair in
    memory (same seed, same points): it rebuilt the trained pair, not a fresh one."""
    data = mnist.subset(num_train=500, num_test=100)
    vae = VAE(784, latent_dim=3, hidden_dim=30)
    train(vae.model, vae.guide, data, epochs=1, out=tmp_path / "run", progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"] == "mlp" and config["model_config"]["latent_dim"] == 3
    here = estimate_log_likelihood(vae.model, vae.guide, data.test, 20, 100, bound_ks=(1, 5), seed=0)
    summary = evaluate(tmp_path / "run", data_root, tmp_path / "ev.json")
    assert summary["log_likelihood"]["mean"] == pytest.approx(here.mean, abs=1e-4)
    run_cli("latent", str(tmp_path / "run"), "--num-test", "20", "--num-samples", "10", "--device", "cpu",
            "--data-dir", str(data_root))
    assert (tmp_path / "run" / "latent" / "interpolation.png").is_file()


def test_a_python_run_of_a_pair_pyro_vae_cannot_rebuild_says_what_to_do(mnist, data_root, tmp_path, pairs_module):
    import mypairs

    pair = mypairs.make_pair(784, "bernoulli")
    train(pair.model, pair.guide, mnist.subset(num_train=200, num_test=50), out=tmp_path / "run", progress=False)
    proc = run_cli("evaluate", str(tmp_path / "run"), "--data-dir", str(data_root), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot rebuild" in proc.stderr and "estimate_log_likelihood" in proc.stderr and "--pair" in proc.stderr

    vae = VAE(784, latent_dim=2, hidden_dim=10)
    train(vae.model, vae.guide, mnist.test[:100], out=tmp_path / "tensor", progress=False)
    proc = run_cli("evaluate", str(tmp_path / "tensor"), "--data-dir", str(data_root), check=False)
    assert proc.returncode == 2 and "cannot reload" in proc.stderr and "estimate_log_likelihood" in proc.stderr


def test_a_python_run_that_names_its_factory_is_evaluated_on_the_trained_weights(mnist, data_root, tmp_path,
                                                                                  pairs_module):
    import mypairs

    data = mnist.subset(num_train=500, num_test=100)
    pair = mypairs.make_pair(784, "bernoulli")
    train(pair.model, pair.guide, data, out=tmp_path / "run", config={"pair": "mypairs:make_pair"}, progress=False)
    here = estimate_log_likelihood(pair.model, pair.guide, data.test, 20, 100, bound_ks=(1, 5), seed=0)
    summary = evaluate(tmp_path / "run", data_root, tmp_path / "ev.json")
    assert summary["log_likelihood"]["mean"] == pytest.approx(here.mean, abs=1e-4)


@pytest.mark.parametrize("factory", ["mypairs:make_pair", "mypairs:make_functions"])
def test_train_pair_from_the_cli_then_evaluate_latent_and_resume(data_root, tmp_path, pairs_module, factory):
    run = tmp_path / "run"
    common = ("--no-progress", "--device", "cpu", "--data-dir", str(data_root))
    run_cli("train", "--pair", factory, "--latent-dim", "3", "--num-train", "500", "--num-test", "100",
            "--epochs", "1", "--out", str(run), *common)
    config = json.loads((run / "config.json").read_text())
    assert config["pair"] == factory and config["pair_options"] == {"latent_dim": 3}
    assert config["pair_facts"] == {"data_dim": 784, "image_shape": [28, 28], "likelihood": "bernoulli",
                                    "num_classes": 10}
    assert (run / "samples.png").is_file() and (run / "reconstructions.png").is_file()
    summary = evaluate(run, data_root, tmp_path / "ev.json")
    assert summary["num_datapoints"] == 100 and summary["log_likelihood"]["mean"] < 0

    run_cli("train", "--resume", str(run), "--epochs", "2", *common)
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    after = evaluate(run, data_root, tmp_path / "ev2.json")
    assert after["log_likelihood"]["mean"] != summary["log_likelihood"]["mean"]  # the resumed weights were trained
    run_cli("latent", str(run), "--num-test", "20", "--num-samples", "10", *common[1:])
    assert (run / "latent" / "anomalies.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--pair", "mypairs"), "'package.module:function'"),
        (("--pair", "nosuchmodule:f"), "cannot import"),
        (("--pair", "mypairs:nothing"), "has no 'nothing'"),
        (("--pair", "mypairs:make_functions", "--hidden-dim", "8"), "does not take hidden_dim"),
        (("--pair", "mypairs:make_pair", "--model", "conv"), "drop --model"),
        (("--pair", "mypairs:Pair"), "needs latent_dim, hidden_dim"),
    ],
)
def test_bad_pair_factories_are_named_before_training(data_root, tmp_path, pairs_module, args, message, capsys):
    from pyro_vae.cli import main  # in this process: an uncaught exception fails the test as a traceback would

    code = main(["train", *args, "--num-train", "100", "--num-test", "20", "--out", str(tmp_path / "r"),
                 "--no-progress", "--device", "cpu", "--data-dir", str(data_root)])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.parametrize("factory", ["mypairs:make_pair", "mypairs:make_functions"])
def test_a_factorys_pair_trains_with_spectral_regularization(data_root, tmp_path, pairs_module, factory, capsys):
    """The penalty needs the pair's nn.Module: the factory's module, whichever form it returns."""
    from pyro_vae.cli import main

    run = tmp_path / "r"
    code = main(["train", "--pair", factory, "--spectral-regularization", "0.1", "--num-train", "100", "--num-test",
                 "20", "--epochs", "1", "--out", str(run), "--no-progress", "--device", "cpu", "--data-dir",
                 str(data_root)])
    assert code == 0, capsys.readouterr().err
    assert "SpectralRegularizedELBO" in json.loads((run / "config.json").read_text())["elbo"]
