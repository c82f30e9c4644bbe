r"""The VQ-VAE's training loss (van den Oord et al. 2017, eq. 3) and its codebook statistics.

The VQ-VAE is not trained by an ELBO: its encoder is reached only by the straight-through
estimator, and its codebook by a loss of its own (or by moving averages). :class:`VQVAELoss` is
that loss, as a documented loss callable with the trainer's interface (``differentiable_loss``);
its *value* is the negative of an ELBO, so a run's ``train_elbo`` stays a bound (see below).

References:
    van den Oord, Vinyals & Kavukcuoglu (2017), Neural Discrete Representation Learning,
    https://arxiv.org/abs/1711.00937
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from pyro import poutine

from .. import distributed
from ..importance import sample_sites
from ..models.quantizer import NearestCode
from .base import LossFromDifferentiableLoss

__all__ = ["VQReport", "VQVAELoss", "codebook_perplexity", "codebook_usage", "evaluate_vq", "quantized_sites"]


def codebook_perplexity(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    r"""``exp(H(p))`` of the codes' empirical distribution ``p_i = n_i / n`` over all the positions
    in ``codes`` (any shape, integers in ``[0, num_codes)``): ``num_codes`` when every code is used
    equally, 1 when one code takes every position. A 0-d float64 tensor."""
    counts = torch.bincount(codes.reshape(-1), minlength=num_codes).double()
    p = counts / counts.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum())


def codebook_usage(codes: torch.Tensor, num_codes: int) -> torch.Tensor:
    """The fraction of the ``num_codes`` codes that at least one position in ``codes`` takes (0-d float64)."""
    return (torch.bincount(codes.reshape(-1), minlength=num_codes) > 0).double().mean()


def quantized_sites(guide_trace) -> list[tuple[str, NearestCode, torch.Tensor]]:
    """``(name, NearestCode, codes)`` of each guide sample site drawn from a
    :class:`~pyro_vae.models.quantizer.NearestCode` (through ``Independent``/``Masked`` wrappers)."""
    found = []
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample":
            continue
        fn = site["fn"]
        while not isinstance(fn, NearestCode) and hasattr(fn, "base_dist"):
            fn = fn.base_dist
        if isinstance(fn, NearestCode):
            found.append((name, fn, site["value"]))
    return found


class _UpdateInBackward(torch.autograd.Function):
    """A zero that, when the loss it is added to is differentiated, runs the quantizer's state update
    (EMA, restarts) on this step's encoder outputs and codes: once per backward pass (one per training
    step), and never when the loss is only evaluated."""

    @staticmethod
    def forward(ctx, inputs, codes, quantizer):
        ctx.inputs, ctx.codes, ctx.quantizer = inputs.detach(), codes, quantizer
        return inputs.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        ctx.quantizer.update(ctx.inputs, ctx.codes)
        return None, None, None


class VQVAELoss(LossFromDifferentiableLoss):
    r"""The VQ-VAE loss (van den Oord et al. 2017, eq. 3), for pairs whose guide draws codes from a
    :class:`~pyro_vae.models.quantizer.NearestCode` and whose model turns them into vectors with the
    quantizer's ``lookup`` (such as :class:`~pyro_vae.models.vq.VQVAE`).

    **Gradient** (per minibatch, summed over datapoints; ``z_e`` the encoder outputs, ``e`` the
    nearest codes, ``sg`` stop-gradient, norms over every position and dimension of a datapoint):

    .. math::
        -\log p(x \mid z_e + \mathrm{sg}(e - z_e)) + \|\mathrm{sg}(z_e) - e\|^2
        + \beta\, \|z_e - \mathrm{sg}(e)\|^2

    The first term is the model's log-density with the straight-through decoder input (the model
    runs with ``quantizer.straight_through(z_e)``): its gradient reaches the decoder and, copied
    through the quantization, the encoder, never the codebook. The second (the codebook loss)
    moves the codes towards the encoder outputs; it is left out when the quantizer updates its
    codebook by moving averages (``ema=True``). The third is the commitment loss.

    **Value**: the negative ELBO of the pair, ``-(log p(x | e) + log p(k) - log q(k | x))`` with
    ``log q = 0`` (a point mass on the nearest codes): under the uniform prior ``-(log p(x | e) - L
    log K)`` per datapoint, ``L`` positions, ``K`` codes, summed over the minibatch as the sites are
    scaled. So a run's ``train_elbo`` is that ELBO (a lower bound on log p(x), the same quantity as
    the test ELBO of :func:`~pyro_vae.evaluate_elbo`); the codebook and commitment terms only shape
    the gradient (as :class:`~pyro_vae.objectives.SpectralRegularizedELBO`'s penalty does).

    **State** (a quantizer with ``ema`` or ``restart_after``): updated in the *backward* pass of the
    loss (an autograd node that adds 0 to the value), on the step's encoder outputs and codes, before
    the optimizer step. Calls that only evaluate the loss (no gradient; or one that is never
    differentiated, such as the checker's, the compiled step's recorder's) leave it alone. Not under
    ``torchrun`` with several processes (each would update its own codebook from its own shard):
    refused. The compiled step cannot record it (the statistics get no gradient) and runs eager.

    The checker applies ``trace``'s rules, and lets a nearest-code site through (:attr:`checker_rules`
    ``"vq"``; under the ELBOs by name it refuses one): the value is ``Trace_ELBO``'s with
    one particle, exact here since ``q`` draws one value.

    Args:
        beta: the commitment cost (0.25, the paper's; 0.1 to 2 made little difference there).

    Example::

        >>> import pyro_vae
        >>> from pyro_vae.models.vq import VQVAE
        >>> from pyro_vae.objectives.vq import VQVAELoss
        >>> vq = VQVAE(784, num_codes=16, latent_dim=4, hidden_dim=8)
        >>> objective = VQVAELoss(beta=0.25)   # what vq.default_elbo gives
    """

    checker_rules = "vq"

    def __init__(self, beta: float = 0.25):
        if not beta >= 0:
            raise ValueError(f"the commitment cost beta must be >= 0, got {beta}")
        super().__init__(num_particles=1)
        self.beta = float(beta)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss of a minibatch (nats, summed over it): the negative ELBO in value, the VQ-VAE's
        gradient (class docstring).

        Raises:
            TypeError: the guide draws no site from a ``NearestCode``.
            ValueError: two sites share a quantizer; a quantizer with state under ``torchrun``.
        """
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        sites = quantized_sites(guide_trace)
        self._check_sites(sites)
        with contextlib.ExitStack() as stack:
            for _, fn, _ in sites:
                stack.enter_context(fn.quantizer.straight_through(fn.inputs))
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        loss = guide_trace.log_prob_sum() - model_trace.log_prob_sum()
        if not torch.is_grad_enabled():
            return loss
        extra = loss.new_zeros(())
        for _, fn, codes in sites:
            extra = extra + self.codebook_terms(fn, codes)
            if fn.quantizer.has_state:
                loss = loss + _UpdateInBackward.apply(fn.inputs, codes, fn.quantizer)
        return loss + (extra - extra.detach())

    def codebook_terms(self, fn: NearestCode, codes: torch.Tensor) -> torch.Tensor:
        """``||sg(z_e) - e||^2 + beta ||z_e - sg(e)||^2`` summed over the minibatch (the first term
        only without EMA), for one quantized site."""
        vectors = fn.quantizer.codebook[codes]
        commitment = self.beta * (fn.inputs - vectors.detach()).pow(2).sum()
        if fn.quantizer.ema:
            return commitment
        return commitment + (fn.inputs.detach() - vectors).pow(2).sum()

    @staticmethod
    def _check_sites(sites) -> None:
        if not sites:
            raise TypeError("VQVAELoss trains pairs whose guide draws codes from pyro_vae.models.quantizer.NearestCode "
                            "(such as VQVAE); this guide draws none: train it with another objective")
        quantizers = [id(fn.quantizer) for _, fn, _ in sites]
        if len(set(quantizers)) < len(quantizers):
            raise ValueError("two guide sites draw codes from one quantizer: VQVAELoss needs one site per quantizer "
                             "(its straight-through lookup cannot tell them apart)")
        if distributed.world_size() > 1 and any(fn.quantizer.has_state for _, fn, _ in sites):
            raise ValueError("a quantizer with EMA updates or dead-code restarts under torchrun: each process would "
                             "update its own codebook from its own shard and the copies would drift apart; train it "
                             "in one process, or with ema=False and restart_after=0")


@dataclass
class VQReport:
    """What :func:`evaluate_vq` measures, in nats per datapoint.

    Attributes:
        reconstruction, reconstruction_se: mean and standard error of ``log p(x | e[k*(x)])``.
        elbo, elbo_se: the ELBO under the model's prior over codes: ``reconstruction + log p(k*) -
            log q(k* | x)``; for the uniform prior ``reconstruction - L log K``. A lower bound on
            ``log p(x)`` of that model (not of a model with a learned prior over codes).
        perplexity, usage: per quantized site, :func:`codebook_perplexity` and
            :func:`codebook_usage` of the codes of all the data.
        log_k: per quantized site, ``L log K`` (nats per datapoint): ``-(log p(k*))`` under a uniform prior.
        num_points: datapoints evaluated.
    """

    reconstruction: float
    reconstruction_se: float
    elbo: float
    elbo_se: float
    perplexity: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)
    log_k: dict = field(default_factory=dict)
    num_points: int = 0

    def format(self) -> str:
        """One line per quantity, labelled with what it is."""
        lines = [f"reconstruction log p(x | z_q(x)): {self.reconstruction:.2f} ± {self.reconstruction_se:.2f} nats",
                 f"ELBO under the prior over codes (reconstruction + log p(k) - log q(k|x), q a point mass): "
                 f"{self.elbo:.2f} ± {self.elbo_se:.2f} nats"]
        for name in self.perplexity:
            lines.append(f"site {name!r}: codebook perplexity {self.perplexity[name]:.1f}, usage "
                         f"{100 * self.usage[name]:.0f}% of codes, L log K = {self.log_k[name]:.1f} nats")
        return "\n".join(lines) + f"\n({self.num_points} datapoints)"


@torch.no_grad()
def evaluate_vq(model, guide, data: torch.Tensor, batch_size: int = 1000, *args, **kwargs) -> VQReport:
    """Reconstruction log-likelihood, the ELBO under the model's prior over codes, and the
    codebook's perplexity and usage, for a VQ pair (a guide with
    :class:`~pyro_vae.models.quantizer.NearestCode` sites) on ``data`` ``(N, D)``; extra arguments as
    for :func:`~pyro_vae.evaluate_elbo` (tensors with ``N`` rows are sliced with ``data``).
    Log-densities unscaled; nothing is drawn at random."""
    recon, elbo, codes, num_codes, log_k = [], [], {}, {}, {}
    n = data.shape[0]
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        cut = [a[rows] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n else a for a in args]
        named = {k: v[rows] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
                 for k, v in kwargs.items()}
        with poutine.block():
            guide_trace = poutine.trace(guide).get_trace(data[rows], *cut, **named)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(data[rows], *cut, **named)
        sites = quantized_sites(guide_trace)
        VQVAELoss._check_sites(sites)
        observed = sum(_log_prob(s) for _, s in sample_sites(model_trace, observed=True))
        latent = sum(_log_prob(s) for _, s in sample_sites(model_trace, observed=False))
        posterior = sum(_log_prob(s) for _, s in sample_sites(guide_trace))
        recon.append(observed.double())
        elbo.append((observed + latent - posterior).double())
        for name, fn, value in sites:
            codes.setdefault(name, []).append(value.reshape(-1))
            num_codes[name] = fn.quantizer.num_codes
            log_k[name] = math.prod(value.shape[1:]) * math.log(fn.quantizer.num_codes)
    recon, elbo = torch.cat(recon), torch.cat(elbo)
    se = lambda v: float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")  # noqa: E731
    return VQReport(
        reconstruction=float(recon.mean()), reconstruction_se=se(recon), elbo=float(elbo.mean()), elbo_se=se(elbo),
        perplexity={k: float(codebook_perplexity(torch.cat(v), num_codes[k])) for k, v in codes.items()},
        usage={k: float(codebook_usage(torch.cat(v), num_codes[k])) for k, v in codes.items()},
        log_k=log_k, num_points=n)


def _log_prob(site) -> torch.Tensor:
    """A site's log-density per datapoint, unscaled: summed over every dim right of the first."""
    log_prob = site["fn"].log_prob(site["value"])
    return log_prob.reshape(log_prob.shape[0], -1).sum(-1) if log_prob.dim() > 1 else log_prob
