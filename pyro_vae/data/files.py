"""The files of each data set on disk: where they live, their checksums, and how they are fetched.

Every data set is a few files under one *data root* (``data_dir``, else ``$PYRO_VAE_DATA``, else
``$XDG_CACHE_HOME/pyro-vae`` or ``~/.cache/pyro-vae``), laid out as the publishers name them:

=================  ===============================================  =============================
data set           files under the root                             checksum (as pinned by)
=================  ===============================================  =============================
MNIST              ``MNIST/raw/{train,t10k}-{images,labels}-*.gz``  MD5 (torchvision)
Fashion-MNIST      ``FashionMNIST/raw/...`` (same four names)       MD5 (torchvision)
Binarized MNIST    ``BinarizedMNIST/binarized_mnist_*.amat``        SHA-256 (TensorFlow Datasets)
Frey Face          ``FreyFace/frey_rawface.mat``                    MD5
=================  ===============================================  =============================

Files present are only read, so a read-only root works. A missing file is downloaded into the root
from a mirror (if given) then the publisher's addresses; it is written under a ``.part`` name and
renamed into place only once its checksum matches. When that is not allowed or fails,
:class:`DataNotFoundError` names every missing file, where it goes, and where it comes from.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DataNotFoundError",
    "Source",
    "binarized_mnist_sources",
    "default_data_root",
    "frey_sources",
    "locate",
    "resolve_data_root",
    "torchvision_sources",
]


class DataNotFoundError(FileNotFoundError):
    """Data files are missing from the data root and could not be downloaded."""


@dataclass(frozen=True)
class Source:
    """One file of a data set: its path under the root, checksum and download addresses.

    Attributes:
        path: the file's path under the data root, ``/``-separated (``"FreyFace/frey_rawface.mat"``).
        checksum: ``"md5:<hex>"`` or ``"sha256:<hex>"`` of the file's bytes as published.
        urls: download addresses, tried in order.
    """

    path: str
    checksum: str  # "md5:..." or "sha256:..."
    urls: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# the files of each data set


def torchvision_sources(folder: str, dataset_cls_name: str) -> dict[str, Source]:
    """Files, MD5s and mirrors of MNIST / Fashion-MNIST, as torchvision pins them.

    Args:
        folder: the data set's folder under the root (``"MNIST"`` or ``"FashionMNIST"``).
        dataset_cls_name: the ``torchvision.datasets`` class whose ``resources`` and
            ``mirrors`` are used (``"MNIST"`` or ``"FashionMNIST"``).

    Returns:
        ``{file name: source}`` for the four IDX files, e.g. ``"t10k-images-idx3-ubyte.gz"``.
    """
    import torchvision.datasets

    cls = getattr(torchvision.datasets, dataset_cls_name)
    return {
        filename: Source(
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


def binarized_mnist_sources() -> dict[str, Source]:
    """Larochelle & Murray's three ``.amat`` files: ``{"train" | "valid" | "test": source}``."""
    return {
        split: Source(
            f"BinarizedMNIST/binarized_mnist_{split}.amat",
            f"sha256:{sha}",
            (f"{_LAROCHELLE}binarized_mnist_{split}.amat",),
        )
        for split, sha in _AMAT_SHA256.items()
    }


def frey_sources() -> dict[str, Source]:
    """Frey Face's one MATLAB file, keyed by its variable: ``{"ff": source}``."""
    return {
        "ff": Source(
            "FreyFace/frey_rawface.mat",
            "md5:5aeb024d42b8a6091f30e5eb18c8a48d",
            ("https://cs.nyu.edu/~roweis/data/frey_rawface.mat",),
        )
    }


# --------------------------------------------------------------------------------------------
# the data root


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


# --------------------------------------------------------------------------------------------
# checksums and download


def _file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of the file at ``path`` with ``hashlib`` algorithm ``algorithm``, read by MiB."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, checksum: str) -> bool:
    """Whether the file matches ``checksum`` (``"md5:<hex>"`` / ``"sha256:<hex>"``; empty: yes)."""
    if not checksum:
        return True
    algorithm, expected = checksum.split(":", 1)
    return _file_digest(path, algorithm) == expected


def _download(source: Source, root: Path) -> Path:
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


# --------------------------------------------------------------------------------------------
# locating a data set's files


def locate(sources: dict[str, Source], root: Path, name: str, download: bool,
           mirror: str | None = None) -> dict[str, Path]:
    """Paths of every file of a data set, downloading the missing ones if allowed.

    Args:
        sources: ``{key: source}`` from one of the ``*_sources`` functions.
        root: the data root (see :func:`resolve_data_root`).
        name: the data set's name, for the error message.
        download: fetch missing files into ``root`` (checksums verified).
        mirror: a base URL laid out like the data root, tried before the publishers' addresses.

    Returns:
        ``{key: root / source.path}`` for every source.

    Raises:
        DataNotFoundError: files missing and not downloaded; the message names them.
    """
    missing = [s for s in sources.values() if not (root / s.path).is_file()]
    if missing and download:
        errors = []
        for source in missing:
            if mirror:
                mirrored = f"{mirror.rstrip('/')}/{source.path}"
                source = Source(source.path, source.checksum, (mirrored,) + source.urls)
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


def _where_to_put(missing: list[Source], root: Path) -> str:
    """The part of the error message that lists each missing file's place and address."""
    lines = [f"  {root / s.path}   (from {s.urls[0]})" for s in missing]
    return (
        "Put these files there, or point --data-dir / $PYRO_VAE_DATA at a folder that has "
        "them (downloads need a machine that is online):\n"
        + "\n".join(lines)
    )
