"""Loaders on the real files: shapes, value ranges, label counts, binarization, the data root."""


import numpy as np
import pytest
import torch

from pyro_vae.data import DataNotFoundError, load_dataset, read_amat, read_idx, resolve_data_root

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_shapes_ranges_and_labels(mnist):
    assert mnist.train.shape == (60000, 784) and mnist.test.shape == (10000, 784)
    assert mnist.image_shape == (28, 28) and mnist.likelihood == "bernoulli" and mnist.binarize
    assert mnist.train.min() == 0 and mnist.train.max() == 1
    assert ((mnist.train > 0) & (mnist.train < 1)).any(), "training set keeps grey levels"
    assert ((mnist.test == 0) | (mnist.test == 1)).all(), "test set is binarized once"
    assert torch.bincount(mnist.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.test_labels).tolist() == MNIST_TEST_COUNTS


def test_dynamic_binarization_fresh_each_epoch_and_fixed_test(mnist, data_root):
    first, second = mnist.train_epoch(), mnist.train_epoch()
    assert ((first == 0) | (first == 1)).all()
    assert not torch.equal(first, second), "each epoch draws a new binarization"
    # the draws are Bernoulli(grey level): their mean matches the grey-level mean
    assert abs(first.mean().item() - mnist.train.mean().item()) < 1e-3
    again = load_dataset("mnist", data_root, download=False)
    assert torch.equal(again.test, mnist.test), "the test binarization is fixed by the seed"
    other_seed = load_dataset("mnist", data_root, download=False, seed=1)
    assert not torch.equal(other_seed.test, mnist.test)


def test_validation_split(data_root):
    ds = load_dataset("mnist", data_root, download=False, valid_size=10000)
    assert ds.train.shape == (50000, 784) and ds.valid.shape == (10000, 784)
    assert ((ds.valid == 0) | (ds.valid == 1)).all()
    assert ds.valid_labels.shape == (10000,)


def test_fashion_mnist(data_root):
    ds = load_dataset("fashion-mnist", data_root, download=False)
    assert ds.train.shape == (60000, 784) and ds.test.shape == (10000, 784)
    assert torch.bincount(ds.train_labels).tolist() == [6000] * 10
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10


def test_binarized_mnist_static(data_root):
    ds = load_dataset("binarized-mnist", data_root, download=False)
    assert ds.train.shape == (50000, 784) and ds.valid.shape == (10000, 784) and ds.test.shape == (10000, 784)
    assert not ds.binarize and torch.equal(ds.train_epoch(), ds.train), "used as published"
    for split in (ds.train, ds.valid, ds.test):
        assert ((split == 0) | (split == 1)).all()
    assert 0.10 < ds.train.mean().item() < 0.16  # MNIST ink fraction


def test_frey_face(data_root):
    ds = load_dataset("frey-face", data_root, download=False)
    assert ds.train.shape[0] + ds.test.shape[0] == 1965
    assert ds.train.shape[1] == 28 * 20 and ds.image_shape == (28, 20)
    assert ds.likelihood == "gaussian" and not ds.binarize
    assert 0.0 <= ds.train.min() and ds.train.max() <= 1.0
    # a face is brighter in the middle than at the left/right borders, so the layout is right
    mean_image = ds.train.mean(0).reshape(28, 20)
    assert mean_image[:, 5:15].mean() > mean_image[:, [0, 19]].mean()


def _listing(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_data_root_is_never_written(data_root):
    before = _listing(data_root)
    for name in ("mnist", "binarized-mnist", "frey-face"):
        load_dataset(name, data_root)
    assert _listing(data_root) == before


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root("explicit") == tmp_path / "explicit"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("PYRO_VAE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_root() == tmp_path / "cache" / "pyro-vae"


def test_missing_files_name_them(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", tmp_path, download=False)
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "MNIST" / "raw") in message
    assert "PYRO_VAE_DATA" in message


def test_offline_download_fails_with_clear_error(tmp_path):
    # this machine (and CI) cannot reach the publishers: the error names the file and the address
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("frey-face", tmp_path, mirror=f"file://{tmp_path}/no-mirror-here")
    assert "frey_rawface.mat" in str(err.value) and "roweis" in str(err.value)
    assert not list(tmp_path.rglob("*.mat")) and not list(tmp_path.rglob("*.part"))


def test_download_verifies_checksums(data_root, tmp_path):
    root = tmp_path / "root"
    ds = load_dataset("frey-face", root, mirror=f"file://{data_root}")
    assert (root / "FreyFace" / "frey_rawface.mat").is_file()
    assert ds.train.shape[0] + ds.test.shape[0] == 1965
    ds = load_dataset("mnist", root, mirror=f"file://{data_root}")
    assert ds.test.shape == (10000, 784)

    bad_mirror = tmp_path / "bad"
    (bad_mirror / "FreyFace").mkdir(parents=True)
    corrupt = bytearray((data_root / "FreyFace" / "frey_rawface.mat").read_bytes())
    corrupt[5000] ^= 0xFF
    (bad_mirror / "FreyFace" / "frey_rawface.mat").write_bytes(bytes(corrupt))
    root2 = tmp_path / "root2"
    with pytest.raises(DataNotFoundError, match="checksum mismatch"):
        load_dataset("frey-face", root2, mirror=f"file://{bad_mirror}")
    assert not (root2 / "FreyFace" / "frey_rawface.mat").exists(), "no unverified file left behind"


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="mnist, fashion-mnist, binarized-mnist, frey-face"):
        load_dataset("cifar10")


def test_corrupt_files_are_refused(data_root, tmp_path):
    truncated = tmp_path / "short.amat"
    truncated.write_bytes((data_root / "BinarizedMNIST" / "binarized_mnist_test.amat").read_bytes()[:10001])
    with pytest.raises(ValueError, match="corrupt"):
        read_amat(truncated)
    idx = tmp_path / "short-idx3-ubyte"
    import gzip

    idx.write_bytes(gzip.decompress((data_root / "MNIST/raw/t10k-images-idx3-ubyte.gz").read_bytes())[:5000])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(idx)
    assert read_idx(data_root / "MNIST/raw/t10k-labels-idx1-ubyte.gz").dtype == np.uint8


def test_package_layers_and_exports(data_root):
    """files -> formats -> datasets: a lower layer never imports a higher one; the package
    re-exports every public name of its modules; the readers return the publishers' pixels."""
    import ast
    import importlib

    import pyro_vae.data as data

    layers = ["files", "formats", "datasets"]
    for i, layer in enumerate(layers):
        module = importlib.import_module(f"pyro_vae.data.{layer}")
        imported = {node.module for node in ast.walk(ast.parse(open(module.__file__).read()))
                    if isinstance(node, ast.ImportFrom) and node.level > 0}
        assert not imported & set(layers[i + 1:]), f"{layer} imports a later layer: {imported}"
    assert all(getattr(data, name) is not None for name in data.__all__)
    assert {"load_dataset", "Dataset", "read_frey", "DataNotFoundError"} <= set(data.__all__)
    faces = data.read_frey(data_root / "FreyFace" / "frey_rawface.mat")
    assert faces.shape == (1965, 28, 20) and faces.dtype == np.uint8
