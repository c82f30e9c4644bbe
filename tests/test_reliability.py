"""Reliability: exact resume, signals, kill -9, non-finite steps, full disk, safe loading.

The subprocess tests run the real command line on real MNIST and send real signals.
"""

import json
import math
import os
import pickle
import resource
import signal
import subprocess
import sys
import time

import pyro
import pyro.optim
import pytest
import torch
import pyro.distributions as dist
from pyro import poutine
from torch import nn

from pyro_vae import VAE, train
from pyro_vae.training import (CheckpointError, NonFiniteLossError, RunFolder, TrainingInterrupted, load_checkpoint,
                               read_checkpoint)

TRAIN = dict(batch_size=50, epochs=3, progress=False)


def params() -> dict:
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


def assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    unequal = [name for name in a if not torch.equal(a[name], b[name])]
    assert not unequal, f"parameters differ: {unequal}"


def signalling(model, at_call: int, signum=signal.SIGTERM):
    """A user's model that sends this process a real signal on its ``at_call``-th call."""
    calls = [0]

    def wrapped(x):
        calls[0] += 1
        if calls[0] == at_call:
            os.kill(os.getpid(), signum)
        return model(x)

    return wrapped


@pytest.mark.parametrize("at_call, signum", [(15, signal.SIGTERM), (21, signal.SIGINT)])
def test_interrupted_and_resumed_run_is_bitwise_equal_to_an_uninterrupted_one(mnist, tmp_path, at_call, signum):
    data = mnist.subset(num_train=500, num_test=100)  # 10 steps per epoch; call 21 ends epoch 2
    pyro.set_rng_seed(0)
    vae = VAE(784, latent_dim=5, hidden_dim=50)
    full = train(vae.model, vae.guide, data, out=RunFolder(tmp_path / "full", checkpoint_every=4), **TRAIN)
    expected = params()

    pyro.set_rng_seed(0)
    vae = VAE(784, latent_dim=5, hidden_dim=50)
    with pytest.raises(TrainingInterrupted, match=f"interrupted by {signal.Signals(signum).name}.*resume with") as info:
        train(signalling(vae.model, at_call, signum), vae.guide, data, out=RunFolder(tmp_path / "run", checkpoint_every=4),
              **TRAIN)
    saved = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert info.value.checkpoint == tmp_path / "run" / "checkpoint.pt"
    assert saved["step"] == info.value.step and not saved["finished"] and 0 < saved["step"] < 30

    pyro.clear_param_store()
    fresh = VAE(784, latent_dim=5, hidden_dim=50)  # as in a new process: a new object, its own initial weights
    torch.manual_seed(1234)
    resumed = train(fresh.model, fresh.guide, data, out=RunFolder(tmp_path / "run", resume=True, checkpoint_every=4),
                    **TRAIN)
    assert_bitwise_equal(params(), expected)
    assert resumed.history == [dict(h, train_seconds=r["train_seconds"], total_train_seconds=r["total_train_seconds"])
                               for h, r in zip(full.history, resumed.history)]
    assert [c["train_elbo"] for c in resumed.curve] == [c["train_elbo"] for c in full.curve]
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 3 and read_checkpoint(tmp_path / "run" / "checkpoint.pt")["finished"]


def test_resume_to_more_epochs_and_resume_errors(mnist, tmp_path):
    data = mnist.subset(num_train=200, num_test=50)
    pyro.set_rng_seed(0)
    vae = VAE(784, latent_dim=3, hidden_dim=20)
    settings = dict(batch_size=50, progress=False, out=tmp_path)
    resume = dict(settings, out=RunFolder(tmp_path, resume=True))
    pyro.set_rng_seed(0)
    train(vae.model, vae.guide, data, epochs=3, **settings)
    three = params()
    pyro.set_rng_seed(0)
    vae = VAE(784, latent_dim=3, hidden_dim=20)
    train(vae.model, vae.guide, data, epochs=2, out=tmp_path / "b", batch_size=50, progress=False)
    two = params()
    train(vae.model, vae.guide, data, epochs=3, out=RunFolder(tmp_path / "b", resume=True), batch_size=50, progress=False)
    assert_bitwise_equal(params(), three)
    assert not all(torch.equal(two[k], three[k]) for k in two)

    with pytest.raises(ValueError, match="already has 3 epochs; ask for more"):
        train(vae.model, vae.guide, data, epochs=3, **resume)
    with pytest.raises(CheckpointError, match=r"other settings \(batch_size: checkpoint 50, now 25"):
        train(vae.model, vae.guide, data, epochs=4, out=RunFolder(tmp_path, resume=True), batch_size=25, progress=False)
    other = VAE(784, latent_dim=4, hidden_dim=20)
    with pytest.raises(CheckpointError, match="has shape .* the pair's has .*different latent/hidden size"):
        train(other.model, other.guide, data, epochs=4, **resume)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint.pt"):
        train(vae.model, vae.guide, data, epochs=4, out=RunFolder(tmp_path / "nothing", resume=True), batch_size=50)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(vae.model, vae.guide, data, epochs=1, **settings)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_a_run_folder_written_with_the_removed_jit_setting_resumes(mnist, tmp_path):
    """Runs of pyro-vae before the ``torch.jit.trace`` path was removed record ``"jit"`` in config.json
    and in the checkpoint's settings: a speed setting (the same numbers), ignored on resume."""
    data = mnist.subset(num_train=200, num_test=50)
    settings = dict(batch_size=50, progress=False)
    pyro.set_rng_seed(0)
    vae = VAE(784, latent_dim=3, hidden_dim=20)
    straight = train(vae.model, vae.guide, data, epochs=2, out=tmp_path / "straight", **settings)
    expected = params()
    pyro.set_rng_seed(0)
    vae = VAE(784, latent_dim=3, hidden_dim=20)
    train(vae.model, vae.guide, data, epochs=1, out=tmp_path / "old", **settings)
    config, checkpoint = tmp_path / "old" / "config.json", tmp_path / "old" / "checkpoint.pt"
    config.write_text(json.dumps({**json.loads(config.read_text()), "jit": True}))
    state = read_checkpoint(checkpoint)
    state["config"]["jit"] = True
    torch.save(state, checkpoint)

    pyro.clear_param_store()
    fresh = VAE(784, latent_dim=3, hidden_dim=20)
    resumed = train(fresh.model, fresh.guide, data, epochs=2, out=RunFolder(tmp_path / "old", resume=True), **settings)
    assert_bitwise_equal(params(), expected)
    assert [h["test_elbo"] for h in resumed.history] == [h["test_elbo"] for h in straight.history]
    assert "jit" not in json.loads(config.read_text())  # the resumed run records today's settings


def test_best_checkpoint_by_validation_elbo(mnist, data_root, tmp_path):
    from pyro_vae import load_dataset

    data = load_dataset("mnist", data_root, valid_size=100).subset(num_train=400, num_test=50)
    vae = VAE(784, latent_dim=3, hidden_dim=20)
    result = train(vae.model, vae.guide, data, epochs=3, batch_size=50, progress=False, out=tmp_path)
    valid = [h["valid_elbo"] for h in result.history]
    best = read_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 1 + valid.index(max(valid)) and best["best_valid_elbo"] == max(valid)


def poisoned(model, at_step: int, snapshot: dict, batch_size: int = 50):
    """A user's model whose call in SVI step ``at_step`` (counting the calls on a full minibatch of
    ``batch_size``, not the checker's smaller ones) scales its log-density by inf."""
    calls = [0]

    def wrapped(x):
        calls[0] += len(x) == batch_size
        if len(x) == batch_size and calls[0] == at_step:
            snapshot.update(params())
            with poutine.scale(scale=float("inf")):
                return model(x)
        return model(x)

    return wrapped


def test_non_finite_step_is_named_not_applied_and_the_checkpoint_survives(mnist, tmp_path):
    data = mnist.subset(num_train=500, num_test=50)
    vae = VAE(784, latent_dim=3, hidden_dim=20)
    before_bad_step = {}
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss or gradient at step 6 \(epoch 1, minibatch 6\).*"
                                                 r"not applied; the last good checkpoint .* is intact"):
        train(poisoned(vae.model, 6, before_bad_step), vae.guide, data, batch_size=50,
              out=RunFolder(tmp_path, checkpoint_every=5), progress=False)
    assert_bitwise_equal(params(), before_bad_step)
    assert read_checkpoint(tmp_path / "checkpoint.pt")["step"] == 5


def test_non_finite_backoff_skips_the_step_and_lowers_the_learning_rate(mnist):
    data = mnist.subset(num_train=500, num_test=50)
    vae = VAE(784, latent_dim=3, hidden_dim=20)
    optim = pyro.optim.Adam({"lr": 1e-3})
    result = train(poisoned(vae.model, 6, {}), vae.guide, data, batch_size=50, optimizer=optim,
                   nonfinite_backoff=0.5, progress=False, log_interval=1)
    assert result.skipped_steps == [{"step": 6, "epoch": 1, "lr_factor": 0.5}]
    # train_elbo is the mean over the 9 applied steps (equal batches of 50): the log-interval-1 curve
    # holds each applied step's ELBO and no entry for the skipped one
    assert [c["step"] for c in result.curve] == [1, 2, 3, 4, 5, 7, 8, 9, 10]
    per_step = [c["train_elbo"] for c in result.curve]
    assert result.final["train_elbo"] == pytest.approx(sum(per_step) / len(per_step), rel=1e-6)
    assert result.final["skipped_steps"] == 1
    lrs = {group["lr"] for opt in optim.optim_objs.values() for group in opt.param_groups}
    assert lrs == {5e-4} and torch.isfinite(torch.tensor(result.final["test_elbo"]))


class RunsACommand:
    """A pickle that would run a command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_truncated_and_foreign_checkpoints_are_refused(mnist, tmp_path):
    vae = VAE(784, latent_dim=3, hidden_dim=20)
    x = mnist.test[:4]
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "pyro-vae-checkpoint/2", "params": RunsACommand(marker)}, evil)
    refused = r"cannot load checkpoint .*evil.pt: it is not a pyro-vae checkpoint, or it was tampered with.*" \
              r"Nothing was loaded and nothing was run"
    with pytest.raises(CheckpointError, match=refused) as info:
        load_checkpoint(evil, vae.model, vae.guide, x)
    assert "github" not in str(info.value).lower() and "weights_only" not in str(info.value)  # our words, not torch's
    evil.write_bytes(pickle.dumps(RunsACommand(marker), protocol=2))  # a plain pickle, not a torch zip
    with pytest.raises(CheckpointError, match=refused):
        read_checkpoint(evil)
    assert not marker.exists(), "unpickling ran the command"

    train(vae.model, vae.guide, mnist.subset(num_train=100, num_test=20), batch_size=50, out=tmp_path / "r",
          progress=False)
    good = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="cannot load checkpoint .*truncated.pt"):
        load_checkpoint(truncated, vae.model, vae.guide, x)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="is not a pyro-vae checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")
    pyro.clear_param_store()
    bigger = VAE(784, latent_dim=3, hidden_dim=30)
    with pytest.raises(CheckpointError, match="'encoder\\$\\$\\$hidden.0.weight' has shape \\(20, 784\\)"):
        load_checkpoint(tmp_path / "r" / "checkpoint.pt", bigger.model, bigger.guide, x)


# --- the real command line, in subprocesses ---------------------------------------------------

CLI_ARGS = ["--dataset", "mnist", "--num-train", "12000", "--num-test", "200", "--epochs", "2", "--latent-dim", "5",
            "--hidden-dim", "100", "--checkpoint-every", "20", "--no-progress", "--no-download"]


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "pyro_vae", *args], capture_output=True, text=True, timeout=600,
                          **kwargs)


def start(out):
    return subprocess.Popen([sys.executable, "-m", "pyro_vae", "train", *CLI_ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc, path, min_step=1):
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended before it was stopped: {proc.communicate()}"
        try:
            if read_checkpoint(path)["step"] >= min_step:
                return
        except (FileNotFoundError, CheckpointError):  # not there yet
            pass
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def final_params(run_dir):
    return read_checkpoint(run_dir / "checkpoint.pt")["params"]


def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # a checkpoint here is ~2.5 MB


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cli_sigterm_kill9_full_disk_and_resume(data_root, tmp_path):
    env_ok = cli("train", *CLI_ARGS, "--out", str(tmp_path / "reference"))
    assert env_ok.returncode == 0, env_ok.stderr
    reference = final_params(tmp_path / "reference")

    # SIGTERM: a checkpoint, a message saying how to resume, exit status 128 + 15
    proc = start(tmp_path / "term")
    wait_for_checkpoint(proc, tmp_path / "term" / "checkpoint.pt")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM" in stderr and f"resume with: pyro-vae train --resume {tmp_path / 'term'}" in stderr
    stopped = read_checkpoint(tmp_path / "term" / "checkpoint.pt")
    assert not stopped["finished"] and stopped["step"] > 0

    # a full disk while resuming: a clear error, and the previous checkpoint is intact
    full = cli("train", "--resume", str(tmp_path / "term"), preexec_fn=limit_file_size)
    assert full.returncode == 2 and "could not write checkpoint" in full.stderr, full.stderr
    assert "is intact" in full.stderr
    intact = read_checkpoint(tmp_path / "term" / "checkpoint.pt")
    assert intact["step"] == stopped["step"]
    assert all(torch.equal(intact["params"][k], stopped["params"][k]) for k in stopped["params"])

    resumed = cli("train", "--resume", str(tmp_path / "term"))
    assert resumed.returncode == 0, resumed.stderr
    assert_bitwise_equal(final_params(tmp_path / "term"), reference)

    # kill -9: at most the work since the last checkpoint is lost, and the run still resumes exactly
    proc = start(tmp_path / "killed")
    wait_for_checkpoint(proc, tmp_path / "killed" / "checkpoint.pt", min_step=60)
    proc.kill()
    proc.communicate(timeout=60)
    survived = read_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert survived["step"] >= 60 and survived["step"] % 20 == 0
    resumed = cli("train", "--resume", str(tmp_path / "killed"), "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert_bitwise_equal(final_params(tmp_path / "killed"), reference)

    refused = cli("train", "--resume", str(tmp_path / "killed"), "--lr", "0.1")
    assert refused.returncode == 2 and "drop --lr" in refused.stderr


def test_the_data_order_state_is_device_independent(mnist, tmp_path):
    """The checkpoint keeps the data-order generator's state on the CPU (a CPU generator), so that
    it can be restored on any device; the epoch's draws on a GPU come from a generator seeded from it."""
    train(VAE(784, latent_dim=2, hidden_dim=10).model, VAE(784, latent_dim=2, hidden_dim=10).guide,
          mnist.subset(num_train=100, num_test=20), batch_size=50, out=tmp_path, progress=False)
    saved = read_checkpoint(tmp_path / "checkpoint.pt")
    cpu = torch.Generator()
    cpu.set_state(saved["data_rng"])  # restorable into a CPU generator
    assert saved["data_rng"].device.type == "cpu" and saved["position"]["epoch_data_rng"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cpu_run_resumes_on_cuda_and_back(mnist, tmp_path):
    data = mnist.subset(num_train=200, num_test=50)
    settings = dict(batch_size=50, progress=False)
    pyro.set_rng_seed(0)
    vae = VAE(784, latent_dim=3, hidden_dim=20)
    train(vae.model, vae.guide, data, epochs=1, out=RunFolder(tmp_path, checkpoint_every=2), **settings)
    pyro.clear_param_store()
    gpu = VAE(784, latent_dim=3, hidden_dim=20).cuda()
    on_gpu = train(gpu.model, gpu.guide, data.to("cuda"), epochs=2, out=RunFolder(tmp_path, resume=True), **settings)
    assert [h["epoch"] for h in on_gpu.history] == [1, 2] and math.isfinite(on_gpu.final["test_elbo"])
    pyro.clear_param_store()
    back = VAE(784, latent_dim=3, hidden_dim=20)
    on_cpu = train(back.model, back.guide, data, epochs=3, out=RunFolder(tmp_path, resume=True), **settings)
    assert [h["epoch"] for h in on_cpu.history] == [1, 2, 3] and math.isfinite(on_cpu.final["test_elbo"])


class RelaxedPair(nn.Module):
    """A pair written here with a Concrete (Gumbel-softmax) latent whose temperature the user anneals."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.encoder, self.decoder = nn.Linear(784, 10), nn.Linear(10, 784)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.RelaxedOneHotCategorical(torch.tensor(self.temperature),
                                                               logits=torch.zeros(x.shape[0], 10)))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(y)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.RelaxedOneHotCategorical(torch.tensor(self.temperature),
                                                           logits=3 * self.encoder(x)))


def test_a_relaxed_latent_at_a_low_temperature_is_named_as_the_cause(mnist):
    data = mnist.subset(num_train=200)
    pair = RelaxedPair(temperature=1.0)
    def annealed(x):  # the user lowers the temperature once training runs, as an annealing schedule would
        if len(x) == 100:  # a training minibatch, not the checker's small ones
            pair.temperature = 0.02
        return pair.model(x)

    with pytest.raises(NonFiniteLossError, match=r"of (guide|model) site 'y' \(RelaxedOneHotCategorical\) is not finite.*"
                                                 r"temperature 0.02.*the learning rate is not the cause"):
        train(annealed, pair.guide, data, batch_size=100, progress=False)

