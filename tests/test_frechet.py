"""The Fréchet distance (pyro_vae.evaluation.frechet): exact against closed forms, 0 for a set with
itself to round-off, symmetric, consistent under sampling; the feature classifier trains on MNIST,
saves and loads."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from pyro_vae.evaluation.frechet import (
    FeatureNet,
    feature_moments,
    frechet_distance,
    frechet_distance_from_moments,
    sample_frechet_distance,
    train_feature_classifier,
)


def random_orthogonal(d: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def random_covariance(d: int, generator: torch.Generator, rank: int | None = None) -> torch.Tensor:
    a = torch.randn(d, rank or d, generator=generator, dtype=torch.float64)
    return a @ a.T / (rank or d)


def test_diagonal_covariances_match_the_closed_form():
    """Diagonal covariances: the trace term is sum_i (sqrt(a_i) - sqrt(b_i))^2; some variances are 0."""
    g = torch.Generator().manual_seed(1)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    a = torch.tensor([0.0, 0.5, 2.0, 9.0, 1e-4, 3.0], dtype=torch.float64)
    b = torch.tensor([1.0, 0.0, 2.0, 4.0, 1e-2, 0.3], dtype=torch.float64)
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_distance_from_moments(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_commuting_covariances_match_the_closed_form():
    """S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T (dense, commuting): the same sum in Q's basis."""
    g = torch.Generator().manual_seed(2)
    q = random_orthogonal(8, g)
    a, b = torch.rand(8, generator=g, dtype=torch.float64) * 4, torch.rand(8, generator=g, dtype=torch.float64)
    a[0] = 0.0  # singular
    mu1, mu2 = torch.randn(8, generator=g, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    expected = float((mu1 ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    got = frechet_distance_from_moments(mu1, q @ torch.diag(a) @ q.T, mu2, q @ torch.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_non_commuting_2x2_covariances_match_the_closed_form():
    """For 2 x 2 matrices, Tr sqrt(M) = sqrt(Tr M + 2 sqrt(det M)), with M = S1^(1/2) S2 S1^(1/2):
    Tr M = Tr(S1 S2), det M = det S1 det S2."""
    s1 = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[0.5, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    assert not torch.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5])
    cross = math.sqrt(float(torch.trace(s1 @ s2)) + 2 * math.sqrt(float(torch.det(s1) * torch.det(s2))))
    expected = float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2)) - 2 * cross
    assert frechet_distance_from_moments(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_dense_covariances_match_scipy_sqrtm():
    """An independent matrix square root (scipy's Schur method) on dense, non-commuting 20 x 20 covariances."""
    g = torch.Generator().manual_seed(3)
    s1, s2 = random_covariance(20, g), random_covariance(20, g)
    mu1, mu2 = torch.randn(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    cross = np.trace(scipy.linalg.sqrtm(s1.numpy() @ s2.numpy())).real
    expected = float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2)) - 2 * cross
    assert frechet_distance_from_moments(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_a_set_with_itself_is_zero_to_round_off():
    """Features with dead units (a singular covariance, as ReLU features give): |d(f, f)| at round-off,
    far below what square roots of round-off eigenvalues would leave (about 1e-7 of the trace here)."""
    g = torch.Generator().manual_seed(4)
    bias = torch.zeros(64)
    bias[:8] = -100.0  # 8 units that never fire
    f = torch.relu(torch.randn(3000, 16, generator=g) @ torch.randn(16, 64, generator=g) + bias)
    assert (f.std(0) == 0).sum() == 8 and torch.linalg.matrix_rank(torch.cov(f.T.double())) <= 56
    _, cov = feature_moments(f)
    assert abs(frechet_distance(f, f)) < 1e-11 * float(torch.trace(cov))


def test_symmetric_and_invariant_under_rigid_motions():
    """d(a, b) = d(b, a); a common rotation and shift of both sets leaves it unchanged."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(2000, 10, generator=g, dtype=torch.float64) @ torch.randn(10, 10, generator=g, dtype=torch.float64)
    b = torch.randn(1500, 10, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 10, dtype=torch.float64) + 1
    d = frechet_distance(a, b)
    assert d > 1 and frechet_distance(b, a) == pytest.approx(d, rel=1e-12)
    q, shift = random_orthogonal(10, g), torch.randn(10, generator=g, dtype=torch.float64)
    assert frechet_distance(a @ q + shift, b @ q + shift) == pytest.approx(d, rel=1e-10)


def test_features_use_the_unbiased_covariance_in_float64():
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(50, 3, generator=g), torch.randn(70, 3, generator=g) + 0.5
    expected = frechet_distance_from_moments(a.double().mean(0), torch.cov(a.double().T), b.double().mean(0),
                                             torch.cov(b.double().T))
    assert frechet_distance(a, b) == expected
    with pytest.raises(ValueError, match="n >= 2"):
        frechet_distance(a[:1], b)


def test_sampled_gaussians_estimate_the_closed_form():
    """Samples of N(mu1, S1) and N(mu2, S2): the mean of R estimates agrees with the exact distance within
    4 standard errors of that mean, plus the estimator's known upward bias of the mean term
    (Tr S1 + Tr S2) / n."""
    g = torch.Generator().manual_seed(7)
    d, n, reps = 4, 20000, 12
    s1, s2 = random_covariance(d, g), torch.diag(torch.tensor([0.2, 1.0, 2.0, 0.5], dtype=torch.float64))
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.tensor([0.3, 0.0, -0.2, 0.1], dtype=torch.float64)
    exact = frechet_distance_from_moments(mu1, s1, mu2, s2)
    l1 = torch.linalg.cholesky(s1)
    estimates = torch.tensor([
        frechet_distance(mu1 + torch.randn(n, d, generator=g, dtype=torch.float64) @ l1.T,
                         mu2 + torch.randn(n, d, generator=g, dtype=torch.float64) * s2.diagonal().sqrt())
        for _ in range(reps)])
    se = float(estimates.std() / math.sqrt(reps))
    bias = float(torch.trace(s1) + torch.trace(s2)) / n
    assert exact > 0.5 and 0 < se < 0.01
    assert abs(float(estimates.mean()) - exact) < 4 * se + bias


@pytest.fixture(scope="module")
def feature_net(mnist):
    """4 epochs on 10000 grey-level MNIST training images (about 2 s on one core)."""
    return train_feature_classifier(mnist.train[:10000], mnist.train_labels[:10000], epochs=4, seed=0,
                                    test_x=mnist.train[50000:55000], test_y=mnist.train_labels[50000:55000])


def test_classifier_learns_mnist(feature_net):
    """Held-out accuracy above 90 % (measured 92.4-92.8 % over seeds 0-2; 97.9 % with all 60000 images
    and 10 epochs), and the training leaves the caller's RNG alone."""
    assert feature_net.info["test_accuracy"] > 0.90 and feature_net.info["num_test"] == 5000
    assert feature_net.features(torch.zeros(3, 784)).shape == (3, 128)
    x, y = torch.rand(20, 784), torch.arange(20) % 10
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    train_feature_classifier(x, y, epochs=1, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_classifier_saves_and_loads(feature_net, mnist, tmp_path):
    path = feature_net.save(tmp_path / "net.pt")
    loaded = FeatureNet.load(path)
    x = mnist.test[:100]
    assert torch.equal(loaded.features(x), feature_net.features(x)) and loaded.info == feature_net.info
    again = train_feature_classifier(mnist.train[:500], mnist.train_labels[:500], epochs=1, seed=3)
    same = train_feature_classifier(mnist.train[:500], mnist.train_labels[:500], epochs=1, seed=3)
    assert torch.equal(again.features(x), same.features(x))  # the seed fixes weights and data order


def test_sample_distance_orders_real_and_fake_images(feature_net, mnist):
    """Two disjoint sets of real training images are far closer to each other in the classifier's
    feature space than uniform noise or a single repeated digit is to either."""
    real_a, real_b = mnist.train[20000:22000], mnist.train[30000:32000]
    real = sample_frechet_distance(real_a, real_b, feature_net)
    noise = sample_frechet_distance(torch.rand(2000, 784, generator=torch.Generator().manual_seed(0)), real_b,
                                    feature_net)
    ones = sample_frechet_distance(mnist.train[mnist.train_labels == 1][:2000], real_b, feature_net)
    assert abs(sample_frechet_distance(real_a, real_a, feature_net)) < 1e-8
    assert 0 < real < ones / 5 and real < noise / 5, (real, ones, noise)
