"""Data sets as tensors on the training device.

Four data sets, read from their publishers' files (never converted in place):

================  ==========================================  ==============  ============
name              files (under the data root)                 pixels          likelihood
================  ==========================================  ==============  ============
mnist             ``MNIST/raw/*-ubyte.gz`` (LeCun, IDX)       28 x 28 binary  bernoulli
fashion-mnist     ``FashionMNIST/raw/*-ubyte.gz`` (IDX)       28 x 28 binary  bernoulli
binarized-mnist   ``BinarizedMNIST/binarized_mnist_*.amat``   28 x 28 binary  bernoulli
frey-face         ``FreyFace/frey_rawface.mat`` (MATLAB v5)   28 x 20 [0, 1]  gaussian
================  ==========================================  ==============  ============

MNIST and Fashion-MNIST are grey-level; they are *dynamically binarized*: every training epoch
draws a fresh ``x ~ Bernoulli(grey level)`` (:meth:`Dataset.train_epoch`), while the test and
validation sets are binarized once with a fixed seed. Binarized MNIST (Larochelle & Murray 2011)
is used as published (50000 / 10000 / 10000). Frey Face (1965 faces) has no official split: the
last ``test_size`` images of a fixed seeded permutation form the test set.

The data root is ``data_dir``, else ``$PYRO_VAE_DATA``, else ``~/.cache/pyro-vae`` (or
``$XDG_CACHE_HOME/pyro-vae``). Files present are read and nothing is written, so a read-only
root works. Missing files are downloaded into the root (checksums verified) when the machine is
online; otherwise :class:`DataNotFoundError` names the files and where to put them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from .names import unknown_name

__all__ = [
    "DATASETS",
    "DataNotFoundError",
    "Dataset",
    "default_data_root",
    "load_dataset",
    "resolve_data_root",
]


class DataNotFoundError(FileNotFoundError):
    """Data files are missing from the data root and could not be downloaded."""


@dataclass(frozen=True)
class _Source:
    """One file of a data set: its path under the root, checksum and download addresses."""

    path: str
    checksum: str  # "md5:..." or "sha256:..."
    urls: tuple[str, ...]


def _torchvision_sources(folder: str, dataset_cls_name: str) -> dict[str, _Source]:
    """Files, MD5s and mirrors of MNIST / Fashion-MNIST, as torchvision pins them."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, dataset_cls_name)
    return {
        filename: _Source(
            f"{folder}/raw/{filename}", f"md5:{md5}", tuple(m + filename for m in cls.mirrors)
        )
        for filename, md5 in cls.resources
    }


_LAROCHELLE = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"

# SHA-256 of Larochelle's .amat files, as TensorFlow Datasets pins them.
_AMAT_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}


def _binarized_mnist_sources() -> dict[str, _Source]:
    return {
        split: _Source(
            f"BinarizedMNIST/binarized_mnist_{split}.amat",
            f"sha256:{sha}",
            (f"{_LAROCHELLE}binarized_mnist_{split}.amat",),
        )
        for split, sha in _AMAT_SHA256.items()
    }


def _frey_sources() -> dict[str, _Source]:
    return {
        "ff": _Source(
            "FreyFace/frey_rawface.mat",
            "md5:5aeb024d42b8a6091f30e5eb18c8a48d",
            ("https://cs.nyu.edu/~roweis/data/frey_rawface.mat",),
        )
    }


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
        likelihood: the observation model the data suits (``"bernoulli"`` or ``"gaussian"``).
        binarize: whether ``train`` holds grey levels to be dynamically binarized.
        train_labels, test_labels, valid_labels: ``(N,)`` int64 class labels, where the data
            set has them.
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
    extra: dict = field(default_factory=dict)

    @property
    def data_dim(self) -> int:
        """Number of pixels ``D`` of one flattened datapoint."""
        return self.train.shape[1]

    @property
    def device(self) -> torch.device:
        return self.train.device

    def train_epoch(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training set for one epoch, ``(N_train, D)``, on the data's device.

        With dynamic binarization this is a fresh ``Bernoulli(grey level)`` draw (no host
        transfer: the draw happens on the device); otherwise the stored tensor.
        """
        if self.binarize:
            return torch.bernoulli(self.train, generator=generator)
        return self.train

    def to(self, device: torch.device | str) -> Dataset:
        """A copy of the data set with every tensor moved to ``device``."""
        moved = {
            k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()
        }
        return Dataset(**moved)

    def subset(self, num_train: int | None = None, num_test: int | None = None) -> Dataset:
        """The first ``num_train`` training and ``num_test`` test points (for quick runs)."""
        ds = Dataset(**vars(self))
        if num_train is not None:
            ds.train = self.train[:num_train]
            ds.train_labels = None if self.train_labels is None else self.train_labels[:num_train]
        if num_test is not None:
            ds.test = self.test[:num_test]
            ds.test_labels = None if self.test_labels is None else self.test_labels[:num_test]
        return ds


# --------------------------------------------------------------------------------------------
# data root and files


def default_data_root() -> Path:
    """The per-user cache folder: ``$XDG_CACHE_HOME/pyro-vae`` or ``~/.cache/pyro-vae``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "pyro-vae"


def resolve_data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root, absolute: ``data_dir``, else ``$PYRO_VAE_DATA``, else :func:`default_data_root`."""
    if data_dir is not None:
        return Path(data_dir).expanduser().absolute()
    env = os.environ.get("PYRO_VAE_DATA")
    if env:
        return Path(env).expanduser().absolute()
    return default_data_root().absolute()


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, checksum: str) -> bool:
    if not checksum:
        return True
    algorithm, expected = checksum.split(":", 1)
    return _file_digest(path, algorithm) == expected


def _download(source: _Source, root: Path) -> Path:
    """Fetch one file into ``root`` from the first mirror that answers, verifying its checksum.

    The file is written to a temporary name and renamed only once its checksum matches, so a
    failed download never leaves a file that looks complete.
    """
    import urllib.request

    target = root / source.path
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in source.urls:
        tmp = target.with_name(target.name + ".part")
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "pyro-vae"})
            with urllib.request.urlopen(request, timeout=60) as response, open(tmp, "wb") as f:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
            if not _verify(tmp, source.checksum):
                errors.append(f"{url}: checksum mismatch (expected {source.checksum})")
                tmp.unlink()
                continue
            os.replace(tmp, target)
            return target
        except OSError as e:  # URLError is an OSError
            errors.append(f"{url}: {e}")
            if tmp.exists():
                tmp.unlink()
    raise DataNotFoundError(
        f"could not download {source.path} into {root}:\n  " + "\n  ".join(errors)
    )


def _locate(sources: dict[str, _Source], root: Path, name: str, download: bool,
            mirror: str | None = None) -> dict[str, Path]:
    """Paths of every file of a data set, downloading the missing ones if allowed."""
    missing = [s for s in sources.values() if not (root / s.path).is_file()]
    if missing and download:
        errors = []
        for source in missing:
            if mirror:
                source = _Source(source.path, source.checksum, (f"{mirror.rstrip('/')}/{source.path}",) + source.urls)
            try:
                _download(source, root)
            except OSError as e:  # DataNotFoundError, a read-only root, a full disk
                errors.append(str(e))
        if errors:
            raise DataNotFoundError(
                f"data set {name!r}: files missing under the data root {root} and the download "
                f"failed:\n" + "\n".join(errors) + "\n" + _where_to_put(missing, root)
            )
    elif missing:
        raise DataNotFoundError(
            f"data set {name!r}: files missing under the data root {root}.\n"
            + _where_to_put(missing, root)
        )
    return {key: root / s.path for key, s in sources.items()}


def _where_to_put(missing: list[_Source], root: Path) -> str:
    lines = [f"  {root / s.path}   (from {s.urls[0]})" for s in missing]
    return (
        "Put these files there, or point --data-dir / $PYRO_VAE_DATA at a folder that has "
        "them (downloads need a machine that is online):\n"
        + "\n".join(lines)
    )


# --------------------------------------------------------------------------------------------
# file formats


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes, as LeCun distributes MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4]!r})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes (truncated?)")
    return data.reshape(dims)


def read_amat(path: Path, num_pixels: int = 784) -> np.ndarray:
    """Read Larochelle's ``.amat`` text file: one image per line, 0/1 values separated by spaces."""
    raw = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
    digits = raw[(raw == ord("0")) | (raw == ord("1"))]
    lines = int(np.count_nonzero(raw == ord("\n")))
    if digits.size != lines * num_pixels or lines == 0:
        raise ValueError(
            f"{path}: expected {num_pixels} binary values on each of its {lines} lines, "
            f"found {digits.size} values (corrupt or not a binarized-MNIST .amat file)"
        )
    return (digits - ord("0")).reshape(lines, num_pixels)


def read_frey(path: Path) -> np.ndarray:
    """Read ``frey_rawface.mat``: returns ``(1965, 28, 20)`` uint8 images."""
    from scipy.io import loadmat

    ff = loadmat(str(path))["ff"]  # (560, 1965), each column a 28 x 20 image stored row-major
    return np.ascontiguousarray(ff.T).reshape(-1, 28, 20)


# --------------------------------------------------------------------------------------------
# loaders


def _fixed_binarization(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(x, generator=g)


def _load_idx_dataset(name, folder, cls_name, root, download, mirror, valid_size, seed, binarize=True):
    paths = _locate(_torchvision_sources(folder, cls_name), root, name, download, mirror)
    prefix = {"train": "train", "test": "t10k"}
    arrays = {}
    for split in ("train", "test"):
        images = read_idx(paths[f"{prefix[split]}-images-idx3-ubyte.gz"])
        labels = read_idx(paths[f"{prefix[split]}-labels-idx1-ubyte.gz"])
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise ValueError(f"{name} {split}: images {images.shape} do not match labels {labels.shape}")
        arrays[split] = (
            torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0),
            torch.from_numpy(labels.astype(np.int64)),
        )
    train, train_labels = arrays["train"]
    test, test_labels = arrays["test"]
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
    paths = _locate(_binarized_mnist_sources(), root, "binarized-mnist", download, mirror)
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
    paths = _locate(_frey_sources(), root, "frey-face", download, mirror)
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
        data_dir: the data root (see :func:`resolve_data_root`).
        device: where the tensors live for training; batches are indexed there.
        download: fetch missing files into the data root (checksums verified; a file is
            renamed into place only once verified). Offline, or with ``download=False``,
            missing files raise :class:`DataNotFoundError` naming them.
        mirror: a base URL laid out like the data root (``https://...`` or ``file:///...``),
            tried before the publishers' addresses.
        valid_size: hold out this many training points as a validation set (MNIST,
            Fashion-MNIST: the last ones; Frey Face: from the seeded permutation).
            Binarized MNIST always has its published 10000-image validation set.
        seed: seed of the fixed binarization of the test/validation sets and of the Frey split.
        binarize: MNIST and Fashion-MNIST only: ``False`` keeps the grey levels in every split
            (no dynamic binarization) and suggests the ``continuous-bernoulli`` likelihood.

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
