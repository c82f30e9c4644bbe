"""The command line, end to end, in real subprocesses."""

import argparse
import json
import subprocess
import sys

import pytest


def main_in_process(capsys, *args) -> tuple[int, str, str]:
    """``pyro-vae ARGS`` in this process (no interpreter start-up): ``(exit status, stdout,
    stderr)``; argparse's own exits (``--help``, ``--version``, bad choices) included."""
    from pyro_vae.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def run_cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "pyro_vae", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def test_train_then_evaluate_writes_every_promised_file(data_root, tmp_path):
    run = tmp_path / "run"
    run_cli("train", "--dataset", "mnist", "--num-train", "1000", "--num-test", "200", "--epochs", "2",
            "--latent-dim", "5", "--hidden-dim", "50", "--out", str(run), "--no-progress",
            "--evaluate-samples", "20", "--device", "cpu", "--data-dir", str(data_root))
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "samples.png", "reconstructions.png",
                 "elbo.png", "evaluation.json", "evaluation.png"):
        assert (run / name).is_file(), name
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"] == {"latent_dim": 5, "hidden_dim": 50, "likelihood": "bernoulli"}
    assert config["model"] == "mlp" and config["labels"] is False

    proc = run_cli("evaluate", str(run), "--num-samples", "100", "--num-test", "50", "--no-progress",
                   "--data-dir", str(data_root), "--output", str(tmp_path / "ev.json"))
    assert "log p̂(x), K = 100, 50 datapoints" in proc.stdout and "k=50" in proc.stdout
    assert (tmp_path / "ev.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "ev.json").read_text())
    summary = report["summary"]
    assert summary["num_samples"] == 100 and summary["num_datapoints"] == 50
    assert set(summary["iwae_bounds"]) == {"1", "5", "50", "100"}
    assert len(report["per_datapoint"]["pareto_k"]) == 50
    # the k = 1 bound is the ELBO; the K = 100 estimate lies above it
    assert summary["iwae_bounds"]["100"]["mean"] > summary["iwae_bounds"]["1"]["mean"]
    # the estimator's chunk compiled: the same seed's draws, the same estimate up to float rounding
    proc = run_cli("evaluate", str(run), "--num-samples", "100", "--num-test", "50", "--no-progress", "--step",
                   "compiled", "--data-dir", str(data_root), "--output", str(tmp_path / "compiled.json"))
    assert "cannot be compiled" not in proc.stderr, proc.stderr
    compiled = json.loads((tmp_path / "compiled.json").read_text())["per_datapoint"]["log_likelihood"]
    eager = report["per_datapoint"]["log_likelihood"]
    assert len(compiled) == 50 and max(abs(a - b) for a, b in zip(compiled, eager)) < 1e-4

    again = run_cli("train", "--num-train", "100", "--out", str(run), "--data-dir", str(data_root), check=False)
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_demo_quick(data_root, tmp_path):
    proc = run_cli("demo", "--num-train", "600", "--num-test", "100", "--epochs", "1", "--hidden-dim", "50",
                   "--num-samples", "50", "--num-eval", "30", "--out", str(tmp_path), "--no-progress",
                   "--data-dir", str(data_root))
    assert "objective" in proc.stdout and "\ntrace " in proc.stdout and "\nmeanfield " in proc.stdout
    assert (tmp_path / "summary.txt").read_text().strip() in proc.stdout
    assert (tmp_path / "elbo_comparison.png").is_file()
    for elbo in ("trace", "meanfield"):
        assert (tmp_path / elbo / "evaluation.json").is_file()


def test_missing_data_gives_clear_error(tmp_path, capsys):
    code, _, err = main_in_process(capsys, "train", "--data-dir", str(tmp_path), "--no-download",
                                   "--out", str(tmp_path / "r"))
    assert code == 2 and "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_unknown_names_list_the_choices(capsys):
    code, _, err = main_in_process(capsys, "train", "--dataset", "cifar")
    assert code == 2 and "binarized-mnist" in err
    code, _, err = main_in_process(capsys, "train", "--elbo", "renyi")
    assert code == 2 and "meanfield" in err and "dreg" in err


def test_version():
    assert run_cli("--version").stdout.startswith("pyro-vae ")  # the entry point, in a new interpreter


def test_models_lists_every_pair(capsys):
    from pyro_vae.models import MODELS

    _, out, _ = main_in_process(capsys, "models")
    for name, cls in MODELS.items():
        assert f"{name} " in out and cls.description in out
    assert "stochastic_layers=2" in out and "takes class labels y" in out


def test_zoo_model_from_the_cli_then_latent_pictures(data_root, tmp_path):
    run = tmp_path / "cvae"
    run_cli("train", "--model", "conditional", "--num-train", "500", "--num-test", "60", "--epochs", "1",
            "--latent-dim", "2", "--hidden-dim", "50", "--beta", "2", "--out", str(run), "--no-progress",
            "--device", "cpu", "--data-dir", str(data_root))
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "conditional" and config["model_config"]["beta"] == 2.0 and config["labels"]
    proc = run_cli("latent", str(run), "--num-test", "40", "--num-samples", "10", "--data-dir", str(data_root))
    for name in ("interpolation", "traversal", "anomalies"):
        assert (run / "latent" / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert f"{name}: " in proc.stdout
    proc = run_cli("train", "--model", "mlp", "--num-flows", "2", "--out", str(tmp_path / "x"),
                   "--data-dir", str(data_root), check=False)
    assert proc.returncode == 2 and "model 'mlp' does not take num_flows" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("sub", ["train", "evaluate", "demo", "latent"])
def test_help(sub, capsys):
    code, out, _ = main_in_process(capsys, sub, "--help")
    assert code == 0 and "usage" in out


def test_a_demo_run_resumes_with_its_own_objective(data_root, tmp_path):
    run_cli("demo", "--num-train", "200", "--num-test", "50", "--epochs", "1", "--hidden-dim", "20",
            "--num-samples", "10", "--num-eval", "10", "--out", str(tmp_path), "--no-progress",
            "--data-dir", str(data_root))
    run_cli("train", "--resume", str(tmp_path / "meanfield"), "--epochs", "2", "--no-progress",
            "--data-dir", str(data_root))
    metrics = [json.loads(line) for line in (tmp_path / "meanfield" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert json.loads((tmp_path / "meanfield" / "config.json").read_text())["elbo"] == "meanfield"


JIT_REMOVED = ("--jit was removed: the compiled SVI step replaces it and is the default (--step auto); "
               "--step compiled forces it, --eager turns it off")


def test_the_removed_jit_flag_says_what_replaces_it(capsys):
    code, _, err = main_in_process(capsys, "train", "--jit")
    assert code == 2 and JIT_REMOVED in err
    assert "--jit" not in main_in_process(capsys, "train", "--help")[1]
    from pyro_vae.cli.args import add_experiment_args  # the experiment scripts' options

    parser = argparse.ArgumentParser()
    add_experiment_args(parser, out="out", quick="tiny")
    assert [parser.parse_args(flags).step for flags in ([], ["--step", "compiled"], ["--eager"])] == [
        "auto", "compiled", "eager"]
    assert "jit" not in vars(parser.parse_args([]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--jit"])
    assert JIT_REMOVED in capsys.readouterr().err


def test_a_run_written_with_the_removed_jit_flag_resumes(data_root, tmp_path):
    """A run of ``pyro-vae train --jit`` from before the flag was removed: config.json records
    ``jit`` among the settings and the command-line options; ``--resume`` ignores it."""
    run = tmp_path / "run"
    run_cli("train", "--num-train", "200", "--num-test", "50", "--epochs", "1", "--latent-dim", "3",
            "--hidden-dim", "20", "--out", str(run), "--no-progress", "--device", "cpu", "--data-dir", str(data_root))
    config = json.loads((run / "config.json").read_text())
    config["jit"], config["cli"]["jit"] = True, True
    (run / "config.json").write_text(json.dumps(config))
    run_cli("train", "--resume", str(run), "--epochs", "2", "--no-progress", "--data-dir", str(data_root))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    config = json.loads((run / "config.json").read_text())
    assert "jit" not in config and "jit" not in config["cli"]
