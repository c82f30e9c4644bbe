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


def check_aevb(report, folder):
    runs = {(r["dataset"], r["latent_dim"]): r for r in report["runs"]}
    assert set(runs) == {("mnist", 2), ("mnist", 3), ("frey-face", 2), ("frey-face", 3)}
    assert runs[("mnist", 3)]["test_elbo"] > -544  # better than an untrained decoder (784 log 2 = 543.4)
    for name in ("figure2.csv", "figure2_mnist.png", "figure2_frey-face.png", "figure4_manifold_mnist.png",
                 "figure4_manifold_frey-face.png", "figure5_samples_mnist.png", "summary.md"):
        assert (folder / name).stat().st_size > 0, name


def check_estimators(report, folder):
    assert {(f["estimator"], f["seed"]) for f in report["final"]} == {
        (e, s) for e in ("trace", "meanfield", "iwae-5", "iwae-50") for s in (0, 1)}
    snr = {(g["estimator"], g["seed"]): g["encoder_snr"] for g in report["gradients"] if g["checkpoint"] == "initial"}
    # Rainforth et al. (2018): the encoder's gradient SNR falls as k grows (same parameters, same batch)
    assert all(snr[("iwae-50", s)] < snr[("trace", s)] for s in (0, 1))
    summary = (folder / "summary.md").read_text()
    assert "Who wins where" in summary and all(e in summary for e in ("trace", "meanfield", "iwae-50"))
    for name in ("bound_vs_steps.png", "bound_vs_seconds.png", "gradient_snr.png", "curves.csv"):
        assert (folder / name).stat().st_size > 0, name


def check_burda(report, folder):
    rows = report["rows"]
    assert [(r["layers"], r["objective"], r["k"]) for r in rows] == [
        (layers, obj, k) for layers in (1, 2) for obj in ("VAE", "IWAE") for k in (1, 5)]
    assert all(0 < r["nll"] < 600 and r["nll_se"] > 0 for r in rows)
    assert all(r["active_units"].count("+") == r["layers"] - 1 for r in rows)
    assert "| 1 | VAE | 1 |" in (folder / "summary.md").read_text()


def check_benchmark(report):
    for m in report["measurements"]:
        for row in m["steps"] + m["epochs"]:
            unit = "ms_per_step" if "toolkit_ms_per_step" in row else "epoch_s"
            ours, hand, fused = (row[f"{side}_{unit}"] for side in ("toolkit", "handwritten", "handwritten_fused"))
            assert ours > 0 and hand > 0 and fused > 0
            assert row["ratio"] == pytest.approx(ours / fused)
            assert row["ratio_vs_default_adam"] == pytest.approx(ours / hand)
        for row in m["steps"]:  # every variant computes the hand-written bound (20 draws at the same weights)
            assert row["toolkit_loss_per_point"] == pytest.approx(row["handwritten_loss_per_point"], abs=2.0)
        assert {(r["objective"], r["variant"]) for r in m["steps"]} == {
            (o, v) for o in ("trace", "meanfield", "iwae") for v in ("eager", "jit", "pyro-optim")} | {
            ("trace", "pyro-elbo"), ("meanfield", "pyro-elbo")}  # Pyro has no IWAE class
        check_eval_throughput({"measurements": [m["evaluation"]]})


QUICK_RUNS = {
    "benchmark.py": (["--quick", "--device", "cpu"], check_benchmark),
    "eval_throughput.py": (["--quick", "--device", "cpu"], check_eval_throughput),
    "zoo.py": (["--quick", "--device", "cpu"], check_zoo),
    "aevb.py": (["--quick", "--device", "cpu"], check_aevb),
    "estimators.py": (["--quick", "--device", "cpu"], check_estimators),
    "burda_table1.py": (["--quick", "--device", "cpu", "--jit"], check_burda),
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
    check = QUICK_RUNS[script][1]
    if script == "benchmark.py":
        assert out.with_suffix(".md").read_text().startswith("# Benchmark")
    if out.is_file():  # scripts that write one JSON file
        check(json.loads(out.read_text()))
    else:  # scripts that write a results folder named after --out
        folder = out.with_suffix("")
        check(json.loads((folder / "report.json").read_text()), folder)
