"""M2 (Kingma et al. 2014): the semi-supervised objective, and the estimators on rows with and without
labels, against computations by hand; the semi-supervised split of real MNIST; a short real run."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from pyro_vae import build_model, check_model_guide, estimate_log_likelihood, evaluate_elbo, train
from pyro_vae.data import labelled_indices, semi_supervised
from pyro_vae.models import SemiSupervisedVAE
from pyro_vae.objectives import SemiSupervisedELBO

C, D = 3, 5


class ClassOnlyPair(nn.Module):
    """An M2 without z, written as a Pyro user writes the obs_mask idiom: every quantity is exact."""

    def __init__(self):
        super().__init__()
        self.classifier, self.decoder = nn.Linear(D, C), nn.Linear(C, D)

    def model(self, x, y=None):
        pyro.module("toy", self)
        labelled = y >= 0
        with pyro.plate("data", len(x)):
            with poutine.mask(mask=labelled):
                pyro.sample("y", dist.Categorical(logits=x.new_zeros(C)), obs=y.clamp(min=0))
            with poutine.mask(mask=~labelled):
                guess = pyro.sample("y_unobserved", dist.Categorical(logits=x.new_zeros(C)))
            value = torch.where(labelled, y.clamp(min=0), guess)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(F.one_hot(value, C).float())).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.module("toy", self)
        with pyro.plate("data", len(x)), poutine.mask(mask=y < 0):
            pyro.sample("y_unobserved", dist.Categorical(logits=self.classifier(x)), infer={"enumerate": "parallel"})


def _by_hand(pair, x, y):
    """Per row: log p(x, y) where labelled and log p(x) elsewhere (exact), the ELBO, and log q(y | x)."""
    log_px_c = torch.stack([dist.Bernoulli(logits=pair.decoder(F.one_hot(torch.full((len(x),), c), C).float()))
                            .to_event(1).log_prob(x) for c in range(C)], -1)  # (B, C)
    joint = log_px_c - math.log(C)
    log_q = torch.log_softmax(pair.classifier(x), -1)
    labelled, known = y >= 0, y.clamp(min=0)
    at_label = joint.gather(-1, known[:, None])[:, 0]
    log_lik = torch.where(labelled, at_label, joint.logsumexp(-1))
    elbo = torch.where(labelled, at_label, (log_q.exp() * (joint - log_q)).sum(-1))
    return log_lik, elbo, log_q.gather(-1, known[:, None])[:, 0] * labelled


@pytest.fixture
def toy():
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((6, D), 0.4))
    return ClassOnlyPair(), x, torch.tensor([2, -1, 0, -1, -1, 1])


def test_objective_and_gradients_are_the_papers_exactly(toy):
    pair, x, y = toy
    alpha = 0.7
    check_model_guide(pair.model, pair.guide, x, elbo=SemiSupervisedELBO(alpha), y=y)
    loss = SemiSupervisedELBO(alpha).differentiable_loss(pair.model, pair.guide, x, y=y)
    _, elbo, log_q = _by_hand(pair, x, y)
    expected = -(elbo.sum() + alpha * log_q.sum())
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-5)
    params = list(pair.parameters())
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    unsupervised = SemiSupervisedELBO(0.0).differentiable_loss(pair.model, pair.guide, x, y=y)
    torch.testing.assert_close(unsupervised, -elbo.sum(), rtol=1e-6, atol=1e-5)


def test_estimators_on_labelled_and_unlabelled_rows_are_exact(toy):
    pair, x, y = toy
    log_lik, elbo, _ = _by_hand(pair, x, y)
    estimate = estimate_log_likelihood(pair.model, pair.guide, x, 10, 6, y=y, progress=False)
    torch.testing.assert_close(estimate.log_likelihood, log_lik.double().detach(), rtol=0, atol=1e-5)
    mean, _ = evaluate_elbo(pair.model, pair.guide, x, 6, y=y)
    assert mean == pytest.approx(elbo.mean().item(), abs=1e-5)


def _manual_log_weights(pair, x, c, draws, generator):
    """``(draws, B)`` log p(x, c, z) - log q(z | x, c) with z ~ q(z | x, c), class ``c`` per row, by hand."""
    one_hot = F.one_hot(c, pair.num_classes).float()
    loc, scale = pair.encoder(torch.cat([x, one_hot], -1))
    z = loc + scale * torch.randn((draws,) + loc.shape, generator=generator)
    logits = pair.decoder(torch.cat([z, one_hot.expand(draws, -1, -1)], -1))
    return (dist.Bernoulli(logits=logits).to_event(1).log_prob(x) - math.log(pair.num_classes)
            + dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - dist.Normal(loc, scale).log_prob(z).sum(-1)).double()


def test_shipped_m2_estimate_and_objective_by_hand():
    """Independent importance sampler and Monte Carlo objective for the shipped pair with z.

    Estimate: both sides are IWAE_K bounds of the same rows, K = 4000; their difference has mean 0
    and a standard error from the hand weights' variance (delta method, sqrt(2) for two independent
    sides); tolerance 5 SE. Objective: the hand J^alpha is a mean over 4000 draws per class; the
    package's loss with 4000 vectorized particles; tolerance 5 SE of the difference. An estimate
    that sums instead of averaging the masked class (off by log 3 on a labelled row) or a classifier
    term counted per particle fails."""
    pyro.clear_param_store()
    torch.manual_seed(1)
    pair = SemiSupervisedVAE(D, latent_dim=2, hidden_dim=8, num_classes=C)
    x, y = torch.bernoulli(torch.full((4, D), 0.5)), torch.tensor([1, -1, 0, -1])
    K, gen = 4000, torch.Generator().manual_seed(2)
    with torch.no_grad():
        per_class = torch.stack([_manual_log_weights(pair, x, torch.full((4,), c), K, gen) for c in range(C)])
        log_mean = per_class.logsumexp(1) - math.log(K)  # (C, B)
        rel_var = (per_class - log_mean[:, None]).exp().var(1) / K  # (C, B): var of w / mean, per mean
        known = y.clamp(min=0)
        labelled_value = log_mean.gather(0, known[None])[0]
        unlabelled_value = log_mean.logsumexp(0)
        share = (log_mean - unlabelled_value).exp()  # each class's part of p(x)
        se = torch.where(y >= 0, rel_var.gather(0, known[None])[0].sqrt(), (share ** 2 * rel_var).sum(0).sqrt())
        by_hand = torch.where(y >= 0, labelled_value, unlabelled_value)
        estimate = estimate_log_likelihood(pair.model, pair.guide, x, K, 4, y=y, seed=3, progress=False)
    diff = estimate.log_likelihood - by_hand
    assert (diff.abs() < 5 * math.sqrt(2) * se).all(), (diff, se)

    alpha = 2.0
    with torch.no_grad():
        log_q = torch.log_softmax(pair.classifier(x), -1).double()
        q = log_q.exp().T  # (C, B)
        terms = torch.where(y >= 0, per_class.mean(1).gather(0, known[None])[0] + alpha * log_q.gather(-1, known[:, None])[:, 0],
                            (q * (per_class.mean(1) - log_q.T)).sum(0))
        var = torch.where(y >= 0, per_class.var(1).gather(0, known[None])[0], (q ** 2 * per_class.var(1)).sum(0)) / K
    pyro.set_rng_seed(4)
    loss = SemiSupervisedELBO(alpha, num_particles=K, max_plate_nesting=1).differentiable_loss(
        pair.model, pair.guide, x, y=y).detach()
    assert abs(-loss.item() - terms.sum().item()) < 5 * math.sqrt(2 * var.sum().item()), (loss, terms)


def test_semi_supervised_split(mnist):
    data, repeat = semi_supervised(mnist, 100, labelled_fraction=0.1, seed=0)
    num_unlabelled = len(mnist.train) - 100
    assert repeat == round(0.1 * num_unlabelled / (0.9 * 100)) and len(data.train) == num_unlabelled + 100 * repeat
    y = data.train_named["y"]
    assert (y[:num_unlabelled] == -1).all() and (y[num_unlabelled:] >= 0).all()
    chosen = labelled_indices(mnist.train_labels, 100, 10, seed=0)
    assert torch.equal(torch.bincount(mnist.train_labels[chosen], minlength=10), torch.full((10,), 10))
    torch.testing.assert_close(data.train[num_unlabelled:num_unlabelled + 100], mnist.train[chosen])
    assert torch.equal(y[num_unlabelled:num_unlabelled + 100], mnist.train_labels[chosen])
    assert data.train_labels is None and (data.test_named["y"] == -1).all()
    assert torch.equal(data.test_labels, mnist.test_labels)
    with pytest.raises(ValueError, match="positive multiple of the 10 classes"):
        semi_supervised(mnist, 105)


def test_m2_trains_on_real_mnist_with_a_few_labels(mnist):
    data, _ = semi_supervised(mnist.subset(num_train=2000, num_test=200), 100)
    vae = build_model("m2", 784, hidden_dim=100, latent_dim=10)
    before, _ = evaluate_elbo(vae.model, vae.guide, data.test, 200)
    result = train(vae.model, vae.guide, data, elbo=SemiSupervisedELBO(alpha=5.0), epochs=1, batch_size=50,
                   progress=False)
    after, se = evaluate_elbo(vae.model, vae.guide, data.test, 200)
    assert after > before + 100, (before, after)  # about -545 nats at initialisation
    # the epoch's test ELBO (test rows carry y = -1) bounds log p(x), as evaluate_elbo with y=None does
    assert abs(result.final["test_elbo"] - after) < 5 * math.sqrt(2) * se
    with pytest.raises(ValueError, match="y_unobserved"):
        train(vae.model, vae.guide, data, elbo="trace", epochs=1, progress=False)
