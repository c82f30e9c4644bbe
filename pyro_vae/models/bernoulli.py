"""Binary latents (:class:`BernoulliVAE`): score-function gradients, Pyro's baselines (Mnih & Gregor
2014), or exact enumeration (see :mod:`pyro_vae.models.discrete`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..nets import MLPDecoder
from .base import PairModule
from .discrete import check_states, exact_log_likelihood, layer_widths, mlp_head

__all__ = ["BernoulliVAE", "PerPixelBaseline"]


class BernoulliVAE(PairModule):
    r"""Binary latents: ``latent_dim`` Bernoulli sites ``"z0"``, ``"z1"``, ... (one per bit).

    Generative model (``model``)::

        z_ni ~ Bernoulli(logits=prior_logits_i)        i < latent_dim; 0 (uniform) or learned
        x_n ~ likelihood(decoder(z_n))

    Inference network (``guide``)::

        z_ni ~ Bernoulli(logits=encoder(x_n)_i)        mean field over the bits

    Three ways to train the same pair (:attr:`default_elbo` gives the one it was built for):

    * ``elbo="trace"``: the bits are sampled, score-function (REINFORCE) gradients for the encoder;
    * ``baseline="constant"`` (a learned number) or ``"neural"`` (an MLP of ``x``, NVIL's
      input-dependent baseline), given to every bit's site as Pyro's ``baseline_value``, with
      :class:`~pyro_vae.objectives.baselines.TraceBaseline_ELBO` (``trace`` would ignore them):
      the same gradient in expectation, lower variance. Both are a :class:`PerPixelBaseline`
      (:attr:`baseline_net`), trained by the objective's squared error;
    * ``enumerate=True`` with ``elbo="enum"``: every guide site marked for parallel enumeration, the
      ELBO summed over all ``2^latent_dim`` states exactly (at most :data:`MAX_ENUMERATED_STATES`),
      and the estimators sum them in every weight, so ``estimate_log_likelihood`` is exact
      (``num_samples=1`` suffices). Each state is decoded once per step, and with the Bernoulli
      likelihood the pixels' log-density of every state and datapoint is one matrix product, so an
      enumerated step of 8 bits costs two to three sampled ones (the generic likelihood: ``2^d x
      batch x D`` log-densities, 30 times slower at 256 states).

    Args:
        data_dim: pixels ``D`` of one flattened image.
        latent_dim: number of bits.
        hidden_dim: widths of the tanh hidden layers of encoder (decoder in reverse, baseline net
            the first one).
        prior: ``"uniform"`` (``Bernoulli(1/2)`` bits) or ``"learned"`` (a logit per bit).
        baseline: ``"none"``, ``"constant"`` or ``"neural"``; ``"auto"`` (the default) is ``"neural"``
            for sampled bits (NVIL's: the shipped ``bernoulli`` pair trains with ``elbo="baseline"``)
            and ``"none"`` with ``enumerate=True``.
        enumerate: mark the guide's sites for parallel enumeration (no baseline then).
        likelihood, beta: as for :class:`~pyro_vae.models.PairModule`.

    Example:
        >>> import pyro_vae, torch
        >>> vae = BernoulliVAE(784, latent_dim=3, hidden_dim=16, enumerate=True)
        >>> x = torch.bernoulli(torch.rand(8, 784))
        >>> pyro_vae.check_model_guide(vae.model, vae.guide, x, elbo=vae.default_elbo)
        >>> vae.exact_log_likelihood(x).shape
        torch.Size([8])
    """

    description = "binary latents, one Bernoulli site per bit: score function (with baselines) or enumerated"

    PRIORS = ("uniform", "learned")
    BASELINES = ("none", "constant", "neural")

    def __init__(self, data_dim: int, latent_dim: int = 8, hidden_dim: int | Sequence[int] = 200,
                 prior: str = "uniform", baseline: str = "auto", enumerate: bool = False,
                 likelihood: str = "bernoulli", beta: float = 1.0):
        super().__init__(data_dim, latent_dim, likelihood, beta)
        if baseline == "auto":
            baseline = "none" if enumerate else "neural"
        if prior not in self.PRIORS or baseline not in self.BASELINES:
            raise ValueError(f"prior must be one of {self.PRIORS} and baseline 'auto' or one of {self.BASELINES}, "
                             f"got {prior!r} and {baseline!r}")
        if enumerate and baseline != "none":
            raise ValueError("an enumerated pair has no score-function term for a baseline to act on: "
                             "give baseline='none' with enumerate=True")
        if enumerate:
            check_states(2 ** latent_dim, f"a pair with {latent_dim} enumerated bits")
        widths = layer_widths(hidden_dim)
        self.prior, self.baseline, self.enumerate = prior, baseline, bool(enumerate)
        self.encoder = mlp_head(data_dim, widths, latent_dim)
        self.decoder = MLPDecoder(latent_dim, widths[::-1], data_dim * self.likelihood.params_per_pixel)
        if prior == "learned":
            self.prior_logits = nn.Parameter(torch.zeros(latent_dim))
        else:
            self.register_buffer("prior_logits", torch.zeros(latent_dim))
        if baseline == "neural":  # (..., D) -> (...): one number per datapoint
            head = mlp_head(data_dim, widths[:1], 1)
            nn.init.zeros_(head[-1].weight), nn.init.zeros_(head[-1].bias)  # starts as the constant baseline
            self.baseline_net = PerPixelBaseline(head, data_dim)
        elif baseline == "constant":
            self.baseline_net = PerPixelBaseline(None, data_dim)

    @property
    def default_elbo(self):
        """The objective the pair is built for: ``"enum"`` (enumerated), ``"trace"`` (no baseline),
        or ``"baseline"`` (:class:`~pyro_vae.objectives.baselines.TraceBaseline_ELBO`, with a baseline)."""
        if self.enumerate:
            return "enum"
        return "trace" if self.baseline == "none" else "baseline"

    def site_names(self) -> list[str]:
        """The latent sites, one per bit: ``["z0", "z1", ...]``."""
        return [f"z{i}" for i in range(self.latent_dim)]

    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x | z) for a batch ``x`` of shape ``(batch, data_dim)``."""
        pyro.module("bernoulli_vae", self)
        with pyro.plate("data", x.shape[0]):
            with self.latent_scale():
                bits = [pyro.sample(name, dist.Bernoulli(logits=self.prior_logits[i]))
                        for i, name in enumerate(self.site_names())]
            pyro.sample("x", _per_state(self.likelihood(self.decoder(_stack(bits)))), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x), one Bernoulli site per bit (marked for enumeration, or carrying the baseline)."""
        pyro.module("bernoulli_vae", self)
        with pyro.plate("data", x.shape[0]):
            logits, infer = self.encoder(x), self._infer(x)
            with self.latent_scale():
                for i, name in enumerate(self.site_names()):
                    pyro.sample(name, dist.Bernoulli(logits=logits[..., i]), infer=infer)

    def exact_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) = log sum_z p(z) p(x | z)`` per row of ``x`` ``(batch, D)``, over all
        ``2^latent_dim`` states (at most :data:`MAX_ENUMERATED_STATES`); ``(batch,)`` nats."""
        check_states(2 ** self.latent_dim, f"a pair with {self.latent_dim} bits")
        index = torch.arange(2 ** self.latent_dim, device=x.device)
        states = ((index[:, None] >> torch.arange(self.latent_dim, device=x.device)) & 1).to(x.dtype)
        log_prior = dist.Bernoulli(logits=self.prior_logits.to(x.dtype)).log_prob(states).sum(-1)
        return exact_log_likelihood(self.likelihood, self.decoder, states, log_prior, x)

    def _infer(self, x: torch.Tensor) -> dict:
        if self.enumerate:
            return {"enumerate": "parallel"}
        if self.baseline != "none":  # computed once for every bit's site (nn_baseline would run the net per site)
            return {"baseline": {"baseline_value": self.baseline_net(x.detach())}}
        return {}


def _per_state(fn: dist.TorchDistribution) -> dist.TorchDistribution:
    """The Bernoulli likelihood as :class:`_StatewiseBernoulli` (same distribution, a faster
    ``log_prob`` under enumeration); any other likelihood as it is."""
    if type(fn) is dist.Independent and type(fn.base_dist) is dist.Bernoulli and fn.reinterpreted_batch_ndims == 1:
        fast = _StatewiseBernoulli(fn.base_dist, 1)
        fast.compact_logits = fn.base_dist.logits
        return fast
    return fn


class _StatewiseBernoulli(dist.Independent):
    """``Bernoulli(logits).to_event(1)`` pixels whose ``log_prob`` is a matrix product when the
    logits do not vary along the data dim (an enumerated latent's states, decoded once each).

    ``log p(x | l) = sum_d x_d l_d - softplus(l_d)``: with ``S`` states and ``B`` datapoints,
    ``(S, D) @ (D, B)`` instead of ``S x B x D`` log-sigmoids, forward and backward (the logits
    as the decoder gave them, ``compact_logits``, before the plates expanded them); the same
    number up to float rounding. Everything else is ``Independent``'s.
    """

    compact_logits: torch.Tensor

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, _instance)
        new.compact_logits = self.compact_logits
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.compact_logits
        if value.dim() != 2 or logits.dim() < 2 or logits.shape[-2] != 1 or value.shape[0] == 1:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        dot = torch.matmul(logits.squeeze(-2), value.T)  # (..., B): sum_d x_d l_d, one row of logits per state
        return (dot - nn.functional.softplus(logits).sum(-1)).expand(self.batch_shape)


class PerPixelBaseline(nn.Module):
    """A baseline for a learning signal of order ``D`` nats (a log-likelihood of ``D`` pixels):
    ``D * (h(x) - log 2)``, where ``h`` is a net ``(..., D) -> (..., 1)`` (``None``: a learned
    number); ``(..., D) -> (...)``.

    The net predicts nats *per pixel*, starting near the value of an untrained pair (``-log 2``
    per pixel), so that an optimizer's steps of about the learning rate in ``h`` move the baseline
    by ``D`` times that: a baseline that outputs nats directly would need about 10^5 Adam steps at
    1e-3 to reach the -100 to -550 nats of an MNIST ELBO, and would not reduce the variance before.
    """

    def __init__(self, net: nn.Module | None, data_dim: int):
        super().__init__()
        self.net, self.data_dim = net, data_dim
        self.offset = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_pixel = self.offset - math.log(2.0)
        if self.net is not None:
            per_pixel = per_pixel + self.net(x).squeeze(-1)
        return self.data_dim * per_pixel.expand(x.shape[:-1])


def _stack(bits: list[torch.Tensor]) -> torch.Tensor:
    """The bits as one float tensor ``(..., latent_dim)``, after broadcasting their shapes (under
    enumeration each bit varies along its own dim: the result holds every state)."""
    return torch.stack(torch.broadcast_tensors(*bits), -1)
