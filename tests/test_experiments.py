"""Every script in experiments/ runs in its --quick mode; a script missing here fails the suite.
(Helper modules, ``experiments/_*.py``, are not scripts.)"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

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

    assert [r["model"] for r in report["rows"]] == [m for m in MODELS if m not in ("wae", "wae-gan")]  # no ELBO
    for r in report["rows"]:
        # one epoch on 1000 points improves on the same pair untrained (about -540 nats), by more
        # than 5 standard errors of the two estimates
        gain, se = r["test_elbo"] - r["untrained_elbo"], (r["test_elbo_se"] ** 2 + r["untrained_elbo_se"] ** 2) ** 0.5
        assert gain > 5 * se, r["model"]
        if r["model"] == "vq":  # a point-mass posterior: the estimator refuses, naming why
            assert r["log_likelihood"] is None and "gives probability 0" in r["log_likelihood_refused"]
        else:
            assert r["log_likelihood"] >= r["test_elbo"] - 3 * r["test_elbo_se"], r["model"]


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


def handwritten_log_likelihood(vae, x, num_samples, generator):
    """log p̂(x) = log (1/K) sum_k p(x, z_k) / q(z_k | x) for Burda's stochastic layers, written with
    torch alone (no Pyro, no pyro_vae estimator): z_1 ~ q(z_1 | x), z_l ~ q(z_l | z_{l-1}); the
    prior N(0, I) on the top layer, p(z_l | z_{l+1}) below it, Bernoulli(logits) pixels."""
    from torch.distributions import Normal

    log_w = []
    with torch.no_grad():
        for _ in range(num_samples):
            h, zs, log_q = x, [], 0.0
            for encoder in vae.encoder:
                loc, scale = encoder(h)
                h = loc + scale * torch.randn(loc.shape, generator=generator)
                log_q = log_q + Normal(loc, scale).log_prob(h).sum(-1)
                zs.append(h)
            log_p = Normal(0.0, 1.0).log_prob(zs[-1]).sum(-1)
            for layer in reversed(range(len(zs) - 1)):
                loc, scale = vae.decoder[layer](zs[layer + 1])
                log_p = log_p + Normal(loc, scale).log_prob(zs[layer]).sum(-1)
            logits = vae.decoder[-1](zs[0])
            log_p = log_p - torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
            log_w.append((log_p - log_q).double())
    return torch.logsumexp(torch.stack(log_w), 0) - math.log(num_samples)


def check_burda(report, folder, data_root):
    from pyro_vae.data import load_dataset
    from pyro_vae.models import HierarchicalVAE
    from pyro_vae.training.checkpoint import load_checkpoint

    rows = report["rows"]
    assert [(r["layers"], r["objective"], r["k"]) for r in rows] == [
        (layers, obj, k) for layers in (1, 2) for obj in ("VAE", "IWAE") for k in (1, 5)]
    assert all(r["finished"] and r["epochs"] == r["epochs_asked"] == 2 for r in rows)
    assert all(r["active_units"].count("+") == r["layers"] - 1 for r in rows)
    assert all(r["paper_nll"] is not None for r in rows)  # the paper's Table 1 has every cell, k = 5 included
    for r in rows:  # from the same samples: log p̂_K >= IWAE_5 >= IWAE_1 (concavity of log), up to rounding
        bounds = {int(k): mean for k, (mean, _) in r["iwae_bounds"].items()}
        assert -r["nll"] >= bounds[5] - 1e-9 and bounds[5] >= bounds[1] - 1e-9
    # The reference: each cell's trained weights (its last checkpoint) and an independent importance sampler
    # written with torch alone, with as many samples (K = 20) on the same 50 test points. Both estimate
    # E[log p̂_20(x)] per datapoint, so the mean of the per-datapoint differences must be 0 within its standard
    # error; a wrong estimator (a missing -log K is 3.0 nats, the ELBO instead of log p̂ is 1-4 nats here) or
    # wrong weights fail by many standard errors.
    x = load_dataset("mnist", data_root, download=False).subset(num_train=500, num_test=50).test
    generator = torch.Generator().manual_seed(1234)
    for r in rows:
        cell = folder / "runs" / f"L{r['layers']}_{r['objective']}_k{r['k']}"
        ours = torch.tensor(json.loads((cell / "evaluation.json").read_text())["log_likelihood"], dtype=torch.float64)
        pyro.clear_param_store()  # else the previous cell's parameters, stored under the same names, are reused
        vae = HierarchicalVAE(784, stochastic_layers=r["layers"], latent_dim=5, hidden_dim=20)
        load_checkpoint(cell / "stage1" / "checkpoint.pt", vae.model, vae.guide, x[:2])
        reference = handwritten_log_likelihood(vae, x, r["num_samples"], generator)
        diff = ours - reference
        se = float(diff.std() / math.sqrt(len(diff)))
        assert abs(r["nll"] + float(ours.mean())) < 1e-4  # the reported number is the per-datapoint mean
        assert abs(float(diff.mean())) < 4 * se + 1e-3, (r, float(diff.mean()), se)


def check_reproduce(report, folder):
    plan = json.loads((folder / "plan.json").read_text())
    assert {q["part"] for q in plan["parts"]} == {"aevb-mnist-1e8", "estimators", "burda-full"}
    assert all(q["seconds"] > 0 and q["steps"] > 0 for q in plan["parts"])
    assert [q["seconds"] for q in plan["parts"]] == sorted(q["seconds"] for q in plan["parts"])  # cheapest first
    assert all(s["returncode"] == 0 for s in report) and len(report) == 3
    assert plan["step"] == "eager" and all(s["command"][s["command"].index("--step") + 1] == "eager" for s in report)
    for part in ("aevb-mnist-1e8", "estimators", "burda-full"):
        assert (folder / part / "summary.md").stat().st_size > 0, part


def check_m2(report, folder):
    from pyro_vae.data import load_dataset
    from pyro_vae.models import SemiSupervisedVAE
    from pyro_vae.training.checkpoint import load_checkpoint

    (row,) = report["rows"]
    assert row["num_labels"] == 100 and row["finished"] and row["repeat"] >= 1
    assert row["paper_error_percent"] == [11.97, 1.71] and "11.97 ± 1.71" in (folder / "summary.md").read_text()
    assert row["test_elbo"] > -544 and row["log_likelihood"] >= row["test_elbo"] - 3 * row["test_elbo_se"]
    assert (folder / "analogies_100.png").read_bytes()[:4] == b"\x89PNG"
    # the reported error, recomputed from the run's checkpoint by hand on the same test images
    test = load_dataset("mnist", None, download=False).subset(num_train=2000, num_test=200)
    pyro.clear_param_store()
    vae = SemiSupervisedVAE(784, latent_dim=5, hidden_dim=50)
    load_checkpoint(Path(row["run_folder"]) / "checkpoint.pt", vae.model, vae.guide, test.test[:2])
    with torch.no_grad():
        error = 100.0 * float((vae.classifier(test.test).argmax(-1) != test.test_labels).float().mean())
    assert row["test_error_percent"] == pytest.approx(error, abs=1e-9)


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
            (o, v) for o in ("trace", "meanfield", "iwae")
            for v in ("eager", "compiled:replay", "pyro-optim", "pyro-svi")} | {
            ("trace", "pyro-elbo"), ("meanfield", "pyro-elbo")}  # Pyro has no IWAE class of these
        for row in m["steps"]:  # break-even: the set-up time over the time saved a step against eager
            if row["variant"] == "compiled:replay":
                eager = next(r for r in m["steps"] if r["variant"] == "eager" and r["objective"] == row["objective"])
                saved_ms = eager["toolkit_ms_per_step"] - row["toolkit_ms_per_step"]
                expected = math.ceil(1000 * row["setup_s"] / saved_ms) if saved_ms > 0 else None
                assert row["break_even_steps"] == expected and row["setup_s"] > 0
        check_eval_throughput({"measurements": [m["evaluation"]]})


def check_gradient_snr(report, folder):
    estimators, ks = report["snr"]["estimators"], report["snr"]["ks"]
    assert estimators == ["iwae", "iwae-stl", "dreg", "miwae", "piwae", "ciwae"] and ks == [1, 4, 16]
    cells = {(c["estimator"], c["k"]): c for c in report["snr"]["cells"]}
    assert set(cells) == {(e, k) for e in estimators for k in ks}  # every estimator at every K
    for c in cells.values():
        for net in ("encoder", "decoder"):
            assert math.isfinite(c[net]["snr_mean"]) and c[net]["snr_mean"] > 0, (c["label"], c["k"], net)
            assert math.isfinite(c[net]["snr_median"]) and c[net]["snr_median"] > 0, (c["label"], c["k"], net)
    # The same draws for every estimator at a given K: gradients that are equal by construction must agree to
    # float rounding (relative 3e-6 measured). At every K the decoder gradient of iwae-stl, dreg and piwae is
    # IWAE_K's; at K = 1 iwae, miwae, piwae, ciwae and Trace_ELBO all give the reparameterized ELBO gradient,
    # and iwae-stl's and dreg's encoder gradient is STL_ELBO's. A wrong coefficient, a score term where none
    # belongs or a missing one, or draws that differ between estimators, fail by orders of magnitude.
    rows = report["snr"]["identities"]
    checked = {(r["a"], r["b"], r["net"], r["k"]) for r in rows if r["expected_equal"]}
    assert {("dreg", "iwae", "decoder", k) for k in ks} | {("piwae", "iwae", "decoder", k) for k in ks} <= checked
    assert {("trace", "iwae", "encoder", 1), ("trace", "iwae", "decoder", 1), ("dreg", "stl", "encoder", 1),
            ("iwae-stl", "stl", "encoder", 1), ("miwae", "iwae", "encoder", 1),
            ("ciwae", "iwae", "encoder", 1)} <= checked
    assert all(r["relative_difference"] < 1e-4 for r in rows if r["expected_equal"]), rows
    # ... and the check has power: DReG's encoder gradient is not IWAE's (no score term at K = 1, w~^2 for K > 1)
    assert all(r["relative_difference"] > 1e-3 for r in rows if not r["expected_equal"])
    # equal gradients on all R draws give equal SNRs
    for k in ks:
        for e in ("iwae-stl", "dreg", "piwae") if k > 1 else estimators:
            assert cells[(e, k)]["decoder"]["snr_mean"] == pytest.approx(cells[("iwae", k)]["decoder"]["snr_mean"],
                                                                           rel=1e-3), (e, k)
    for e in ("miwae", "piwae", "ciwae"):
        iwae = cells[("iwae", 1)]["encoder"]["snr_mean"]
        assert cells[(e, 1)]["encoder"]["snr_mean"] == pytest.approx(iwae, rel=1e-3), e
    assert cells[("dreg", 1)]["encoder"]["snr_mean"] == pytest.approx(cells[("iwae-stl", 1)]["encoder"]["snr_mean"],
                                                                     rel=1e-3)
    # bounds of the same draws: iwae, iwae-stl, dreg and piwae all take IWAE_K; MIWAE(M, K/M) and CIWAE are below it
    # draw by draw (Jensen; beta ELBO + (1 - beta) IWAE_K <= IWAE_K); all equal at K = 1
    for k in ks:
        iwae = cells[("iwae", k)]["bound_mean"]
        for e in ("iwae-stl", "dreg", "piwae") if k > 1 else estimators:
            assert cells[(e, k)]["bound_mean"] == pytest.approx(iwae, abs=1e-2), (e, k)
        assert cells[("miwae", k)]["bound_mean"] <= iwae + 1e-2 and cells[("ciwae", k)]["bound_mean"] <= iwae + 1e-2
    # IWAE_K grows with K in expectation (Burda et al. 2015); independent draws per K, so within 4 standard errors
    for k1, k2 in zip(ks, ks[1:]):
        a, b = cells[("iwae", k1)], cells[("iwae", k2)]
        assert b["bound_mean"] >= a["bound_mean"] - 4 * math.hypot(a["bound_se"], b["bound_se"]), (k1, k2)
    # part 2: every estimator, the same budget, and log p̂(x) >= IWAE_k >= ELBO from the same samples
    train = report["training"]
    assert [r["estimator"] for r in train["rows"]] == estimators
    assert len({r["steps"] for r in train["rows"]}) == 1 and train["rows"][0]["steps"] == train["steps"] > 0
    k = str(train["k"])
    for r in train["rows"]:
        assert math.isfinite(r["log_likelihood"]) and r["log_likelihood_se"] > 0
        bound_k, elbo = r["iwae_bounds"][k][0], r["iwae_bounds"]["1"][0]
        assert r["log_likelihood"] >= bound_k - 1e-9 and bound_k >= elbo - 1e-9, r["estimator"]
    iwae_ll = train["rows"][0]["log_likelihood"]
    assert [p["estimator"] for p in train["paired"]] == estimators[1:]
    for p, r in zip(train["paired"], train["rows"][1:]):
        assert p["mean_b"] == pytest.approx(iwae_ll) and p["mean_a"] == pytest.approx(r["log_likelihood"])
        assert p["difference"] == pytest.approx(r["log_likelihood"] - iwae_ll, abs=1e-9) and p["paired_stderr"] > 0
    assert (folder / "snr.png").read_bytes()[:4] == b"\x89PNG"
    summary = (folder / "summary.md").read_text()
    assert "## 1. Gradient signal-to-noise ratio" in summary and "## 2. Bound after a fixed budget" in summary


def check_autoguide(report):
    rows = {(r["model"], r["guide"]): r for r in report["rows"]}
    assert set(rows) == {(m, g) for m in ("mlp", "hierarchical") for g in ("hand-written", "autoguide")}
    for model in ("mlp", "hierarchical"):
        hand, auto = rows[(model, "hand-written")], rows[(model, "autoguide")]
        assert hand["decoder_init_sum"] == auto["decoder_init_sum"]  # the same seed: the same initial decoder
        diff = [a - b for a, b in zip(auto["per_datapoint"], hand["per_datapoint"])]
        (pair,) = [p for p in report["paired"] if p["model"] == model]
        assert pair["difference"] == pytest.approx(sum(diff) / len(diff), abs=1e-9)
    # the MLP autoguide has the hand-written encoder's layers (784-H trunk, H-L loc and scale heads)
    assert rows[("mlp", "autoguide")]["guide_parameters"] == rows[("mlp", "hand-written")]["guide_parameters"]
    # the hand-written hierarchical guide is bottom-up; the autoguide follows the model, top-down
    assert rows[("hierarchical", "hand-written")]["guide_order"] == ["z1", "z2"]
    assert rows[("hierarchical", "autoguide")]["guide_order"] == ["z2", "z1"]
    for r in report["rows"]:
        # one epoch on 1000 points improves on the same pair untrained by more than 5 standard errors, and
        # log p̂_K >= the ELBO of the same draws (log of a mean >= mean of the logs), datapoint by datapoint
        gain, se = r["test_elbo"] - r["untrained_elbo"], (r["test_elbo_se"] ** 2 + r["untrained_elbo_se"] ** 2) ** 0.5
        assert gain > 5 * se and r["log_likelihood"] >= r["elbo_same_points"] - 1e-9, (r["model"], r["guide"])


def check_deep(report, folder):
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["hierarchical", "iaf", "ladder", "nvae", "autoguide"] and report["stopped"] is None
    # the quick sizes: 3 ladder layers, 2 NVAE groups; the autoguide samples the hierarchical model's sites
    assert list(rows["ladder"]["active_units"]) == ["z3", "z2", "z1"]
    assert sorted(rows["nvae"]["active_units"]) == ["z1", "z2"]
    assert sorted(rows["autoguide"]["active_units"]) == sorted(rows["hierarchical"]["active_units"])
    for r in rows.values():
        # IWAE_K is at least the ELBO in expectation, on the same images (4 SE of the two estimates)
        assert r["log_likelihood"] >= r["eval_elbo"] - 4 * math.hypot(r["log_likelihood_se"], r["eval_elbo_se"]), r
        assert r["seconds_per_epoch"] > 0 and r["epochs"] == 1 and math.isfinite(r["log_likelihood"])
    assert rows["ladder"]["warmup_epochs"] == 1 and rows["iaf"]["warmup_epochs"] == 0
    assert (folder / "summary.md").read_text().count("\n| ") == 1 + len(rows)


def check_discrete(report):
    rows = {r["run"]: r for r in report["rows"]}
    assert list(rows) == ["concrete", "concrete-st", "concrete-8x2", "concrete-st-8x2", "bernoulli-sf",
                          "bernoulli-baseline", "bernoulli-enum"]
    for r in rows.values():
        # two epochs on 1000 points improve on the same pair untrained by more than 5 standard errors, and
        # log p̂_K >= the ELBO of the same draws (log of a mean >= mean of the logs), datapoint by datapoint
        gain, se = r["test_elbo"] - r["untrained_elbo"], math.hypot(r["test_elbo_se"], r["untrained_elbo_se"])
        assert gain > 5 * se and r["log_likelihood"] >= r["elbo_same_points"] - 1e-9, r["run"]
        if "exact_log_likelihood" in r:  # p̂(x) is unbiased for the exact sum over the 256 states
            assert abs(r["estimate_over_exact_ratio"] - 1) < 4 * r["estimate_over_exact_ratio_se"] + 1e-6, r["run"]
        assert ("relaxed_log_likelihood" in r) == (r["run"] in ("concrete", "concrete-8x2"))
        assert (0.5 <= r["temperature"] < 1.0) == r["run"].startswith("concrete")  # annealed, not below 0.5
    enum = rows["bernoulli-enum"]  # every weight sums the 256 states: the estimate is the exact log p(x)
    assert abs(enum["log_likelihood"] - enum["exact_log_likelihood"]) < 1e-3 and enum["gradient"]["variance_mean"] == 0
    exact, plain, baseline = report["same_weights"]
    assert exact["variance_mean"] == 0 and baseline["variance_mean"] < plain["variance_mean"]
    for r in (plain, baseline):  # both unbiased for the enumerated gradient: |mean - exact|^2 of the order of its noise
        assert r["squared_error_ratio"] < 3 and abs(r["projection"] - 1) < 4 * r["projection_se"], r


QUICK_RUNS = {
    "benchmark.py": (["--quick", "--device", "cpu"], check_benchmark),
    "eval_throughput.py": (["--quick", "--device", "cpu"], check_eval_throughput),
    "zoo.py": (["--quick", "--device", "cpu"], check_zoo),
    "aevb.py": (["--quick", "--device", "cpu"], check_aevb),
    "estimators.py": (["--quick", "--device", "cpu"], check_estimators),
    "burda_table1.py": (["--quick", "--device", "cpu", "--eager"], check_burda),
    "reproduce.py": (["--quick", "--device", "cpu", "--step", "eager"], check_reproduce),
    "m2.py": (["--quick", "--device", "cpu"], check_m2),
    "autoguide.py": (["--quick", "--device", "cpu"], check_autoguide),
    "gradient_snr.py": (["--quick", "--device", "cpu"], check_gradient_snr),
    "deep.py": (["--quick", "--device", "cpu"], check_deep),
    "discrete.py": (["--quick", "--device", "cpu"], check_discrete),
}


TESTED_ELSEWHERE = {"family.py": "tests/test_family_experiment.py (quick run, then a resumed rerun)"}
"""Experiments whose quick runs have a test file of their own."""


def test_every_experiment_is_listed():
    scripts = {p.name for p in EXPERIMENTS.glob("*.py") if not p.name.startswith("_")}
    listed = set(QUICK_RUNS) | set(TESTED_ELSEWHERE)
    assert scripts == listed, f"add {scripts - listed} to QUICK_RUNS"
    assert all((EXPERIMENTS.parent / path.split(" ")[0]).is_file() for path in TESTED_ELSEWHERE.values())


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
    elif script == "burda_table1.py":
        folder = out.with_suffix("")
        check(json.loads((folder / "report.json").read_text()), folder, data_root)
    else:  # scripts that write a results folder named after --out
        folder = out.with_suffix("")
        report = folder / ("status.json" if script == "reproduce.py" else "report.json")
        check(json.loads(report.read_text()), folder)


def test_aevb_resumes_and_skips_finished_runs(data_root, tmp_path):
    """Stopped by --time-limit inside a run (a checkpoint, results so far, exit 143); rerun: it continues
    and finishes; a third run reloads every finished run without training."""
    out, runs = tmp_path / "aevb", tmp_path / "runs"
    cmd = [sys.executable, str(EXPERIMENTS / "aevb.py"), "--datasets", "frey-face", "--latent-dims", "3",
           "--no-manifold", "--frey-samples", "1.5e5", "--frey-repeat", "5", "--device", "cpu", "--out", str(out), "--runs-dir", str(runs),
           "--data-dir", str(data_root)]
    first = subprocess.run([*cmd, "--time-limit", "5"], capture_output=True, text=True)
    assert first.returncode == 143, first.stderr
    report = json.loads((out / "report.json").read_text())["runs"][0]
    assert not report["finished"] and report["schedule"]["epochs"] == 17
    assert (runs / "frey-face_nz3" / "checkpoint.pt").is_file()
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    report = json.loads((out / "report.json").read_text())["runs"][0]
    assert report["finished"] and report["epochs_done"] == 17 and report["epochs_this_invocation"] > 0
    third = subprocess.run(cmd, capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    assert json.loads((out / "report.json").read_text())["runs"][0]["epochs_this_invocation"] == 0


def test_reproduce_dry_run(data_root, tmp_path):
    """--dry-run measures every kind of step, prints the plan with its estimate and trains nothing."""
    out = tmp_path / "plan"
    proc = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "reproduce.py"), "--dry-run", "--device", "cpu", "--measure-steps", "3",
         "--measure-eval-points", "20", "--measure-eval-samples", "50", "--out", str(out), "--data-dir",
         str(data_root)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["dry_run"] and len(plan["measured"]["seconds_per_step"]) == 11
    assert all(v > 0 for v in plan["measured"]["seconds_per_step"].values())
    assert "Total estimate" in proc.stdout and "burda-full" in proc.stdout
    assert not (out / "runs").exists() and not (out / "status.json").exists()
