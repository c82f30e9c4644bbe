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


@pytest.fixture(scope="module")
def single_run(data_root, tmp_path_factory):
    """Two epochs in one process: the reference of the DDP run, and the weights the sharded
    evaluation reads."""
    folder = tmp_path_factory.mktemp("single") / "run"
    run("train", *TRAIN, "--epochs", "2", "--out", str(folder))
    return folder


def test_two_process_training_matches_one_process_and_resumes_exactly(single_run, tmp_path):
    run("train", *TRAIN, "--epochs", "2", "--out", str(tmp_path / "ddp"), processes=2)
    single, ddp = metrics(single_run), metrics(tmp_path / "ddp")
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

    # the compiled step under DDP (each process records its share of the minibatch, the gradients are
    # summed between the graph and the update): the same epoch up to float rounding, every full minibatch compiled
    run("train", *TRAIN, "--epochs", "1", "--step", "compiled", "--out", str(tmp_path / "compiled"), processes=2)
    compiled = metrics(tmp_path / "compiled")[0]
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["step_used"] == "compiled"
    assert compiled["compiled_steps"] == 30  # rank 0's count: 3000 points / 100 a step, no smaller last step
    assert compiled["train_elbo"] == pytest.approx(ddp[0]["train_elbo"], abs=1e-2)
    assert compiled["test_elbo"] == pytest.approx(ddp[0]["test_elbo"], abs=1e-2)


def test_sharded_evaluation_equals_one_process(single_run, tmp_path):
    evaluate = ["evaluate", str(single_run), "--num-samples", "200", "--batch-size", "40", "--num-test", "230",
                "--no-progress", "--device", "cpu", "--no-download"]
    run(*evaluate, "--output", str(tmp_path / "one.json"))
    shown = run(*evaluate, "--output", str(tmp_path / "two.json"), processes=2)
    assert "2 processes" in shown.stdout
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert one["per_datapoint"]["index"] == list(range(230))
    for key, values in one["per_datapoint"].items():  # 6 minibatches over 2 ranks, gathered in order
        assert two["per_datapoint"][key] == values, key
    assert two["summary"]["log_likelihood"] == one["summary"]["log_likelihood"]


SCRIPT = '''
import sys
import pyro, torch, torch.distributed as tdist
from pyro_vae import VAE, distributed
from pyro_vae.objectives import get_elbo
from pyro_vae.training.state import RunState
from pyro_vae.training.step import ELBOLoss, ddp_loss, svi_step

tdist.init_process_group("gloo")
rank = tdist.get_rank()

# 1. seed=None: every process draws the same data order, whatever its own RNG history
torch.manual_seed(1000 + rank)
state = RunState()
state.seed(None, rank)
orders = distributed.gather_objects(torch.randperm(50, generator=state.data_rng).tolist())

# 2. one DDP step's gradient is the whole minibatch's: sum of each half's gradient with that
#    process's noise (seed 10 + rank), computed again in one process below
pyro.set_rng_seed(0)
vae = VAE(784, latent_dim=3, hidden_dim=16)
x = torch.bernoulli(torch.full((8, 784), 0.3), generator=torch.Generator().manual_seed(5))
objective = get_elbo("trace", max_plate_nesting=1)
loss_fn = ddp_loss(ELBOLoss(vae, objective, vae.model, vae.guide), torch.device("cpu"))
seen = {}
pyro.set_rng_seed(10 + rank)
svi_step(loss_fn, lambda params: seen.update({n: p.grad.clone() for n, p in vae.named_parameters()}),
         x.tensor_split(2)[rank], grad_scale=2.0)
if rank == 0:
    assert orders[0] == orders[1], orders
    reference = ELBOLoss(vae, objective, vae.model, vae.guide)
    for r in range(2):
        pyro.set_rng_seed(10 + r)
        reference(x.tensor_split(2)[r]).backward()
    worst = max(float((seen[n] - p.grad).abs().max() / p.grad.abs().max()) for n, p in vae.named_parameters())
    assert worst < 1e-5, worst
    print(f"same data order; largest relative gradient difference {worst:.2e}")
tdist.destroy_process_group()
'''


def test_ddp_gradient_and_data_order_under_torchrun(tmp_path):
    script = tmp_path / "ddp_check.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "same data order" in done.stdout
