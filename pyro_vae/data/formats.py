"""Readers of the publishers' file formats: each turns one file into a NumPy array of pixels.

=================  =====================================================  =======================
reader             format                                                 returns
=================  =====================================================  =======================
:func:`read_idx`   LeCun's IDX of unsigned bytes, gzipped or not (MNIST)  ``uint8``, header's shape
:func:`read_amat`  Larochelle's ``.amat`` text, one 0/1 image per line    ``uint8 (N, D)`` in {0, 1}
:func:`read_frey`  MATLAB v5 ``frey_rawface.mat`` (variable ``ff``)        ``uint8 (1965, 28, 20)``
=================  =====================================================  =======================

Pixels are returned as stored (grey levels 0..255, or 0/1): scaling to [0, 1] and conversion
to tensors belong to the data sets. A file that does not match its format raises ``ValueError``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

__all__ = ["read_amat", "read_frey", "read_idx"]


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes, as LeCun distributes MNIST.

    Args:
        path: the file; read through ``gzip`` when its name ends in ``.gz``.

    Returns:
        ``uint8`` array of the shape the header gives: ``(N, 28, 28)`` grey levels 0..255 for an
        images file, ``(N,)`` class labels 0..9 for a labels file.

    Raises:
        ValueError: not an IDX file of unsigned bytes, or fewer bytes than the header says.
    """
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
    """Read Larochelle's ``.amat`` text file: one image per line, 0/1 values separated by spaces.

    Args:
        path: the file.
        num_pixels: values on each line (``D``; 784 for 28 x 28 binarized MNIST).

    Returns:
        ``uint8`` array ``(N, num_pixels)`` of 0/1 pixels, one row per line of the file.

    Raises:
        ValueError: a line count times ``num_pixels`` that differs from the number of values,
            or an empty file (the message says the file is corrupt).
    """
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
    """Read ``frey_rawface.mat``: returns ``(1965, 28, 20)`` uint8 images.

    Args:
        path: the MATLAB v5 file, whose variable ``ff`` is ``uint8 (560, 1965)``: one column per
            image, each a 28 high x 20 wide image stored row-major.

    Returns:
        ``uint8`` array ``(1965, 28, 20)`` of grey levels 0..255, C-contiguous.
    """
    from scipy.io import loadmat

    ff = loadmat(str(path))["ff"]  # (560, 1965), each column a 28 x 20 image stored row-major
    return np.ascontiguousarray(ff.T).reshape(-1, 28, 20)
