"""Right or refused, meanfield: the analytic-KL objective trains every pair the checker passes on the
pair's ELBO, i.e. its gradient agrees with Trace_ELBO's in expectation; hierarchies whose guide runs
against the model's order and Bernoulli latents included.

Every pair except the shipped HierarchicalVAE is written here, as a user would write it.

The statistical comparisons: each estimator's gradient is averaged over ``REPS`` independent
replicates of ``K`` vectorized particles (fixed seeds); the gradient of every parameter tensor is
projected on a fixed random unit direction, one coordinate per tensor. For each coordinate the
difference of the two means is divided by its standard error ``sqrt(se_a^2 + se_b^2)`` (each ``se``
the replicates' standard deviation over ``sqrt(REPS)``). Equal expectations give roughly standard
normal z-scores; we require ``max |z| < 4``: with ``m`` coordinates a false alarm has probability
at most ``m * 6.3e-5`` (0.2 % for the 30 coordinates of the largest pair). A biased objective
shows as z-scores in the tens.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import check_model_guide, get_elbo
from pyro_vae.check.structure import pair_structure
from pyro_vae.models import HierarchicalVAE

B, D, Z = 4, 6, 2
REPS, K = 100, 64
MAX_Z = 4.0


def _bottom_up_pair():
    """Model z2 -> z1 -> x; guide x -> z1 -> z2 (against the model's order): the KL of z1 is not a
    term of the ELBO, the KL of z2 is."""
    def model(x):
        a = pyro.param("a", torch.tensor([[1.0, -0.5], [0.3, 0.8]]))
        w = pyro.param("w", torch.linspace(-1.0, 1.0, Z * D).reshape(Z, D))
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(z2 @ a, 0.5).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ w, 0.7).to_event(1), obs=x)

    def guide(x):
        c = pyro.param("c", 0.2 * torch.linspace(-1.0, 1.0, D * Z).reshape(D, Z))
        d = pyro.param("d", torch.tensor([[0.6, 0.1], [-0.2, 0.9]]))
        log_s = pyro.param("log_s", torch.tensor([-0.3, -0.5]))
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x @ c, log_s[0].exp()).to_event(1))
            pyro.sample("z2", dist.Normal(z1 @ d, log_s[1].exp()).to_event(1))

    return model, guide


def _top_down_pair():
    """The same model; guide x -> z2 -> z1 (the model's order): both KLs are terms of the ELBO."""
    model, _ = _bottom_up_pair()

    def guide(x):
        c = pyro.param("c", 0.2 * torch.linspace(-1.0, 1.0, D * Z).reshape(D, Z))
        d = pyro.param("d", torch.tensor([[0.6, 0.1], [-0.2, 0.9]]))
        log_s = pyro.param("log_s", torch.tensor([-0.3, -0.5]))
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x @ c, log_s[1].exp()).to_event(1))
            pyro.sample("z1", dist.Normal(z2 @ d + 0.1 * x[..., :Z], log_s[0].exp()).to_event(1))

    return model, guide


def _bernoulli_pair():
    """A Bernoulli latent c (score-function gradients) next to a Normal z; the data were drawn with
    c = 1 and the likelihood reads c strongly, so the guide's q(c = 1) = 1/2 is far from the
    posterior and the score-function term carries most of the gradient of its logits ``b``."""
    def model(x):
        w = pyro.param("w", torch.linspace(-1.0, 1.0, Z * D).reshape(Z, D))
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(x.new_full((Z,), 0.3)).to_event(1))
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal((z + 2.0 * c) @ w, 0.5).to_event(1), obs=x)

    def guide(x):
        a = pyro.param("a", 0.3 * torch.linspace(-1.0, 1.0, D * Z).reshape(D, Z))
        b = pyro.param("b", torch.zeros(Z))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(logits=0.1 * x @ a + b).to_event(1))
            pyro.sample("z", dist.Normal(0.3 * x @ a, 0.8).to_event(1))

    return model, guide


def _shipped_hierarchical_pair():
    vae = HierarchicalVAE(D, latent_dim=Z, hidden_dim=8, stochastic_layers=2, likelihood="gaussian")
    return vae.model, vae.guide


PAIRS = {"shipped HierarchicalVAE": _shipped_hierarchical_pair, "bottom-up guide": _bottom_up_pair,
         "top-down guide": _top_down_pair, "Bernoulli latent": _bernoulli_pair}


def _projected_gradients(elbo, model, guide, x, seed: int) -> torch.Tensor:
    """``(REPS, m)``: per replicate, the gradient of each of the ``m`` parameter tensors projected on
    a fixed random unit direction."""
    names = sorted(name for name, _ in pyro.get_param_store().named_parameters())
    params = dict(pyro.get_param_store().named_parameters())
    directions = torch.Generator().manual_seed(123)
    units = [torch.randn(params[n].shape, generator=directions) for n in names]
    units = [u / u.norm() for u in units]
    rows = []
    for rep in range(REPS):
        pyro.set_rng_seed(seed + rep)
        with pyro.validation_enabled(False):  # as the trainer's steps run
            loss = elbo.differentiable_loss(model, guide, x)
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        rows.append(torch.stack([(g * u).sum() for g, u in zip(grads, units)]))
    return torch.stack(rows)


def _data(pair: str) -> torch.Tensor:
    """``(B, D)`` data; for the Bernoulli pair drawn from its model with c = 1."""
    if pair != "Bernoulli latent":
        return torch.randn(B, D)
    w = torch.linspace(-1.0, 1.0, Z * D).reshape(Z, D)
    return (torch.randn(B, Z) + 2.0) @ w + 0.5 * torch.randn(B, D)


def _z_scores(pair: str) -> torch.Tensor:
    model, guide = PAIRS[pair]()
    x = _data(pair)
    check_model_guide(model, guide, x, elbo="meanfield")  # passes: the objective computes the ELBO
    get_elbo("trace", max_plate_nesting=1).differentiable_loss(model, guide, x)  # creates the params
    meanfield = _projected_gradients(get_elbo("meanfield", K, max_plate_nesting=1), model, guide, x, seed=1000)
    trace = _projected_gradients(get_elbo("trace", K, max_plate_nesting=1), model, guide, x, seed=5000)
    se = (meanfield.var(0) / REPS + trace.var(0) / REPS).sqrt()
    return (meanfield.mean(0) - trace.mean(0)) / se


@pytest.fixture
def one_thread():
    """Tensors of a few dozen numbers: a second intra-op thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_meanfield_gradient_is_the_elbo_gradient(pair, one_thread):
    z = _z_scores(pair)
    assert z.abs().max() < MAX_Z, z  # tolerance from the Monte Carlo standard error (module docstring)
    assert z.numel() >= 3


def test_the_first_call_reads_the_structure_without_drawing_random_numbers():
    """The structure is read at the pair's first call with the RNG state restored: a fresh objective
    and one that has seen the pair give the same loss at the same seed (bitwise resume relies on it)."""
    model, guide = _bottom_up_pair()
    x = torch.randn(B, D)
    warm = get_elbo("meanfield", max_plate_nesting=1)
    warm.differentiable_loss(model, guide, x)
    pyro.set_rng_seed(9)
    fresh_loss = get_elbo("meanfield", max_plate_nesting=1).differentiable_loss(model, guide, x)
    pyro.set_rng_seed(9)
    assert fresh_loss.item() == warm.differentiable_loss(model, guide, x).item()


def test_the_structure_is_read_from_the_programs():
    """Which sites' KLs are ELBO terms, for pairs whose site order says otherwise."""
    x = torch.randn(B, D)
    model, guide = _bottom_up_pair()
    structure = pair_structure(model, guide, x)
    assert structure.model_parents == {"z1": {"z2"}, "z2": set()}
    assert structure.guide_parents == {"z1": set(), "z2": {"z1"}}
    assert structure.analytic_kl_sites == {"z2"} and structure.kl_blockers("z1") == {"z2"}
    model, guide = _top_down_pair()
    assert pair_structure(model, guide, x).analytic_kl_sites == {"z1", "z2"}
    assert pair_structure(*_shipped_hierarchical_pair(), x).analytic_kl_sites == {"z2"}

    def independent_guide(x):  # draws z1 before z2 (Pyro's order check warns) but neither from the other
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", dist.Normal(0.1 * x[..., :Z], 1.0).to_event(1))
            pyro.sample("z2", dist.Normal(0.2 * x[..., :Z], 1.0).to_event(1))

    assert pair_structure(model, independent_guide, x).analytic_kl_sites == {"z1", "z2"}


def test_top_down_pair_uses_the_closed_form_kls():
    """Where the KLs are ELBO terms they are used: the loss equals -log p(x | z1) + KL(z2) + KL(z1 | z2)
    computed by hand at the same draws, not the sampled log-ratio."""
    model, guide = _top_down_pair()
    x = torch.randn(B, D)
    elbo = get_elbo("meanfield", max_plate_nesting=1)
    pyro.set_rng_seed(3)
    loss = elbo.differentiable_loss(model, guide, x)
    pyro.set_rng_seed(3)
    trace = pyro.poutine.trace(guide).get_trace(x)
    q1, q2 = trace.nodes["z1"], trace.nodes["z2"]
    a, w = pyro.param("a"), pyro.param("w")
    kl2 = torch.distributions.kl_divergence(q2["fn"].base_dist, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    kl1 = torch.distributions.kl_divergence(q1["fn"].base_dist,
                                            torch.distributions.Normal(q2["value"] @ a, 0.5)).sum(-1)
    log_lik = torch.distributions.Normal(q1["value"] @ w, 0.7).log_prob(x).sum(-1)
    torch.testing.assert_close(loss, (-log_lik + kl1 + kl2).sum())
