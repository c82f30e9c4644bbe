"""Every script in experiments/ runs in its --quick mode; a script missing here fails the suite."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
QUICK_RUNS = {
    "eval_throughput.py": ["--quick", "--device", "cpu"],
}


def test_every_experiment_is_listed():
    scripts = {p.name for p in EXPERIMENTS.glob("*.py")}
    assert scripts == set(QUICK_RUNS), f"add {scripts - set(QUICK_RUNS)} to QUICK_RUNS"


@pytest.mark.parametrize("script", sorted(QUICK_RUNS))
def test_experiment_quick(script, data_root, tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / script), *QUICK_RUNS[script], "--out", str(out),
         "--data-dir", str(data_root)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    for m in report["measurements"]:
        hand = m["results"]["handwritten_pytorch"]
        ours = m["results"]["pyro_vae"]
        assert ours["throughput_ratio_vs_handwritten"] > 0
        # same weights, same data, same K: the two estimates agree within Monte Carlo error
        assert abs(ours["mean_log_likelihood"] - hand["mean_log_likelihood"]) < 5 * hand["stderr"]
