"""Every script in experiments/ runs in its --quick mode; a script missing here fails the suite."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def check_eval_throughput(report):
    for m in report["measurements"]:
        hand = m["results"]["handwritten_pytorch"]
        ours = m["results"]["pyro_vae"]
        assert ours["throughput_ratio_vs_handwritten"] > 0
        # same weights, same data, same K: the two estimates agree within Monte Carlo error
        assert abs(ours["mean_log_likelihood"] - hand["mean_log_likelihood"]) < 5 * hand["stderr"]


def check_zoo(report):
    from pyro_vae.models import MODELS

    assert [r["model"] for r in report["rows"]] == list(MODELS)
    for r in report["rows"]:
        # an untrained net scores about -540 nats; one epoch on 1000 points must improve on that
        assert -540 < r["test_elbo"] < 0 and r["log_likelihood"] >= r["test_elbo"] - 3 * r["test_elbo_se"]


QUICK_RUNS = {
    "eval_throughput.py": (["--quick", "--device", "cpu"], check_eval_throughput),
    "zoo.py": (["--quick", "--device", "cpu"], check_zoo),
}


def test_every_experiment_is_listed():
    scripts = {p.name for p in EXPERIMENTS.glob("*.py")}
    assert scripts == set(QUICK_RUNS), f"add {scripts - set(QUICK_RUNS)} to QUICK_RUNS"


@pytest.mark.parametrize("script", sorted(QUICK_RUNS))
def test_experiment_quick(script, data_root, tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / script), *QUICK_RUNS[script][0], "--out", str(out),
         "--data-dir", str(data_root)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    QUICK_RUNS[script][1](json.loads(out.read_text()))
