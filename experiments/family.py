"""The VAE family on one data set: every shipped pair trained with its own objective, then scored by the
same code, sample quality included.

For each pair named by ``--models`` (default: every pair registered in ``pyro_vae.models.MODELS`` when the
script runs, except those that need class labels, e.g. ``conditional``; a name not registered is skipped
with a message), the shipped pair with its default options is trained with its own default objective
(``default_elbo``: ``trace`` for most, ``vq``, ``wae``, ``baseline``, ``enum``, ...; a VAE-GAN with its
discriminator phase, as ``pyro-vae train`` does) through ``pyro_vae.train``: Adam (``--lr`` 1e-3), batch 100,
``--epochs`` epochs of the training images (dynamically binarized), seed ``--seed``. Then, per pair:

* seconds per epoch (SVI steps only, mean over the epochs) and the number of parameters (every net of the
  pair's module: a VAE-GAN's discriminator and a score-function pair's baseline included);
* the test ELBO (one sample per datapoint, ``pyro_vae.evaluate_elbo``, all test images), where it is
  defined; ``-inf`` for a point mass over a continuous latent (WAE), recorded with the reason;
* the training objective's value on the first ``--num-eval`` test images (minus its loss per image, in
  minibatches of 100), labelled with what the objective is (an ELBO, the VQ-VAE loss, WAE-MMD, ...);
* the reconstruction error: binary cross-entropy between each of the first ``--num-eval`` (binary) test
  images and the mean of ``p(x | z)`` for one ``z ~ q(z | x)``, clamped to [1e-6, 1 - 1e-6], summed over
  pixels (nats per image; the same definition for every row, whatever the pair's likelihood);
* log p̂(x) with K = ``--num-samples`` importance samples on the first ``--num-eval`` test images, or the
  estimator's refusal (a point-mass guide: VQ-VAE, WAE) in words;
* the Fréchet distance (FD) between ``--num-fd-samples`` samples (means of ``p(x | z)``, ``z ~ p(z)``) and
  the grey-level test images, in the feature space of a small MLP classifier trained here on the training
  images (``pyro_vae.evaluation.frechet``; cached as ``feature_net.pt`` in ``--out``). **Not the Inception
  FID**, not comparable with published FIDs. Also for the same pair untrained, and two controls: the test
  images against themselves (0 up to round-off) and as many training images (the floor at that sample size).

Writes ``--out``: ``summary.md`` (the table), ``report.json``, ``samples_<model>.png`` (100 samples each)
and ``samples.png`` (test images, then 10 samples per pair, one row each).

    python experiments/family.py --out experiments/results/family                  # all pairs, 10 epochs
    python experiments/family.py --models mlp vq wae --epochs 3 --out /tmp/family   # a few
    python experiments/family.py --quick --out /tmp/family                          # seconds, for the tests

Resumable: each pair trains into its own run folder under ``--runs-dir`` (default ``runs/<name of --out>``)
and keeps its evaluation in ``<run folder>/evaluation.json``; rerunning the same command reloads what
finished and continues the rest; ``--time-limit SECONDS`` stops cleanly.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from pathlib import Path

import _runs  # experiments/_runs.py
import pyro
import torch

import pyro_vae
from pyro_vae.cli.args import add_experiment_args
from pyro_vae.data import load_dataset
from pyro_vae.evaluation.frechet import FeatureNet, frechet_distance, train_feature_classifier
from pyro_vae.evaluation.rng import forked_rng, seed_minibatch
from pyro_vae.generate import reconstruct, sample_prior
from pyro_vae.models import MODELS, build_model, model_options
from pyro_vae.objectives import elbo_label, get_elbo
from pyro_vae.plots import save_image_grid
from pyro_vae.training import pair_phases

QUICK_SIZES = {"hidden_dim": 32, "latent_dim": 4}
CHUNK = 1000  # samples drawn, images reconstructed per call


def build(name: str, data, args):
    """The shipped pair ``name`` (default options; small nets with ``--quick``), seeded by ``--seed``."""
    options = {"image_shape": data.image_shape} if "image_shape" in model_options(name) else {}
    if args.quick:
        options.update({k: v for k, v in QUICK_SIZES.items() if k in model_options(name)})
    pyro.set_rng_seed(args.seed)
    return build_model(name, data.data_dim, **options).to(args.device)


def objective_and_phases(vae) -> tuple:
    """The pair's own objective (``default_elbo``) and its extra training phases (a discriminator's), as
    ``pyro-vae train`` builds them (:func:`pyro_vae.training.pair_phases`): ``(objective, phases)``."""
    objective, _, phases = pair_phases(vae, getattr(vae, "default_elbo", "trace"))
    return objective, phases


def labels_for(vae, labels: torch.Tensor | None, n: int) -> tuple:
    """``(y,)`` with ``n`` rows for a pair that takes labels (the test labels, repeated), else ``()``."""
    return (labels.repeat(-(-n // len(labels)))[:n],) if vae.needs_labels else ()


def draw_samples(vae, n: int, data, seed: int) -> torch.Tensor:
    """``(n, D)`` means of ``p(x | z)``, ``z ~ p(z)``, clamped to [0, 1]; seeded, the caller's RNG left alone."""
    out, y = [], labels_for(vae, data.test_labels, n)
    with forked_rng(data.device):
        for i, start in enumerate(range(0, n, CHUNK)):
            seed_minibatch(seed + i, data.device)
            rows = slice(start, min(start + CHUNK, n))
            like = torch.zeros(rows.stop - rows.start, data.data_dim, device=data.device)
            out.append(sample_prior(vae.model, like, *(a[rows] for a in y)).clamp(0, 1))
    return torch.cat(out)


def reconstruction_bce(vae, x: torch.Tensor, labels, seed: int) -> tuple[float, float]:
    """Mean and SE over images of ``BCE(x, E[x | z])``, ``z ~ q(z | x)`` one draw, nats per image."""
    y, per_image = labels_for(vae, labels, len(x)), []
    with forked_rng(x.device):
        for i, start in enumerate(range(0, len(x), CHUNK)):
            seed_minibatch(seed + i, x.device)
            rows = slice(start, start + CHUNK)
            p = reconstruct(vae.model, vae.guide, x[rows], *(a[rows] for a in y)).double().clamp(1e-6, 1 - 1e-6)
            per_image.append(torch.nn.functional.binary_cross_entropy(p, x[rows].double(), reduction="none").sum(-1))
    per_image = torch.cat(per_image)
    return float(per_image.mean()), float(per_image.std() / math.sqrt(len(per_image)))


def objective_on_test(vae, objective, x: torch.Tensor, labels, seed: int) -> dict:
    """Minus the training objective's loss per image on ``x`` (minibatches of 100), labelled."""
    evaluator = get_elbo(objective, max_plate_nesting=1) if isinstance(objective, str) else objective
    y, total = labels_for(vae, labels, len(x)), 0.0
    try:
        with forked_rng(x.device):  # no torch.no_grad: an objective may check that its loss has a gradient
            for i, start in enumerate(range(0, len(x), 100)):
                seed_minibatch(seed + i, x.device)
                total += evaluator.loss(vae.model, vae.guide, x[start:start + 100], *(a[start:start + 100] for a in y))
    except (ValueError, NotImplementedError, pyro_vae.ModelGuideError) as e:
        return {"objective_value": None, "objective_failed": str(e)}
    return {"objective_value": -total / len(x), "objective_failed": None}


def elbo_undefined_reason(vae, data) -> str:
    """Why the test ELBO is not finite: the warning ``evaluate_elbo`` gives on two test images."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pyro_vae.evaluate_elbo(vae.model, vae.guide, data.test[:2], 2, *labels_for(vae, data.test_labels, 2))
    return str(caught[0].message) if caught else "the ELBO is not finite"


def log_likelihood(vae, data, args) -> dict:
    """log p̂(x) ± SE on the first ``--num-eval`` test images, or the estimator's refusal."""
    n = min(args.num_eval, len(data.test))
    try:
        estimate = pyro_vae.estimate_log_likelihood(vae.model, vae.guide, data.test[:n], args.num_samples,
                                                    args.eval_batch_size, *labels_for(vae, data.test_labels, n),
                                                    seed=args.seed)
    except pyro_vae.ModelGuideError as e:  # a point-mass guide: no log p̂(x), its refusal says why
        return {"log_likelihood": None, "log_likelihood_se": None, "log_likelihood_refused": str(e)}
    return {"log_likelihood": estimate.mean, "log_likelihood_se": estimate.stderr, "log_likelihood_refused": None}


def evaluate(name: str, vae, objective, data, fd, args) -> dict:
    """Every number of the pair's row that needs the trained weights (the test ELBO comes from training)."""
    n = min(args.num_eval, len(data.test))
    x, labels = data.test[:n], data.test_labels[:n] if data.test_labels is not None else None
    bce, bce_se = reconstruction_bce(vae, x, labels, args.seed)
    samples = draw_samples(vae, args.num_fd_samples, data, args.seed)
    return {"reconstruction_bce": bce, "reconstruction_bce_se": bce_se, "eval_images": n,
            "num_samples": args.num_samples, **log_likelihood(vae, data, args),
            **objective_on_test(vae, objective, x, labels, args.seed),
            "fd": frechet_distance(fd["net"].features(samples), fd["reference"])}


def run_one(name: str, data, fd, folder: Path, args) -> dict:
    """Score the untrained pair, train it (resume, or reload) into ``folder``, then evaluate it once."""
    vae = build(name, data, args)
    objective, phases = objective_and_phases(vae)
    wanted = {"epochs": args.epochs, "num_samples": args.num_samples, "num_eval": args.num_eval,
              "num_fd_samples": args.num_fd_samples, "feature_net": fd["checksum"], "seed": args.seed,
              "lr": args.lr, "num_train": len(data.train)}
    saved_path = folder / "evaluation.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
    fresh = saved is None or any(saved.get(k) != v for k, v in wanted.items())
    if fresh:  # the same seeded weights as the run starts from
        start = time.perf_counter()
        pyro.clear_param_store()  # another pair's nets may be stored under the same names
        untrained_fd = frechet_distance(fd["net"].features(draw_samples(vae, args.num_fd_samples, data, args.seed)),
                                        fd["reference"])
    _runs.train_or_load(vae.model, vae.guide, data, folder, args.checkpoint_every, args.epochs, elbo=objective,
                        labels=vae.needs_labels, lr=args.lr, batch_size=100, seed=args.seed, progress=False,
                        log_interval=10**9, step=args.step, **({"phases": phases} if phases else {}))
    if fresh:
        untrained_seconds, start = time.perf_counter() - start, time.perf_counter()
        saved = {**wanted, **evaluate(name, vae, objective, data, fd, args), "untrained_fd": untrained_fd}
        saved["eval_seconds"] = untrained_seconds + time.perf_counter() - start  # training excluded
        saved_path.write_text(json.dumps(saved, allow_nan=False))
    history = _runs.history(folder)
    elbo, elbo_se = history[-1]["test_elbo"], history[-1]["test_elbo_se"]
    defined = elbo is not None and math.isfinite(elbo)  # metrics.jsonl writes a -inf ELBO as null (non_finite)
    samples = draw_samples(vae, 100, data, args.seed + 1)
    save_image_grid(samples, data.image_shape, args.out / f"samples_{name}.png", title=f"{name}: E[x | z], z ~ p(z)")
    return {"model": name, "description": MODELS[name].description, "objective": _objective_name(objective),
            "objective_label": elbo_label(objective),
            "parameters": sum(p.numel() for p in vae.parameters()), "epochs": len(history),
            "seconds_per_epoch": sum(h["train_seconds"] for h in history) / len(history),
            "test_elbo": elbo if defined else None,
            "test_elbo_se": elbo_se if defined else None,
            "test_elbo_undefined": None if defined else elbo_undefined_reason(vae, data),
            **{k: v for k, v in saved.items() if k not in wanted}, "picture_samples": samples[:10].cpu()}


def feature_space(args, grey) -> dict:
    """The classifier (trained once, cached in ``--out``), the reference features and the control rows."""
    path = args.out / "feature_net.pt"
    settings = {"dataset": args.dataset, "epochs": args.classifier_epochs, "seed": args.seed,
                "num_train": args.classifier_train}
    net = FeatureNet.load(path, args.device) if path.is_file() else None
    if net is None or any(net.info.get(k) != v for k, v in settings.items()):
        net = train_feature_classifier(grey.train[:args.classifier_train], grey.train_labels[:args.classifier_train],
                                       args.classifier_epochs, args.seed, args.device, test_x=grey.test,
                                       test_y=grey.test_labels)
        net.info.update(settings)
        net.save(path)
        print(f"feature classifier: {100 * net.info['test_accuracy']:.2f} % test accuracy, "
              f"{net.info['train_seconds']:.0f} s", flush=True)
    reference = net.features(grey.test[:args.num_reference])
    real = net.features(grey.train[-args.num_fd_samples:])
    controls = [{"model": "test images (the reference itself)", "fd": frechet_distance(reference, reference)},
                {"model": f"training images ({len(real)}, real data)", "fd": frechet_distance(real, reference)}]
    checksum = float(sum(p.detach().double().sum() for p in net.parameters()))
    return {"net": net, "reference": reference, "controls": controls, "checksum": checksum}


def _cell(value, se=None, digits=2, missing="—") -> str:
    if value is None:
        return missing
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def markdown(report: dict) -> str:
    c = report["classifier"]
    schedule = (f"Schedule: {report['epochs']} epoch(s) of {report['num_train']} training images (dynamically "
                f"binarized), Adam {report['lr']:g}, batch 100, seed {report['seed']}; each pair with its own "
                f"objective. Test ELBO (one sample) on all {report['num_test']} test images; objective, reconstruction "
                f"BCE and log p̂(x) (K = {report['num_samples']}) on the first {report['num_eval']}. Nats per image. "
                "Objective on test: minus the training objective's loss per image (minibatches of 100): an ELBO for "
                "trace, enum, baseline; the VQ-VAE's loss; WAE-MMD's reconstruction + lambda MMD² and WAE-GAN's "
                "reconstruction + lambda sum softplus(-D(z)) (not bounds); for the VAE-GAN its ELBO (the value of its "
                "objective; the discriminator terms shape only the gradient). Parameters: every net of the pair (discriminators "
                "and baselines included).")
    fd = (f"FD: Fréchet distance between {report['num_fd_samples']} samples (E[x | z], z ~ p(z)) and "
          f"{report['num_reference']} grey-level test images, in the {c['features']}-dimensional penultimate layer of "
          f"an MLP classifier ({c['architecture']}, {c['epochs']} epochs on {c['num_train']} training images, "
          f"{100 * c['test_accuracy']:.2f} % test accuracy). **This is not the Inception FID** and is not comparable "
          "with published FIDs; lower is better. A few grossly wrong samples (an inverted, white image) weigh heavily.")
    header = ("| model | objective | parameters | s / epoch | test ELBO ± SE | objective on test | "
              "reconstruction BCE ± SE | log p̂(x) ± SE | FD untrained | FD |")
    lines = [f"# The VAE family on {report['dataset']} ({report['machine']}, {report['device']})", "", schedule, "",
             fd, "", header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        refused = f"refused: {_short(r['log_likelihood_refused'])}"
        ll = _cell(r["log_likelihood"], r["log_likelihood_se"], missing=refused)
        elbo = _cell(r["test_elbo"], r["test_elbo_se"], missing=f"-inf: {_short(r['test_elbo_undefined'])}")
        objective = _cell(r["objective_value"], missing=f"failed: {_short(r['objective_failed'])}")
        lines.append(f"| {r['model']} | {r['objective']} | {r['parameters']:,} | {r['seconds_per_epoch']:.1f} | "
                     f"{elbo} | {objective} | {_cell(r['reconstruction_bce'], r['reconstruction_bce_se'])} | "
                     f"{ll} | {_cell(r['untrained_fd'], digits=1)} | {_cell(r['fd'], digits=1)} |")
    for r in report["controls"]:
        lines.append(f"| {r['model']} | — | — | — | — | — | — | — | — | {r['fd']:.3g} |")
    if report["skipped"]:
        lines += ["", "Not registered in pyro_vae.models.MODELS, skipped: " + ", ".join(report["skipped"]) + "."]
    pictures = ("Pictures: `samples.png` (first row test images, then one row per pair, in the table's order), "
                "`samples_<model>.png`. A VQ-VAE's samples come from its uniform prior over code maps (the paper "
                "fits a PixelCNN prior afterwards; not done here).")
    return "\n".join([*lines, "", pictures]) + "\n"


def _objective_name(objective) -> str:
    """A name as it is; an object as its class, with the objective it wraps (``VAEGANLoss(trace)``)."""
    if isinstance(objective, str):
        return objective
    inner = getattr(objective, "elbo", None)
    return type(objective).__name__ + (f"({_objective_name(inner)})" if inner is not None else "")


def _short(text: str | None) -> str:
    """The first clause of a refusal, for a table cell (report.json has it whole)."""
    return (text or "").split(":")[0].split(";")[0].replace("|", "/")


def arguments(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=[n for n, cls in MODELS.items() if not cls.needs_labels],
                   help="pairs by name (default: every registered pair that needs no labels); names not "
                        "registered are skipped with a message")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("--num-train", type=int, default=None, help="first N training images (default: all)")
    p.add_argument("--num-test", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--num-samples", type=int, default=1000, help="K for log p̂(x)")
    p.add_argument("--num-eval", type=int, default=1000, help="test images for log p̂(x), BCE, objective")
    p.add_argument("--eval-batch-size", type=int, default=50, help="datapoints per chunk of the estimator")
    p.add_argument("--num-fd-samples", type=int, default=10000, help="samples per pair for the FD")
    p.add_argument("--num-reference", type=int, default=10000, help="test images the FD compares with")
    p.add_argument("--classifier-epochs", type=int, default=10)
    p.add_argument("--classifier-train", type=int, default=60000, help="training images of the classifier")
    add_experiment_args(p, out="results/family", quick="3000 training images, 1 epoch, small nets, 500 test "
                        "images, K=10 on 50, FD of 500 samples against 500 test images, classifier: 5000 images, "
                        "2 epochs")
    _runs.add_run_args(p, checkpoint_every=2000)
    args = p.parse_args(argv)
    if args.out.suffix == ".json":  # the test harness passes a file name: use its folder
        args.out = args.out.with_suffix("")
    if args.quick:
        args.num_train, args.num_test, args.epochs, args.num_samples, args.num_eval = 3000, 500, 1, 10, 50
        args.num_fd_samples, args.num_reference, args.classifier_epochs, args.classifier_train = 500, 500, 2, 5000
    return args


def main(argv=None) -> None:
    args = arguments(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.dataset, args.data_dir, device=args.device)
    grey = load_dataset(args.dataset, args.data_dir, device=args.device, binarize=False)  # the FD's images
    data = data.subset(num_train=args.num_train, num_test=args.num_test)
    fd = feature_space(args, grey)
    skipped = [name for name in args.models if name not in MODELS]
    for name in skipped:
        print(f"{name}: not registered in pyro_vae.models.MODELS ({', '.join(MODELS)}); skipped", flush=True)
    runs, deadline = _runs.runs_dir_for(args), _runs.Deadline(args.time_limit)
    rows, stopped = [], None
    for name in (n for n in args.models if n in MODELS):
        if deadline.passed():
            stopped = f"time limit reached before {name}"
            break
        try:
            with deadline.guard():
                rows.append(run_one(name, data, fd, runs / f"{args.dataset}_{name}", args))
        except (pyro_vae.TrainingInterrupted, _runs.DeadlineReached) as e:
            stopped = f"{name}: {e}"
            break
        r = rows[-1]
        print(f"{name:12s} test ELBO {_cell(r['test_elbo'], r['test_elbo_se'], missing='-inf')}  BCE "
              f"{r['reconstruction_bce']:.2f}  log p̂(x) {_cell(r['log_likelihood'], missing='refused')}  FD "
              f"{r['fd']:.2f} (untrained {r['untrained_fd']:.1f})  {r['seconds_per_epoch']:.1f} s/epoch", flush=True)
    pictures = [grey.test[:10].cpu(), *(r.pop("picture_samples") for r in rows)]
    save_image_grid(torch.cat(pictures), data.image_shape, args.out / "samples.png",
                    title="rows: test images, " + ", ".join(r["model"] for r in rows))
    net = fd["net"]
    classifier = {**net.info, "architecture": "-".join(map(str, (net.data_dim, *net.hidden, net.num_classes))),
                  "features": net.hidden[-1]}
    report = {"dataset": args.dataset, "device": str(args.device), "torch": torch.__version__,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "epochs": args.epochs,
              "num_train": len(data.train), "num_test": len(data.test), "lr": args.lr, "seed": args.seed,
              "quick": args.quick,
              "num_samples": args.num_samples, "num_eval": min(args.num_eval, len(data.test)),
              "num_fd_samples": args.num_fd_samples, "num_reference": len(fd["reference"]),
              "classifier": classifier, "fd_note": "Fréchet distance in the feature space of the classifier "
              "above, trained here: not the Inception FID, not comparable with published FIDs",
              "controls": fd["controls"], "rows": rows, "skipped": skipped, "stopped": stopped,
              "finished": [r["model"] for r in rows]}
    (args.out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    (args.out / "summary.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / 'report.json'} and {args.out / 'summary.md'}")
    if stopped:
        print(f"stopped ({stopped}); rerun the same command to continue from the checkpoints", flush=True)


if __name__ == "__main__":
    main()
