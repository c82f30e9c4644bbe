"""Data sets as tensors on the training device, read from their publishers' files.

Four data sets, read from their publishers' files (never converted in place):

================  ==========================================  ==============  ============
name              files (under the data root)                 pixels          likelihood
================  ==========================================  ==============  ============
mnist             ``MNIST/raw/*-ubyte.gz`` (LeCun, IDX)       28 x 28 binary  bernoulli
fashion-mnist     ``FashionMNIST/raw/*-ubyte.gz`` (IDX)       28 x 28 binary  bernoulli
binarized-mnist   ``BinarizedMNIST/binarized_mnist_*.amat``   28 x 28 binary  bernoulli
frey-face         ``FreyFace/frey_rawface.mat`` (MATLAB v5)   28 x 20 [0, 1]  gaussian
================  ==========================================  ==============  ============

The data root is ``data_dir``, else ``$PYRO_VAE_DATA``, else ``~/.cache/pyro-vae`` (or
``$XDG_CACHE_HOME/pyro-vae``). Files present are read and nothing is written, so a read-only
root works. Missing files are downloaded into the root (checksums verified) when the machine is
online; otherwise :class:`DataNotFoundError` names the files and where to put them.

Data flows one way through three modules:

* :mod:`~pyro_vae.data.files`: where each file lives, its checksum, download, the data root;
* :mod:`~pyro_vae.data.formats`: IDX, ``.amat`` and MATLAB readers, file -> NumPy array;
* :mod:`~pyro_vae.data.datasets`: :class:`Dataset` and :func:`load_dataset`, arrays -> tensors;
* :mod:`~pyro_vae.data.semi_supervised`: :func:`semi_supervised`, a few labels kept as ``y``.
"""

from .datasets import DATASETS, Dataset, binarize_for, load_dataset
from .files import DataNotFoundError, default_data_root, resolve_data_root
from .formats import read_amat, read_frey, read_idx
from .semi_supervised import labelled_indices, semi_supervised

__all__ = [
    "DATASETS",
    "DataNotFoundError",
    "Dataset",
    "binarize_for",
    "default_data_root",
    "labelled_indices",
    "load_dataset",
    "read_amat",
    "read_frey",
    "read_idx",
    "resolve_data_root",
    "semi_supervised",
]
