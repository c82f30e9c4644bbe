"""Bad input: each case gets an error whose message names the problem, and no run folder.

Each case goes through the public entry points (``train``, ``estimate_log_likelihood``,
``load_dataset``, ``build_model``, ``get_elbo``) on real MNIST or real files.
"""

import pytest
import pyro
import pyro.distributions as dist
import torch

from pyro_vae import ModelGuideError, VAE, build_model, estimate_log_likelihood, get_elbo, load_dataset, train
from pyro_vae.data import DataNotFoundError
from pyro_vae.models import ConditionalVAE


@pytest.fixture(scope="module")
def x(mnist):
    return torch.bernoulli(mnist.test[:200], generator=torch.Generator().manual_seed(0))


def broken(x, change):
    y = x.clone()
    change(y)
    return y


def set_pixel(value):
    def change(y):
        y[150, 300] = value  # beyond the checker's first batch: every datapoint is checked
    return change


CASES = {
    "grey pixels under a Bernoulli likelihood": (lambda x: broken(x, set_pixel(0.5)),
                                                 r"1 of 200 datapoints lie outside the support of Bernoulli; e\.g\. grey"),
    "a NaN pixel": (lambda x: broken(x, set_pixel(float("nan"))), r"1 of 200 datapoints hold NaN or inf values"),
    "an inf pixel": (lambda x: broken(x, set_pixel(float("inf"))), r"1 of 200 datapoints hold NaN or inf values"),
    "images not flattened": (lambda x: x.reshape(-1, 28, 28),
                             r"shape \(200, 28, 28\); the pair takes \(batch, 784\).*x\.reshape\(len\(x\), -1\)"),
    "the wrong number of pixels": (lambda x: x[:, :700], r"shape \(200, 700\).*built for data_dim=784"),
    "bytes instead of floats": (lambda x: (x * 255).to(torch.uint8), r"dtype torch\.uint8.*x\.float\(\) / 255"),
    "float64 data for a float32 pair": (lambda x: x.double(),
                                        r"dtype torch\.float64 but the pair's parameters are torch\.float32"),
    "a single image without a batch dimension": (lambda x: x[0], r"\(num_datapoints, \.\.\.\) tensor, got \(784,\)"),
    "an empty data set": (lambda x: x[:0], r"empty"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_is_named_by_train_and_estimator(case, x, tmp_path):
    make, message = CASES[case]
    data = make(x)
    vae = VAE(784, latent_dim=2, hidden_dim=10)
    with pytest.raises(ValueError, match=message):
        train(vae.model, vae.guide, data, batch_size=min(10, max(len(data), 1)), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists(), "a failed start leaves no run folder"
    with pytest.raises(ValueError, match=message):
        estimate_log_likelihood(vae.model, vae.guide, data, num_samples=10)


def test_batch_size_larger_than_the_data(x, tmp_path):
    vae = VAE(784, latent_dim=2, hidden_dim=10)
    with pytest.raises(ValueError, match="batch_size must be between 1 and the training set size 200, got 500"):
        train(vae.model, vae.guide, x, batch_size=500, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_missing_labels_for_a_conditional_model(x, tmp_path):
    cvae = ConditionalVAE(784, latent_dim=2, hidden_dim=10)
    with pytest.raises(ValueError, match="labels=True but the data set 'tensor' has no labels"):
        train(cvae.model, cvae.guide, x, labels=True, out=tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"the conditional VAE needs labels: call model\(x, y\)"):
        train(cvae.model, cvae.guide, x, out=tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"labels y must be integers in \[0, 10\)"):
        estimate_log_likelihood(cvae.model, cvae.guide, x, 10, 100, torch.full((200,), 12))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("num_samples", [0, -5])
def test_num_samples_must_be_positive(x, num_samples):
    vae = VAE(784, latent_dim=2, hidden_dim=10)
    with pytest.raises(ValueError, match=f"num_samples must be a positive number of importance samples, got {num_samples}"):
        estimate_log_likelihood(vae.model, vae.guide, x, num_samples)


@pytest.mark.parametrize("call, message", [
    (lambda: load_dataset("mnsit"), "unknown data set 'mnsit'; did you mean 'mnist'? choose one of mnist, fashion-mnist"),
    (lambda: build_model("cnv", 784), "unknown model 'cnv'; did you mean 'conv'? choose one of mlp, conv"),
    (lambda: get_elbo("meanfeild"), "unknown ELBO 'meanfeild'; did you mean 'meanfield'? choose one of trace, meanfield, iwae"),
    (lambda: VAE(784, likelihood="bernouli"), "unknown likelihood 'bernouli'; did you mean 'bernoulli'?"),
    (lambda: train(None, None, torch.zeros(2, 2), batch_size=1, optimizer="adamw"), "unknown optimizer 'adamw'; did you mean 'adam'?"),
])
def test_unknown_names_suggest_the_valid_ones(call, message):
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        call()


def test_a_data_root_missing_files_names_them(tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path, download=False)


def test_model_guide_sites_that_do_not_match(x, tmp_path):
    vae = VAE(784, latent_dim=2, hidden_dim=10)

    def guide(x):  # samples "w" where the model has "z"
        pyro.module("encoder", vae.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = vae.encoder(x)
            pyro.sample("w", dist.Normal(loc, scale).to_event(1))

    with pytest.raises(ModelGuideError, match="latent site 'z' of the model has no site in the guide"):
        train(vae.model, guide, x, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
