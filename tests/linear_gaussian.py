"""A linear Gaussian latent model (probabilistic PCA) whose log p(x) is known in closed form.

    z ~ N(0, I_d),   x | z ~ N(W z + mu, sigma^2 I_D)   =>   x ~ N(mu, W W^T + sigma^2 I_D)

The exact posterior is q*(z | x) = N(A (x - mu), sigma^2 M^{-1}) with M = W^T W + sigma^2 I_d
and A = M^{-1} W^T. Written as a conforming Pyro model/guide pair for the estimator tests.
Everything is float64 so that exact comparisons hold to ~1e-10.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine


class LinearGaussian:
    def __init__(self, data_dim=5, latent_dim=2, sigma=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64)
        self.mu = torch.randn(data_dim, generator=g, dtype=torch.float64)
        self.sigma = sigma
        self.latent_dim = latent_dim
        M = self.W.T @ self.W + sigma**2 * torch.eye(latent_dim, dtype=torch.float64)
        self.A = torch.linalg.solve(M, self.W.T)
        self.post_cov = sigma**2 * torch.linalg.inv(M)

    def sample(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.mu + self.sigma * torch.randn(n, self.W.shape[0], generator=g, dtype=torch.float64)

    def exact_log_likelihood(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.W.shape[0], dtype=torch.float64)
        return dist.MultivariateNormal(self.mu, cov).log_prob(x)

    def model(self, x):
        zeros = torch.zeros(self.latent_dim, dtype=torch.float64)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.mu, self.sigma).to_event(1), obs=x)

    def exact_guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal((x - self.mu) @ self.A.T, self.post_cov))

    def poor_guide(self, x):
        """Diagonal, shrunk mean and inflated scale: a deliberately imperfect proposal."""
        loc = 0.7 * (x - self.mu) @ self.A.T
        scale = 1.6 * self.post_cov.diagonal().sqrt()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def scaled_model(self, x, scale=0.3):
        """The same model with a poutine.scale inside (as a KL weight would put there)."""
        with poutine.scale(scale=scale):
            self.model(x)
