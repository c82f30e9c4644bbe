"""torchrun with two CPU processes on gloo: training with DistributedDataParallel and sharded
evaluation, checked against single-process runs of the real command line."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed

from pyro_vae.training import read_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

TRAIN = ["--num-train", "3000", "--num-test", "300", "--latent-dim", "5", "--hidden-dim", "100", "--batch-size", "100",
         "--no-progress", "--device", "cpu", "--no-download"]


def run(*args, processes: int = 1):
    """The command line, in one process or under torchrun; one thread per process in both, as
    torchrun sets, so that the float32 arithmetic is the same."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *launcher, "-m", "pyro_vae", *args], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_process_training_matches_one_process_and_resumes_exactly(data_root, tmp_path):
    run("train", *TRAIN, "--epochs", "2", "--out", str(tmp_path / "single"))
    run("train", *TRAIN, "--epochs", "2", "--out", str(tmp_path / "ddp"), processes=2)
    single, ddp = metrics(tmp_path / "single"), metrics(tmp_path / "ddp")
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2 and config["batch_size"] == 100
    # the same number of steps of the same global batch; rank 0 wrote one line per epoch
    assert [m["step"] for m in ddp] == [m["step"] for m in single] == [30, 60]
    # the same algorithm with other latent noise: the bounds agree within a few nats (the test SE is ~2)
    for a, b in zip(single, ddp):
        assert abs(a["test_elbo"] - b["test_elbo"]) < 5, (a, b)
        assert abs(a["train_elbo"] - b["train_elbo"]) < 5, (a, b)
    assert ddp[1]["test_elbo"] > ddp[0]["test_elbo"] + 5, "training under DDP improves the bound"

    # stopped after one epoch and resumed under torchrun: bitwise equal to the uninterrupted run
    run("train", *TRAIN, "--epochs", "1", "--out", str(tmp_path / "resumed"), processes=2)
    run("train", "--resume", str(tmp_path / "resumed"), "--epochs", "2", "--no-progress", processes=2)
    expected, got = read_checkpoint(tmp_path / "ddp" / "checkpoint.pt"), read_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert all(torch.equal(expected["params"][k], got["params"][k]) for k in expected["params"])
    assert metrics(tmp_path / "resumed")[1]["test_elbo"] == ddp[1]["test_elbo"]

    # the jit path under DDP: the same epoch up to float rounding
    run("train", *TRAIN, "--epochs", "1", "--jit", "--out", str(tmp_path / "jit"), processes=2)
    jit = metrics(tmp_path / "jit")[0]
    assert jit["train_elbo"] == pytest.approx(ddp[0]["train_elbo"], abs=1e-2)
    assert jit["test_elbo"] == pytest.approx(ddp[0]["test_elbo"], abs=1e-2)


def test_sharded_evaluation_equals_one_process(data_root, tmp_path):
    run("train", *TRAIN, "--epochs", "1", "--out", str(tmp_path / "run"))
    evaluate = ["evaluate", str(tmp_path / "run"), "--num-samples", "200", "--batch-size", "40", "--num-test", "230",
                "--no-progress", "--device", "cpu", "--no-download"]
    run(*evaluate, "--output", str(tmp_path / "one.json"))
    shown = run(*evaluate, "--output", str(tmp_path / "two.json"), processes=2)
    assert "2 processes" in shown.stdout
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one["per_datapoint"]["index"] == list(range(230))
    for key, values in one["per_datapoint"].items():  # 6 minibatches over 2 ranks, gathered in order
        assert two["per_datapoint"][key] == values, key
    assert two["summary"]["log_likelihood"] == one["summary"]["log_likelihood"]
