"""The run folder: where a run's settings, metrics, checkpoints and pictures live on disk.

A run folder holds ``config.json`` (the resolved settings), ``metrics.jsonl`` (one line per
epoch), ``checkpoint.pt`` (the latest good state), ``best.pt`` (the epoch with the best
validation ELBO, when there is a validation set) and, once the run completes, ``elbo.png``,
``samples.png`` and ``reconstructions.png``. Every file is written atomically (a temporary file,
then a rename), and only by the main process. :func:`load_run` rebuilds a trained run.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from ..data import DATASETS, Dataset, binarize_for, load_dataset
from ..models import build_model
from ..models.external import build_from_factory
from .checkpoint import CheckpointError, load_checkpoint

__all__ = ["RUN_FILES", "SETTINGS_FIXED_ON_RESUME", "RunFolder", "load_run", "rebuild_pair"]

RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt")
"""Files every run folder gets (plus ``best.pt`` with a validation set, and PNGs for images)."""

SETTINGS_FIXED_ON_RESUME = (
    "elbo", "num_particles", "labels", "kl_warmup_steps", "free_bits", "optimizer", "lr", "batch_size",
    "seed", "dataset", "num_train", "num_test", "num_valid", "checkpoint_every", "phases",
)
"""Settings a resumed run must share with the checkpoint (``epochs`` and the device may change)."""


@dataclass
class RunFolder:
    """Where :func:`pyro_vae.train` writes a run, and how (``out=RunFolder(...)``; a plain path
    is ``RunFolder(path)``).

    Args:
        path: the folder (created when missing).
        overwrite: replace a run already in ``path``.
        resume: continue the run saved in ``path`` (its ``checkpoint.pt``) up to the asked-for
            number of epochs; its settings must match (``CheckpointError`` names those that do not).
        checkpoint_every: also checkpoint every this many SVI steps inside an epoch (0: only at
            the end of each epoch).

    Example:
        >>> RunFolder("runs/x", resume=True).checkpoint
        PosixPath('runs/x/checkpoint.pt')
    """

    path: Path
    overwrite: bool = False
    resume: bool = False
    checkpoint_every: int = 0

    def __post_init__(self):
        self.path = Path(self.path)
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")

    @classmethod
    def of(cls, out: str | Path | RunFolder | None) -> RunFolder | None:
        """``out`` as a :class:`RunFolder` (``None`` stays ``None``: nothing is written)."""
        return out if out is None or isinstance(out, RunFolder) else cls(out)

    @property
    def checkpoint(self) -> Path:
        """The latest good state: ``path / "checkpoint.pt"``."""
        return self.path / "checkpoint.pt"

    def check_resumable(self) -> None:
        """Raise ``FileNotFoundError`` when ``resume`` is set and there is no checkpoint."""
        if self.resume and not self.checkpoint.is_file():
            raise FileNotFoundError(f"cannot resume: {self.path} holds no checkpoint.pt (is it a run folder?)")

    def prepare(self) -> None:
        """Make the folder ready for a fresh run (or check it for a resumed one); every process
        takes part, the main process writes."""
        if self.resume:
            self.check_resumable()
            return
        existing = [name for name in RUN_FILES if (self.path / name).exists()]
        distributed.barrier()  # every process has looked before rank 0 writes
        if existing and not self.overwrite:
            raise FileExistsError(
                f"{self.path} already holds a run ({', '.join(existing)}); choose another folder, resume it "
                "(RunFolder(..., resume=True), --resume) or pass overwrite (RunFolder(..., overwrite=True), "
                "--overwrite) to replace it"
            )
        if distributed.is_main():
            self.path.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.jsonl", "best.pt"):
                (self.path / name).unlink(missing_ok=True)

    def write_text(self, name: str, text: str) -> None:
        """Write a small text file through a temporary file and a rename."""
        path = self.path / name
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise CheckpointError(f"could not write {path}: {e} (disk full or not writable?)") from e

    def write_config(self, config: dict) -> None:
        """``config.json``: the run's resolved settings."""
        self.write_text("config.json", json.dumps(config, indent=2))

    def write_metrics(self, history: list[dict]) -> None:
        """``metrics.jsonl``: one line of strict JSON per completed epoch. JSON has no word for an
        infinite or NaN number (a WAE's test ELBO is ``-inf``): such a value is written as ``null``
        and named in the line's ``non_finite`` map (``{"test_elbo": "-inf"}``)."""
        self.write_text("metrics.jsonl", "".join(json.dumps(_strict_json(m), allow_nan=False) + "\n" for m in history))

    def load_for_resume(self, model, guide, data: Dataset, labels: bool, settings: dict) -> dict:
        """Load ``checkpoint.pt`` into the pair, after checking that it can be resumed with
        ``settings``; returns the checkpoint's entries."""
        x = data.test[:2] if data.test is not None else data.train[:2]
        if data.binarize:
            x = torch.bernoulli(x.clamp(0, 1), generator=torch.Generator(device=x.device).manual_seed(0))
        args = (((data.test_labels if data.test is not None else data.train_labels)[:2]),) if labels else ()
        named = data.named("test" if data.test is not None else "train", slice(2))
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            state = load_checkpoint(self.checkpoint, model, guide, x, *args, **named)
        if "position" not in state:
            raise CheckpointError(f"{self.checkpoint} holds parameters only (written by an older pyro-vae or by "
                                  "save_checkpoint directly): it cannot be resumed exactly")
        saved = state["config"]
        changed = [f"{k}: checkpoint {saved.get(k)!r}, now {settings.get(k)!r}" for k in SETTINGS_FIXED_ON_RESUME
                   if saved.get(k) != settings.get(k)]  # phases: only in the settings of a run that has some
        if changed:
            raise CheckpointError(f"cannot resume {self.checkpoint}: the run was written with other settings "
                                  f"({'; '.join(changed)})")
        return state


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", data_dir=None, download: bool = False):
    """Rebuild a trained run: the pair with its checkpoint's parameters, and its data set.

    Works for the runs of ``pyro-vae train`` (a shipped ``--model`` or a ``--pair`` factory) and
    for those of :func:`pyro_vae.train` from Python with a shipped pair, or with
    ``config={"pair": "package.module:make_pair"}``, on a named data set.

    Args:
        run_dir: the run folder (``config.json`` and ``checkpoint.pt``).
        device: where to put the pair and the data set.
        data_dir, download: where the data set's files are (see :func:`pyro_vae.load_dataset`).

    Returns:
        ``(vae, dataset, config)``: the pair (a shipped ``nn.Module`` with ``model``/``guide``, or
        an :class:`~pyro_vae.models.external.ExternalPair`), the run's
        :class:`~pyro_vae.data.Dataset` and its ``config.json`` as a dict.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder.
        ValueError: the run does not say how to rebuild its pair or reload its data (the message
            says what to do instead).
        CheckpointError: the checkpoint is unreadable or does not match the pair.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {config_path} is missing")
    config = json.loads(config_path.read_text())
    vae = rebuild_pair(config, run_dir).to(device)
    dataset = _run_dataset(config, run_dir, device, data_dir, download)
    if config.get("labels_as"):  # pyro-vae train --labels-as NAME: the labels go by keyword
        dataset = dataset.with_labels_as(config["labels_as"])
    labels = (dataset.test_labels[:2],) if vae.needs_labels else ()
    state = load_checkpoint(run_dir / "checkpoint.pt", vae.model, vae.guide, dataset.test[:2], *labels,
                            **dataset.named("test", slice(2)))
    if state.get("finished") is False and distributed.is_main():
        print(f"note: {run_dir} is an unfinished run ({state['epoch']} of {config['epochs']} epochs done); "
              f"finish it with: pyro-vae train --resume {run_dir}", file=sys.stderr)
    return vae, dataset, config


def rebuild_pair(config: dict, run_dir: Path | str = "the run"):
    """The pair a run's ``config.json`` records (initial weights): a ``pair`` factory with its
    ``pair_facts`` (and ``pair_options``), or a shipped ``model`` with its ``model_config``.

    Raises:
        ValueError: the config records neither (a run of :func:`pyro_vae.train` with a pair
            pyro-vae cannot rebuild); the message says how to evaluate it instead.
    """
    if config.get("pair"):
        pair = build_from_factory(config["pair"], config.get("pair_facts") or {"data_dim": config["data_dim"]},
                                  config.get("pair_options"))
        pair.needs_labels = bool(config.get("labels", pair.needs_labels))
        return pair
    if "model_config" in config and "model" in config:
        return build_model(config["model"], config["data_dim"], **config["model_config"])
    raise ValueError(
        f"{run_dir} does not say how to rebuild its pair: it was written by train() from Python with a pair "
        "pyro-vae cannot rebuild. Evaluate it from Python (load its checkpoint.pt with load_checkpoint, then "
        "estimate_log_likelihood), or make it rebuildable: train(..., config={'pair': 'package.module:make_pair'}) "
        "with a factory that returns the pair, or train it with pyro-vae train --pair package.module:make_pair")


def _run_dataset(config: dict, run_dir: Path, device, data_dir, download: bool) -> Dataset:
    """The named data set a run was trained on, binarized as it was."""
    name = config.get("dataset")
    if name not in DATASETS:
        raise ValueError(f"{run_dir} was trained on data pyro-vae cannot reload (data set {name!r}, not one of "
                         f"{', '.join(DATASETS)}): evaluate it from Python with estimate_log_likelihood")
    likelihood = config.get("likelihood") or config.get("model_config", {}).get("likelihood")
    return load_dataset(name, data_dir, device=device, download=download, binarize=binarize_for(name, likelihood))


def _strict_json(metrics: dict) -> dict:
    """``metrics`` with its non-finite numbers as ``None``, listed under ``non_finite``."""
    bad = {k: str(v) for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    return {**{k: None if k in bad else v for k, v in metrics.items()}, **({"non_finite": bad} if bad else {})}
