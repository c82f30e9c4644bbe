"""Data sets as tensors on the training device: :func:`load_dataset` returns a :class:`Dataset`.

================  ========================  ==========================================  ==========
name              pixels                    splits (train / valid / test)               likelihood
================  ========================  ==========================================  ==========
mnist             28 x 28, binarized        60000 (less ``valid_size``) / opt. / 10000  bernoulli
fashion-mnist     28 x 28, binarized        same as MNIST                               bernoulli
binarized-mnist   28 x 28, binary           50000 / 10000 / 10000 (as published)        bernoulli
frey-face         28 x 20, grey in [0, 1]   1765 (less ``valid_size``) / opt. / 200     gaussian
================  ========================  ==========================================  ==========

MNIST and Fashion-MNIST are grey-level; they are *dynamically binarized*: every training epoch
draws a fresh ``x ~ Bernoulli(grey level)`` (:meth:`Dataset.train_epoch`), while the test and
validation sets are binarized once with a fixed seed. With ``binarize=False`` every split keeps
its grey levels and the suggested likelihood is ``continuous-bernoulli``. Frey Face has no
official split: the last 200 images of a fixed seeded permutation form the test set.

The files are found (or downloaded) by :mod:`pyro_vae.data.files` and read by
:mod:`pyro_vae.data.formats`; this module scales, splits and binarizes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..names import unknown_name
from .files import binarized_mnist_sources, frey_sources, locate, resolve_data_root, torchvision_sources
from .formats import read_amat, read_frey, read_idx

__all__ = ["DATASETS", "Dataset", "binarize_for", "load_dataset"]


@dataclass
class Dataset:
    """A VAE data set: flat tensors on one device, plus what a model needs to know about them.

    Attributes:
        name: data set name (see :data:`DATASETS`).
        train: ``(N_train, D)`` float tensor. Grey levels in [0, 1] when ``binarize`` is true
            (a fresh binary draw is made each epoch by :meth:`train_epoch`), else the data as used.
        test: ``(N_test, D)`` float tensor, already binarized where the data set is.
        valid: ``(N_valid, D)`` float tensor or ``None``.
        image_shape: ``(height, width)`` of one image; ``D = height * width``.
        likelihood: the observation model the data suits (``"bernoulli"``, ``"continuous-bernoulli"``
            or ``"gaussian"``; see :mod:`pyro_vae.likelihoods`).
        binarize: whether ``train`` holds grey levels to be dynamically binarized.
        train_labels, test_labels, valid_labels: ``(N,)`` int64 class labels, where the data
            set has them.
        train_named, test_named, valid_named: named per-datapoint tensors of each split (``{"y":
            (N,) labels, "mask": (N, D) ...}``, each with one row per datapoint of the split):
            :func:`pyro_vae.train` passes them to the pair by keyword (``model(x, y=None)``),
            sliced with ``x``. Every split present must carry the same names.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor | None
    image_shape: tuple[int, int] | None
    likelihood: str | None
    binarize: bool = False
    valid: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None
    train_named: dict[str, torch.Tensor] = field(default_factory=dict)
    test_named: dict[str, torch.Tensor] = field(default_factory=dict)
    valid_named: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        for split in ("train", "test", "valid"):
            x, named = getattr(self, split), getattr(self, f"{split}_named")
            if x is None:
                continue
            if set(named) != set(self.train_named):
                raise ValueError(f"{split}_named carries {sorted(named)} but train_named carries "
                                 f"{sorted(self.train_named)}: every split needs the same named arguments")
            for name, value in named.items():
                if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != x.shape[0]:
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise ValueError(f"{split}_named[{name!r}] must be a tensor with one row per datapoint "
                                     f"({x.shape[0]}), got {shape}")

    def named(self, split: str, index=slice(None)) -> dict[str, torch.Tensor]:
        """The named per-datapoint tensors of ``split`` (``"train"``, ``"test"``, ``"valid"``), cut by
        ``index`` (a slice or an index tensor on the data's device)."""
        return {name: value[index] for name, value in getattr(self, f"{split}_named").items()}

    @property
    def data_dim(self) -> int:
        """Number of pixels ``D`` of one flattened datapoint."""
        return self.train.shape[1]

    @property
    def device(self) -> torch.device:
        """The device every tensor of the data set lives on (that of ``train``)."""
        return self.train.device

    def train_epoch(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training set for one epoch, ``(N_train, D)`` float, on the data's device.

        With dynamic binarization this is a fresh ``Bernoulli(grey level)`` draw of 0/1 values
        (no host transfer: the draw happens on the device, from ``generator`` if given);
        otherwise the stored tensor.
        """
        if self.binarize:
            return torch.bernoulli(self.train, generator=generator)
        return self.train

    def to(self, device: torch.device | str) -> Dataset:
        """A copy of the data set with every tensor moved to ``device``."""
        moved = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else
                {n: t.to(device) for n, t in v.items()} if isinstance(v, dict) else v)
            for k, v in vars(self).items()
        }
        return Dataset(**moved)

    def with_labels_as(self, name: str) -> Dataset:
        """A copy whose splits also carry their class labels as the named tensor ``name``, passed by
        keyword (``model(x, name=labels)``; ``pyro-vae train --labels-as NAME``); tensors shared.

        Raises:
            ValueError: ``name`` is not a Python argument name, or the data set has no labels.
        """
        if not name.isidentifier():
            raise ValueError(f"--labels-as takes the name of the argument of model and guide that receives the "
                             f"labels (def model(x, y=None): --labels-as y), got {name!r}")
        if self.train_labels is None:
            raise ValueError(f"--labels-as {name}: the data set {self.name!r} has no class labels to pass")
        named = {f"{split}_named": {**getattr(self, f"{split}_named"), name: getattr(self, f"{split}_labels")}
                 for split in ("train", "test", "valid") if getattr(self, split) is not None}
        return Dataset(**{**vars(self), **named})

    def subset(self, num_train: int | None = None, num_test: int | None = None) -> Dataset:
        """The first ``num_train`` training and ``num_test`` test points (for quick runs).

        A copy whose ``train`` is ``(num_train, D)`` and ``test`` ``(num_test, D)``, with their
        labels cut alike; ``None`` keeps a split whole. The tensors are views, not copies.
        """
        ds = Dataset(**vars(self))
        if num_train is not None:
            ds.train = self.train[:num_train]
            ds.train_labels = None if self.train_labels is None else self.train_labels[:num_train]
            ds.train_named = self.named("train", slice(num_train))
        if num_test is not None:
            ds.test = self.test[:num_test]
            ds.test_labels = None if self.test_labels is None else self.test_labels[:num_test]
            ds.test_named = self.named("test", slice(num_test))
        return ds


# --------------------------------------------------------------------------------------------
# loaders, one per format of data set


def _fixed_binarization(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One ``Bernoulli(x)`` draw of 0/1 floats, the same for the same ``seed`` (CPU generator)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(x, generator=g)


def _read_idx_split(paths: dict[str, Path], name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One IDX split: ``(N, 784)`` float32 grey levels in [0, 1] and ``(N,)`` int64 labels."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(paths[f"{prefix}-images-idx3-ubyte.gz"])
    labels = read_idx(paths[f"{prefix}-labels-idx1-ubyte.gz"])
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"{name} {split}: images {images.shape} do not match labels {labels.shape}")
    return (
        torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0),
        torch.from_numpy(labels.astype(np.int64)),
    )


def _load_idx_dataset(name, folder, cls_name, root, download, mirror, valid_size, seed, binarize=True):
    """MNIST or Fashion-MNIST: grey-level train set, test (and valid) binarized with ``seed``."""
    paths = locate(torchvision_sources(folder, cls_name), root, name, download, mirror)
    train, train_labels = _read_idx_split(paths, name, "train")
    test, test_labels = _read_idx_split(paths, name, "test")
    valid = valid_labels = None
    if valid_size:
        if not 0 < valid_size < len(train):
            raise ValueError(f"valid_size must be in (0, {len(train)}), got {valid_size}")
        train, valid = train[:-valid_size], train[-valid_size:]
        valid = _fixed_binarization(valid, seed + 1) if binarize else valid
        train_labels, valid_labels = train_labels[:-valid_size], train_labels[-valid_size:]
    return Dataset(
        name=name,
        train=train,
        test=_fixed_binarization(test, seed) if binarize else test,
        valid=valid,
        image_shape=(28, 28),
        likelihood="bernoulli" if binarize else "continuous-bernoulli",
        binarize=binarize,
        train_labels=train_labels,
        test_labels=test_labels,
        valid_labels=valid_labels,
    )


def _load_binarized_mnist(root, download, mirror, valid_size, seed):
    """Larochelle & Murray's static binarization, its published splits as they are."""
    paths = locate(binarized_mnist_sources(), root, "binarized-mnist", download, mirror)
    split = {k: torch.from_numpy(read_amat(p).astype(np.float32)) for k, p in paths.items()}
    return Dataset(
        name="binarized-mnist",
        train=split["train"],
        valid=split["valid"],
        test=split["test"],
        image_shape=(28, 28),
        likelihood="bernoulli",
    )


def _load_frey(root, download, mirror, valid_size, seed, test_size=200):
    """Frey Face: grey levels in [0, 1]; test (and valid) from a permutation seeded by ``seed``."""
    paths = locate(frey_sources(), root, "frey-face", download, mirror)
    images = torch.from_numpy(read_frey(paths["ff"]).reshape(-1, 28 * 20).astype(np.float32) / 255.0)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    test = images[perm[-test_size:]]
    rest = images[perm[:-test_size]]
    valid = None
    if valid_size:
        rest, valid = rest[:-valid_size], rest[-valid_size:]
    return Dataset(
        name="frey-face",
        train=rest,
        valid=valid,
        test=test,
        image_shape=(28, 20),
        likelihood="gaussian",
    )


DATASETS = ("mnist", "fashion-mnist", "binarized-mnist", "frey-face")
"""Names accepted by :func:`load_dataset` and ``--dataset``."""


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    device: torch.device | str = "cpu",
    download: bool = True,
    mirror: str | None = None,
    valid_size: int = 0,
    seed: int = 0,
    binarize: bool = True,
) -> Dataset:
    """Load a data set onto ``device``.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: the data root (see :func:`~pyro_vae.data.files.resolve_data_root`).
        device: where the tensors live for training; batches are indexed there.
        download: fetch missing files into the data root (checksums verified; a file is
            renamed into place only once verified). Offline, or with ``download=False``,
            missing files raise :class:`~pyro_vae.data.files.DataNotFoundError` naming them.
        mirror: a base URL laid out like the data root (``https://...`` or ``file:///...``),
            tried before the publishers' addresses.
        valid_size: hold out this many training points as a validation set (MNIST,
            Fashion-MNIST: the last ones; Frey Face: from the seeded permutation).
            Binarized MNIST always has its published 10000-image validation set.
        seed: seed of the fixed binarization of the test/validation sets and of the Frey split.
        binarize: MNIST and Fashion-MNIST only: ``False`` keeps the grey levels in every split
            (no dynamic binarization) and suggests the ``continuous-bernoulli`` likelihood.

    Returns:
        A :class:`Dataset` of float32 ``(N, D)`` pixel tensors in [0, 1] (int64 labels) on ``device``.

    Raises:
        ValueError: unknown name (the valid names are listed) or a corrupt file.
        DataNotFoundError: files missing and not downloaded; the message names them.
    """
    root = resolve_data_root(data_dir)
    if name in ("mnist", "fashion-mnist"):
        folder, cls_name = ("MNIST", "MNIST") if name == "mnist" else ("FashionMNIST", "FashionMNIST")
        ds = _load_idx_dataset(name, folder, cls_name, root, download, mirror, valid_size, seed, binarize)
    elif not binarize and name == "binarized-mnist":
        raise ValueError("binarized-mnist is binary by construction; binarize=False does not apply")
    elif name == "binarized-mnist":
        ds = _load_binarized_mnist(root, download, mirror, valid_size, seed)
    elif name == "frey-face":
        ds = _load_frey(root, download, mirror, valid_size, seed)
    else:
        raise unknown_name("data set", name, DATASETS)
    return ds.to(device)


def binarize_for(dataset: str, likelihood: str | None) -> bool:
    """Whether to binarize ``dataset`` for ``likelihood``: grey-level likelihoods on MNIST-like
    data get the grey levels."""
    return likelihood in (None, "bernoulli") or dataset not in ("mnist", "fashion-mnist")
