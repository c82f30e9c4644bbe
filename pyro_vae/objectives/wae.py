r"""The WAE-MMD loss (Tolstikhin et al. 2018, Algorithm 2) and its evaluation.

A Wasserstein autoencoder minimizes, over encoder and decoder,

.. math::
    \mathbb{E}_{p(x)} \mathbb{E}_{q(z \mid x)} [c(x, z)] + \lambda\, \mathrm{MMD}^2(q_Z, p_Z),
    \qquad q_Z = \mathbb{E}_{p(x)} q(z \mid x),

a reconstruction cost plus a penalty that matches the *aggregate* posterior to the prior (not each
``q(z | x)``, which may be a point mass). Here ``c(x, z) = -log p(x | z)``, the model's observation
log-density (nats), and the MMD uses the inverse multiquadric kernel of the authors' code.

References:
    Tolstikhin, Bousquet, Gelly & Schölkopf (2018), Wasserstein Auto-Encoders, ICLR,
    https://arxiv.org/abs/1711.01558 (code: https://github.com/tolstikhin/wae, ``wae.py``,
    ``mmd_penalty``);
    Gretton, Borgwardt, Rasch, Schölkopf & Smola (2012), A Kernel Two-Sample Test, JMLR, eq. (3).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from pyro import poutine

from ..check.objective_rules import wae_refusal
from ..evaluation.rng import forked_rng, seed_minibatch
from ..importance import sample_sites
from .base import LossFromDifferentiableLoss

__all__ = ["IMQ_SCALES", "WAELoss", "WAEReport", "imq_kernel", "mmd_squared", "wae_metrics", "wae_traces"]

IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
"""The multipliers ``s`` of the kernel's scales ``C = 2 d sigma^2 s`` (the authors' code)."""


def imq_kernel(a: torch.Tensor, b: torch.Tensor, scales=IMQ_SCALES, sigma2: float = 1.0) -> torch.Tensor:
    r"""``k(a_i, b_j) = sum_s C_s / (C_s + ||a_i - b_j||^2)``, ``C_s = 2 d sigma2 s``, for ``a``
    ``(n, d)`` and ``b`` ``(m, d)``: ``(n, m)``. The inverse multiquadric kernel summed over scales;
    ``2 d sigma2`` is ``E ||z - z'||^2`` for ``z, z' ~ Normal(0, sigma2 I)``. Squared distances by
    differences (exactly 0 between a point and itself); memory ``O(n m d)``."""
    d2 = (a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1)
    base = 2.0 * a.shape[-1] * sigma2
    return sum(base * s / (base * s + d2) for s in scales)


def mmd_squared(a: torch.Tensor, b: torch.Tensor, scales=IMQ_SCALES, sigma2: float = 1.0) -> torch.Tensor:
    r"""The unbiased estimate of ``MMD^2`` between the distributions of the rows of ``a`` ``(n, d)``
    and ``b`` ``(m, d)`` with :func:`imq_kernel` (Gretton et al. 2012, eq. 3; the authors' code):

    .. math::
        \frac{1}{n(n-1)} \sum_{i \ne j} k(a_i, a_j) + \frac{1}{m(m-1)} \sum_{i \ne j} k(b_i, b_j)
        - \frac{2}{nm} \sum_{i, j} k(a_i, b_j)

    (the within-sample diagonals excluded, every cross pair kept). Can be negative; its mean is
    ``MMD^2`` exactly. A 0-d tensor; 0 when ``n < 2`` or ``m < 2`` (no pair to estimate it from)."""
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        return a.new_zeros(()) * a.sum()  # keeps the graph (and the dtype) of a

    def off_diagonal_mean(k: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(k.shape[0], dtype=torch.bool, device=k.device)
        return k.masked_fill(eye, 0.0).sum() / (k.shape[0] * (k.shape[0] - 1))

    within = off_diagonal_mean(imq_kernel(a, a, scales, sigma2)) + off_diagonal_mean(imq_kernel(b, b, scales, sigma2))
    return within - 2.0 * imq_kernel(a, b, scales, sigma2).mean()


def _rows(tensor: torch.Tensor, site: dict, data_plate: str, event_dims: int) -> torch.Tensor:
    """``tensor`` (a site's value, ``event_dims`` event dims; or its log-density, 0) as
    ``(datapoints, -1)``: the data plate's dim first, every other dim flattened."""
    frame = next((f for f in site["cond_indep_stack"] if f.name == data_plate), None)
    if frame is None:
        raise ValueError(f"WAELoss: site {site['name']!r} is not inside pyro.plate({data_plate!r}, batch)")
    moved = tensor.movedim(frame.dim - event_dims, 0)
    return moved.reshape(moved.shape[0], -1)


def wae_traces(model, guide, data_plate: str, args: tuple, kwargs: dict):
    """Guide trace, model trace replayed against it, the guide's codes ``z`` ``(B, d)`` (one row per
    datapoint, event dims flattened) and as many draws from the model's prior at that site
    ``(B, d)`` (no gradient)."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    latent = dict(sample_sites(model_trace, observed=False))
    pairs = [(name, site, latent.get(name)) for name, site in sample_sites(guide_trace)]
    reason = wae_refusal(pairs)
    if reason is not None:
        raise ValueError(f"WAELoss: {reason}")
    _, g, m = pairs[0]
    prior = m["fn"]
    draws = (prior.rsample() if prior.has_rsample else prior.sample()).detach()  # rsample: the compiled step's draw
    events = len(g["fn"].event_shape)
    z, prior_z = _rows(g["value"], g, data_plate, events), _rows(draws, m, data_plate, events)
    return guide_trace, model_trace, z, prior_z


class WAELoss(LossFromDifferentiableLoss):
    r"""The WAE-MMD loss of a minibatch of ``B`` datapoints (nats, summed over the minibatch as the
    observed sites are scaled):

    .. math::
        -\sum_n \log p(x_n \mid z_n) + \lambda\, B\, \widehat{\mathrm{MMD}}^2(\{z_n\}, \{\tilde z_n\}),
        \qquad z_n \sim q(z \mid x_n),\ \tilde z_n \sim p(z)

    ``B`` times the paper's per-datapoint objective (reconstruction averaged over the minibatch plus
    ``lambda MMD^2``), so the penalty keeps its weight against the summed reconstruction at any
    batch size. ``z_n``: the guide's draws (one per datapoint, rows of the data plate, event dims
    flattened); ``z~_n``: ``B`` draws from the model's prior at the same site (torch's global RNG,
    which checkpoints save; without gradient: the prior is fixed, as in the paper).
    ``MMD^2``: :func:`mmd_squared` (unbiased, inverse multiquadric kernel over :data:`IMQ_SCALES`).
    The value is not a bound on ``log p(x)``: a run's ``train_elbo`` is minus this loss per datapoint.

    The pair has one latent site, continuous in the model, reparameterized in the guide (a
    ``Delta`` at the encoder's output, or e.g. a Normal), without ``poutine.scale`` on it (KL
    warm-up and beta weigh a KL term that this loss does not have): refused otherwise, by the
    checker (rule set ``"wae"``, :attr:`checker_rules`, which also lets a point-mass guide site
    through) and by the loss itself. A minibatch of one datapoint has no MMD estimate: its penalty is 0.

    Attributes (after each call with gradients or not; 0-d tensors, no host sync; not updated by
    the compiled step's replays): ``reconstruction_cost`` (``-log p(x | z)``, nats per datapoint)
    and ``mmd2`` (``MMD^2``) of the last minibatch. :func:`wae_metrics` evaluates both on a data set.

    Args:
        lam: ``lambda`` (10, the paper's MNIST setting; they weigh ``0.05 ||x - G(z)||^2``, here the
            Bernoulli ``-log p(x | z)`` of about 100 nats per MNIST digit, so relatively weaker).
        scales, sigma2: of :func:`imq_kernel` (``sigma2``: the prior's variance per dimension).
        data_plate: the name of the pair's plate over datapoints.

    Example::

        >>> import torch
        >>> from pyro_vae.models.wae import WAE
        >>> from pyro_vae.objectives.wae import WAELoss
        >>> wae, objective = WAE(784, hidden_dim=16), WAELoss(lam=10.0)
        >>> x = torch.bernoulli(torch.full((5, 784), 0.3))
        >>> loss = objective.differentiable_loss(wae.model, wae.guide, x)
        >>> bool(loss > 0), objective.mmd2.shape
        (True, torch.Size([]))
    """

    checker_rules = "wae"

    def __init__(self, lam: float = 10.0, scales=IMQ_SCALES, sigma2: float = 1.0, data_plate: str = "data"):
        if not lam >= 0:
            raise ValueError(f"the MMD weight lambda must be >= 0, got {lam}")
        if not scales or not all(s > 0 for s in scales) or not sigma2 > 0:
            raise ValueError(f"the kernel's scales and sigma2 must be positive, got {scales} and {sigma2}")
        super().__init__(num_particles=1)
        self.lam, self.scales, self.sigma2, self.data_plate = float(lam), tuple(scales), float(sigma2), data_plate
        self.reconstruction_cost = self.mmd2 = None

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss of a minibatch (class docstring), a 0-d tensor.

        Raises:
            ValueError: the pair is not one the loss is defined for (class docstring).
        """
        _, model_trace, z, prior_z = wae_traces(model, guide, self.data_plate, args, kwargs)
        reconstruction = -model_trace.log_prob_sum(lambda name, site: site["is_observed"])
        mmd2 = mmd_squared(z, prior_z, self.scales, self.sigma2)
        batch = z.shape[0]
        self.reconstruction_cost, self.mmd2 = reconstruction.detach() / batch, mmd2.detach()
        return reconstruction + self.lam * batch * mmd2


@dataclass
class WAEReport:
    """What :func:`wae_metrics` measures.

    Attributes:
        reconstruction_cost, reconstruction_cost_se: mean and standard error over datapoints of
            ``-log p(x | z)``, ``z ~ q(z | x)`` (nats per datapoint, unscaled; lower is better).
        mmd2, mmd2_se: mean and standard error over minibatches of the unbiased ``MMD^2``
            estimate between the guide's codes of a minibatch and as many prior draws (``nan``
            standard error for one minibatch).
        num_points: datapoints evaluated.
    """

    reconstruction_cost: float
    reconstruction_cost_se: float
    mmd2: float
    mmd2_se: float
    num_points: int = 0

    def format(self) -> str:
        """Two lines, labelled with what they are."""
        return (f"reconstruction cost -log p(x | z), z ~ q(z|x): {self.reconstruction_cost:.2f} ± "
                f"{self.reconstruction_cost_se:.2f} nats\nMMD^2(q_Z, p_Z) (IMQ kernel, per minibatch): "
                f"{self.mmd2:.4f} ± {self.mmd2_se:.4f}\n({self.num_points} datapoints)")


@torch.no_grad()
def wae_metrics(pair, data: torch.Tensor, *args, batch_size: int = 1000, seed: int | None = 0,
                scales=IMQ_SCALES, sigma2: float = 1.0, data_plate: str = "data", **kwargs) -> WAEReport:
    """Reconstruction cost and ``MMD^2`` of a WAE-style pair on ``data`` ``(N, D)``, minibatch by
    minibatch of ``batch_size`` (the ``MMD^2`` is a minibatch statistic: compare numbers taken at
    one batch size). ``pair``: an object with ``model`` and ``guide`` (a :class:`~pyro_vae.models.wae.WAE`)
    or a ``(model, guide)`` tuple; extra arguments as for :func:`~pyro_vae.evaluate_elbo`
    (tensors with ``N`` rows are sliced with ``data``). ``seed``: the draws (guide, prior) are
    reproducible and the caller's RNG streams left as they were; ``None``: drawn from them.

    Raises:
        ValueError: the pair is not one :class:`WAELoss` is defined for.
    """
    model, guide = pair if isinstance(pair, tuple) else (pair.model, pair.guide)
    costs, mmds, n = [], [], data.shape[0]
    with forked_rng(data.device) if seed is not None else contextlib.nullcontext():
        for i, start in enumerate(range(0, n, batch_size)):
            if seed is not None:
                seed_minibatch(seed + i, data.device)
            rows = slice(start, min(start + batch_size, n))
            cut = [a[rows] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n else a for a in args]
            named = {k: v[rows] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
                     for k, v in kwargs.items()}
            with poutine.block():
                _, model_trace, z, prior_z = wae_traces(model, guide, data_plate, (data[rows], *cut), named)
            costs.append(-sum(_rows(s["fn"].log_prob(s["value"]), s, data_plate, 0).sum(-1).double()
                              for _, s in sample_sites(model_trace, observed=True)))
            mmds.append(mmd_squared(z.double(), prior_z.double(), scales, sigma2))
    costs, mmds = torch.cat(costs), torch.stack(mmds)
    se = lambda v: float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return WAEReport(float(costs.mean()), se(costs), float(mmds.mean()), se(mmds), n)

